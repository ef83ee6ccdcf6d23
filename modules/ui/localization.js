// Applies the chosen localization (modules/localization.py) to the page, as A1111's
// javascript/localization.js does: a flat {"English text": "translation"} object; the texts of
// labels, buttons, tabs, headings and dropdown options, and the placeholder and title attributes,
// are replaced where they equal a key (surrounding whitespace kept), on load and on every later
// change of the page (new elements, changed texts, a title added later). User content is left
// alone: prompts, the info boxes, styles and checkpoint names, galleries. The object is also
// `window.localization`, as in A1111, for extensions' scripts.
(translationsJson) => {
    let data = {};
    try {
        data = JSON.parse(translationsJson || "{}") || {};
    } catch (e) {
        console.error("localization is not JSON", e);
    }
    window.localization = data;
    if (window.easelLocalizationStarted || typeof data !== "object" || !Object.keys(data).length) return;
    window.easelLocalizationStarted = true;

    // containers of user content (nothing inside is translated), then elements whose text is a value
    const ignored = [
        ".easel-no-localize",
        "#setting_sd_model_checkpoint", "[id$='_styles']", "[id^='html_info']", "[id$='_gallery']",
        "[id$='_extra_networks']", "#settings_json", "#extensions_tab_table",
    ].join(", ");
    const valueElements = "script, style, textarea, input, [contenteditable]";
    const own = Object.prototype.hasOwnProperty;
    const translate = (text) => {
        if (typeof text !== "string") return null;
        const key = text.trim();
        return key && own.call(data, key) && data[key] !== key ? text.replace(key, data[key]) : null;
    };
    const isIgnored = (el) => !el || (el.closest && el.closest(ignored) !== null);
    const placed = new WeakMap();  // node -> the text this script put there (not translated again)

    const textNode = (node) => {
        const parent = node.parentElement;
        if (placed.get(node) === node.data || isIgnored(parent) || parent.closest(valueElements)) return;
        const text = translate(node.data);
        if (text === null) return;
        node.data = text;
        placed.set(node, text);
    };
    const attributes = (el) => {
        if (isIgnored(el)) return;
        for (const name of ["placeholder", "title"]) {
            const value = el.getAttribute(name);
            const text = translate(value);
            if (text !== null) el.setAttribute(name, text);
        }
    };
    const tree = (root) => {
        if (root.nodeType === Node.TEXT_NODE) return textNode(root);
        if (root.nodeType !== Node.ELEMENT_NODE) return;
        attributes(root);
        const walker = document.createTreeWalker(root, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            if (node.nodeType === Node.TEXT_NODE) textNode(node);
            else attributes(node);
        }
    };

    tree(document.body);
    new MutationObserver((records) => {
        for (const record of records) {
            if (record.type === "childList") record.addedNodes.forEach(tree);
            else if (record.type === "characterData") textNode(record.target);
            else if (record.type === "attributes") attributes(record.target);
        }
    }).observe(document.body, {childList: true, subtree: true, characterData: true, attributes: true,
                                attributeFilter: ["placeholder", "title"]});
}
