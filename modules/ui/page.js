// Runs once when the page has loaded (as the `js` of a load event): adds the stylesheet,
// A1111's page globals (webui_globals.js) with `opts`, the extensions' style.css and
// javascript/*.js files, tooltips, the extra networks cards' clicks and search, and A1111's
// keyboard shortcuts: Ctrl+Enter generates, Alt+Enter skips.
(css, hints, optsJson, webuiGlobals, extensionScripts, extensionStyles) => {
    if (window.easelPageReady) return;
    window.easelPageReady = true;

    const addStyle = (id, text) => {
        const style = document.createElement("style");
        style.id = id;
        style.textContent = text;
        document.head.appendChild(style);
    };
    addStyle("easel-style", css);

    // -- A1111's globals, then the extensions' files ------------------------------------------
    // Each file runs as a classic global <script> (its top-level functions become window's, as
    // with A1111's <script src>), in order, before the start-up callbacks; an error in one is
    // reported on the console under its name and does not stop the others.
    const addScript = (name, source, module) => {
        const script = document.createElement("script");
        if (module) script.type = "module";
        script.dataset.source = name;
        script.textContent = `${source}\n//# sourceURL=${name}`;
        document.head.appendChild(script);
    };
    // files already loaded by <script> tags in the page's <head> (modules/page_head.py, as A1111
    // loads them: before DOMContentLoaded) are not run a second time
    const inHead = new Set(window.easelHeadScripts || []);
    if (!inHead.has("easel/webui_globals.js")) addScript("easel/webui_globals.js", webuiGlobals, false);
    try {  // the values are there for the files' own top-level code; the callbacks come after them
        Object.assign(window.opts, JSON.parse(optsJson || "{}"));
    } catch (e) {
        console.error("options are not JSON", e);
    }
    for (const [name, text] of extensionStyles || []) addStyle(`extension-style-${name}`, text);
    for (const [name, source] of extensionScripts || []) {
        if (!inHead.has(name)) addScript(name, source, name.endsWith(".mjs"));
    }
    window.easelOptionsChanged = (json) => window._easelSetOptions && window._easelSetOptions(json);
    if (window._easelStartWebuiGlobals) {
        window._easelSetOptions(optsJson);
        window._easelStartWebuiGlobals();
    }

    const shown = (el) => el && el.offsetParent !== null;
    const button = (suffix) =>
        [...document.querySelectorAll(`button[id$="_${suffix}"], [id$="_${suffix}"] button`)].find(shown);

    const addHints = () => {
        for (const [id, text] of Object.entries(hints)) {
            const el = document.getElementById(id);
            const target = el && (el.tagName === "BUTTON" ? el : el.querySelector("button")) || el;
            if (target && !target.title) target.title = text;
        }
    };
    addHints();
    new MutationObserver(addHints).observe(document.body, {childList: true, subtree: true});

    // -- extra networks panel (modules/ui/extra_networks.py) --------------------------------
    // the prompt box last used per tab: a Textual Inversion card adds to it (a Lora card: the prompt)
    window.easelActivePrompt = window.easelActivePrompt || {};
    document.addEventListener("focusin", (e) => {
        const box = e.target.closest && e.target.closest("[id$='_prompt'], [id$='_neg_prompt']");
        if (!box || e.target.tagName !== "TEXTAREA") return;
        const match = box.id.match(/^(txt2img|img2img)_(neg_)?prompt$/);
        if (match) window.easelActivePrompt[match[1]] = e.target;
    });

    const promptBox = (tab, kind) => {
        const active = window.easelActivePrompt[tab];
        if (kind === "textual_inversion" && active && active.isConnected) return active;
        return document.querySelector(`#${tab}_prompt textarea`);
    };
    const escapeRegex = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

    // A1111's toggle: a card whose text is in the prompt takes it out, otherwise adds it
    const toggleText = (value, kind, text) => {
        let pattern;
        if (kind === "lora") {
            const name = text.slice(1, -1).split(":").slice(0, 2).join(":");  // "lora:NAME"
            pattern = new RegExp(`\\s*<${escapeRegex(name)}:[^>]*>`);
        } else {
            pattern = new RegExp(`(^|\\s|,)${escapeRegex(text)}(?=$|\\s|,)`);
        }
        if (pattern.test(value)) {
            return value.replace(pattern, (m, lead) => (kind === "lora" ? "" : (lead === "," ? "," : ""))).trim();
        }
        if (!value.trim()) return text;
        return value + (/\s$/.test(value) ? "" : " ") + text;
    };

    const applySearch = (tab) => {
        const box = document.querySelector(`#${tab}_extra_search input, #${tab}_extra_search textarea`);
        const needle = (box ? box.value : "").trim().toLowerCase();
        document.querySelectorAll(`#${tab}_extra_networks .card`).forEach((card) => {
            card.classList.toggle("hidden-by-search", !!needle && !card.dataset.search.includes(needle));
        });
    };
    document.addEventListener("input", (e) => {
        const box = e.target.closest && e.target.closest("[id$='_extra_search']");
        if (box) applySearch(box.id.replace(/_extra_search$/, ""));
    });
    // cards redrawn (opened, refreshed): the search still applies
    new MutationObserver((records) => {
        for (const r of records) {
            const panel = r.target.closest && r.target.closest("[id$='_extra_networks']");
            if (panel) applySearch(panel.id.replace(/_extra_networks$/, ""));
        }
    }).observe(document.body, {childList: true, subtree: true});

    const cardClicked = (card) => {
        const cards = card.closest(".extra-network-cards");
        const tab = cards.dataset.tab;
        const kind = card.dataset.kind;
        if (kind === "checkpoints") {
            window.easelDesiredCheckpoint = card.dataset.insert;
            const button = document.getElementById(`${tab}_extra_change_checkpoint`);
            if (button) button.click();
            return;
        }
        const textarea = promptBox(tab, kind);
        if (!textarea) return;
        textarea.value = toggleText(textarea.value, kind, card.dataset.insert);
        textarea.dispatchEvent(new Event("input", {bubbles: true}));  // Gradio takes the value from here
    };
    document.addEventListener("click", (e) => {
        const card = e.target.closest && e.target.closest(".extra-network-cards .card");
        if (card) cardClicked(card);
    });
    document.addEventListener("keydown", (e) => {
        if (e.key !== "Enter" && e.key !== " ") return;
        const card = e.target.closest && e.target.closest(".extra-network-cards .card");
        if (card && !e.ctrlKey && !e.altKey && !e.metaKey) {
            e.preventDefault();
            cardClicked(card);
        }
    });

    document.addEventListener("keydown", (e) => {
        if (e.key !== "Enter") return;
        let target = null;
        if (e.ctrlKey || e.metaKey) target = button("generate");
        else if (e.altKey) target = button("skip");
        if (target) {
            e.preventDefault();
            target.click();
        }
    });
}
