// Runs once when the page has loaded (as the `js` of a load event): adds the stylesheet,
// A1111's page globals (webui_globals.js) with `opts`, the extensions' style.css and
// javascript/*.js files, tooltips, the extra networks cards' clicks and search, and A1111's
// keyboard shortcuts: Ctrl+Enter generates, Alt+Enter skips; around a job, its progress in the
// tab's title, the notification sound and the screen's wake lock.
(css, hints, optsJson, webuiGlobals, extensionScripts, extensionStyles, notificationSound) => {
    if (window.easelPageReady) return;
    window.easelPageReady = true;

    const addStyle = (id, text) => {
        const style = document.createElement("style");
        style.id = id;
        style.textContent = text;
        document.head.appendChild(style);
    };
    addStyle("easel-style", css);

    // -- extensions' closed accordions (modules/gradio_compat.py marks them): Gradio 6 mounts a closed
    // accordion's children only when it is first opened, Gradio 3 had them in the page from the start
    // (extensions' scripts look up the buttons in them). Each is opened once and closed again at once.
    const mountClosed = () => {
        for (const block of document.querySelectorAll(".easel-mount-closed:not([data-easel-mounted])")) {
            const label = block.querySelector(":scope > button.label-wrap") || block.querySelector("button.label-wrap");
            if (!label) continue;
            const open = label.classList.contains("open");
            if (!block.dataset.easelOpened) {
                if (open) {  // opened before this ran (by the user): mounted
                    block.dataset.easelMounted = "1";
                    continue;
                }
                block.dataset.easelOpened = "1";
                label.click();  // Gradio mounts the children ...
            } else if (open) {
                block.dataset.easelMounted = "1";
                label.click();  // ... and they stay when it closes
            }
        }
    };
    mountClosed();
    new MutationObserver(mountClosed).observe(document.body, {childList: true, subtree: true, attributes: true,
                                                              attributeFilter: ["class"]});

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
    for (const [name, text] of extensionStyles || []) addStyle(`extension-style-${name}`, text);
    for (const [name, source] of extensionScripts || []) {
        if (!inHead.has(name)) addScript(name, source, name.endsWith(".mjs"));
    }
    window.easelOptionsChanged = (json) => window._easelSetOptions && window._easelSetOptions(json);
    // the options (window.opts) arrive once every tab's elements are on the page, before the
    // onUiLoaded callbacks (in A1111 too `opts` is empty while the files' top-level code runs)
    if (window._easelStartWebuiGlobals) window._easelStartWebuiGlobals(optsJson);

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

    // A1111's extra_networks_add_text_separator (window.opts) goes before an added text, and out
    // with it again; the default (a space) is not doubled after a space already there
    const separator = () => {
        const sep = (window.opts || {}).extra_networks_add_text_separator;
        return typeof sep === "string" ? sep : " ";
    };
    const withoutSeparator = (before, sep) => {
        for (const s of [sep, sep.trimEnd()]) if (s.trim() && before.endsWith(s)) return before.slice(0, -s.length);
        return before;
    };
    // A1111's toggle: a card whose text is in the prompt takes it out, otherwise adds it. A Lora
    // card's text is `<lora:NAME:W>` and maybe " " + its activation text: any `<lora:NAME:...>`
    // counts as there (whatever its weight), and the activation text goes with it when it follows
    const toggleText = (value, kind, text) => {
        const sep = separator();
        if (kind === "lora") {
            const close = text.indexOf(">") + 1;
            const name = text.slice(1, close - 1).split(":").slice(0, 2).join(":");  // "lora:NAME"
            const after = text.slice(close);  // A1111's text after the network
            const found = value.match(new RegExp(`\\s*<${escapeRegex(name)}:[^>]*>`));
            if (found) {
                let rest = value.slice(found.index + found[0].length);
                if (after && rest.startsWith(after)) rest = rest.slice(after.length);
                return (withoutSeparator(value.slice(0, found.index), sep) + rest).trim();
            }
        } else {
            const pattern = new RegExp(`(^|\\s|,)${escapeRegex(text)}(?=$|\\s|,)`);
            const found = value.match(pattern);
            if (found && sep.trim()) {
                const start = found.index + found[1].length;
                return (withoutSeparator(value.slice(0, start).trimEnd(), sep) + value.slice(start + text.length)).trim();
            }
            if (found) return value.replace(pattern, (m, lead) => (lead === "," ? "," : "")).trim();
        }
        if (!value.trim()) return text;
        if (sep.trim()) return value.trimEnd() + sep + text;
        return value + (/\s$/.test(value) ? "" : sep) + text;
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
        const edits = [[promptBox(tab, kind), kind, card.dataset.insert]];
        // a Lora card's negative text (A1111: then the text goes into the prompt, whichever box was last used)
        if (card.dataset.negative) {
            edits[0][0] = document.querySelector(`#${tab}_prompt textarea`);
            edits.push([document.querySelector(`#${tab}_neg_prompt textarea`), "negative", card.dataset.negative]);
        }
        for (const [textarea, how, text] of edits) {
            if (!textarea) continue;
            textarea.value = toggleText(textarea.value, how, text);
            textarea.dispatchEvent(new Event("input", {bubbles: true}));  // Gradio takes the value from here
        }
    };
    // ✏️ (A1111's extraNetworksEditUserMetadata): the card's key goes into the page's hidden
    // `_edit_user_metadata_name` box and its button is clicked; the click's js reads the key
    // from window.easelEditCard (modules/ui/extra_networks_metadata.py)
    const editCard = (card) => {
        const cards = card.closest(".extra-network-cards");
        const id = `${cards.dataset.tab}_${cards.dataset.page}_edit_user_metadata`;
        window.easelEditCard = card.dataset.key || card.dataset.name;
        const box = document.querySelector(`#${id}_name textarea, #${id}_name input`);
        if (box) {
            box.value = window.easelEditCard;
            box.dispatchEvent(new Event("input", {bubbles: true}));
        }
        const button = document.getElementById(`${id}_button`);
        if (button) button.click();
    };
    document.addEventListener("click", (e) => {
        const edit = e.target.closest && e.target.closest(".extra-network-cards .card .edit-button");
        if (edit) {  // a card's own button: not a click on the card
            e.preventDefault();
            e.stopPropagation();
            editCard(edit.closest(".card"));
            return;
        }
        const card = e.target.closest && e.target.closest(".extra-network-cards .card");
        if (card) cardClicked(card);
    });
    document.addEventListener("keydown", (e) => {
        if (e.key !== "Enter" && e.key !== " ") return;
        if (e.target.closest && e.target.closest(".card-button")) return;  // the button's own click
        const card = e.target.closest && e.target.closest(".extra-network-cards .card");
        if (card && !e.ctrlKey && !e.altKey && !e.metaKey) {
            e.preventDefault();
            cardClicked(card);
        }
    });

    // -- around a job (modules/ui/generation_tab.py calls these): A1111's show_progress_in_title
    // ("[NN% ETA: 5s] <title>"), notification_audio / notification_volume (the install's
    // notification.mp3 through /file=, when it was there as the page was built: notificationSound)
    // and prevent_screen_sleep_during_generation
    const option = (key) => (window.opts || {})[key];
    const baseTitle = document.title;
    let running = false;
    let progressText = "";
    let titleTimer = null;
    const applyTitle = () => {
        const shown = running && option("show_progress_in_title") && progressText;
        const title = shown ? `[${progressText}] ${baseTitle}` : baseTitle;
        if (document.title !== title) document.title = title;
    };
    window.easelProgressTitle = (text) => {  // (a tick that lands after the job's end shows nothing)
        progressText = (text || "").trim();
        applyTitle();
    };
    // the option is read each second while a job runs, not only when the progress text changes
    // (a slow step leaves the text as it was; a changed option still applies at once)
    const watchTitle = (on) => {
        if (titleTimer) clearInterval(titleTimer);
        titleTimer = on ? setInterval(applyTitle, 1000) : null;
    };
    const root = ((window.gradio_config && window.gradio_config.root) || ".").replace(/\/$/, "");
    let wakeLock = null;
    const releaseWakeLock = () => {
        if (wakeLock) wakeLock.release().catch(() => {});
        wakeLock = null;
    };
    window.easelJobStarted = async () => {
        running = true;
        watchTitle(true);
        if (!option("prevent_screen_sleep_during_generation") || wakeLock || !navigator.wakeLock) return;
        try {
            const lock = await navigator.wakeLock.request("screen");
            wakeLock = lock;
            if (!running) releaseWakeLock();  // the job ended while the lock was asked for
        } catch (e) {  // a hidden page, or not allowed: the screen may sleep
            wakeLock = null;
        }
    };
    window.easelJobEnded = (finished) => {
        running = false;
        watchTitle(false);
        window.easelProgressTitle("");
        releaseWakeLock();
        if (!finished || !notificationSound || !option("notification_audio")) return;
        const audio = new Audio(`${root}/file=notification.mp3`);
        const volume = Number(option("notification_volume"));
        audio.volume = Number.isFinite(volume) ? Math.min(1, Math.max(0, volume / 100)) : 1;
        audio.play().catch(() => {});  // the browser refused to play it (autoplay rules)
    };

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
