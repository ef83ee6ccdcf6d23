// Easel's prompt tools on the page (runs as a classic script after webui_globals.js):
// - Ctrl+↑ / Ctrl+↓ in a prompt box change the weight of the selection or of the word under the
//   cursor, as A1111's edit-attention.js: `word` -> `(word:1.1)`, `(word:1.1)` -> `word` again,
//   `<lora:name:0.8>` by 0.05 (the steps and the word delimiters: A1111's keyedit_* options);
// - Alt+← / Alt+→ move the comma-separated part under the cursor (or the selected parts) one place
//   to the left or right, as A1111's edit-order.js (option keyedit_move);
// - A1111's context menus (contextMenus.js globals: appendContextMenuOption, ...) with "Generate
//   forever" / "Cancel generate forever" on the right-click of Generate;
// - A1111's token-counter globals (token-counters.js): update_token_counter(button_id),
//   recalculatePromptTokens(prompt_id), update_txt2img_tokens / update_img2img_tokens,
//   recalculate_prompts_txt2img / _img2img: each recounts by clicking the hidden
//   `<tab>_token_button` / `<tab>_negative_token_button` (the counters follow typing on their own);
// - icon buttons whose id Easel does not know (extensions' ToolButtons) get `data-easel-icon`, so
//   style.css draws their glyph without an emoji font.

// -- Ctrl+↑ / Ctrl+↓ ----------------------------------------------------------------------------
(function() {
    const PROMPT_BOX = "*:is([id*='_toprow'] [id*='_prompt'], .prompt) textarea";
    const DELIMITERS = ".,\\/!?%^*;:{}=`~() ";  // A1111's default keyedit_delimiters
    const WHITESPACE = {"Tab": "\t", "Carriage Return": "\r", "Line Feed": "\n"};  // keyedit_delimiters_whitespace

    // the options as the page has them now (window.opts, filled from the server's at load)
    const option = (name) => (window.opts || {})[name];
    const precision = (name, fallback) => {
        const value = parseFloat(option(name));
        return Number.isFinite(value) && value > 0 ? value : fallback;
    };
    const delimiters = () => {
        const typed = option("keyedit_delimiters");
        let chars = typeof typed === "string" ? typed : DELIMITERS;
        let spaces = option("keyedit_delimiters_whitespace");
        if (!Array.isArray(spaces)) spaces = Object.keys(WHITESPACE);
        for (const name of spaces) chars += WHITESPACE[name] || "";
        return chars;
    };

    // the (...) or <...> block around the cursor: its text without the weight is selected
    function selectBlock(area, open, close) {
        const {value, selectionStart: start, selectionEnd: end} = area;
        if (start !== end) return false;
        const before = value.lastIndexOf(open, start - 1);
        if (before === -1) return false;
        const between = value.substring(before + 1, start);
        if (between.includes(close)) return false;
        const after = value.indexOf(close, start);
        if (after === -1 || value.substring(start, after).includes(open)) return false;
        const inner = value.substring(before + 1, after);
        const colon = inner.lastIndexOf(":");
        if (colon === -1 || !/^\s*-?[\d.]+\s*$/.test(inner.substring(colon + 1))) return false;
        area.setSelectionRange(before + 1, before + 1 + colon);
        return true;
    }

    function selectWord(area) {
        const {value, selectionStart: start, selectionEnd: end} = area;
        if (start !== end) return false;
        const stops = delimiters();
        let from = start;
        let to = start;
        while (from > 0 && !stops.includes(value[from - 1])) from--;
        while (to < value.length && !stops.includes(value[to])) to++;
        if (from === to) return false;
        area.setSelectionRange(from, to);
        return true;
    }

    function format(weight) {
        weight = parseFloat(weight.toPrecision(12));
        return Number.isInteger(weight) ? weight.toFixed(1) : String(weight);
    }

    function editAttention(event) {
        const area = event.target;
        if (!area.matches || !area.matches(PROMPT_BOX)) return;
        if (!(event.metaKey || event.ctrlKey) || (event.key !== "ArrowUp" && event.key !== "ArrowDown")) return;
        event.preventDefault();
        const up = event.key === "ArrowUp";

        if (area.selectionStart === area.selectionEnd) {
            if (!selectBlock(area, "<", ">") && !selectBlock(area, "(", ")") && !selectWord(area)) return;
        }
        let start = area.selectionStart;
        let end = area.selectionEnd;
        let text = area.value;
        // trailing spaces of a selection stay outside the brackets
        while (end > start && text[end - 1] === " ") end--;
        if (start === end) return;
        let selected = text.substring(start, end);

        let close = text[end];
        let delta;
        if (text[start - 1] === "<" && close === ":") {  // <lora:name:w>: its weight
            delta = precision("keyedit_precision_extra", 0.05);
        } else if (text[start - 1] === "(" && close === ":") {
            delta = precision("keyedit_precision_attention", 0.1);
        } else {  // a plain word: wrapped at weight 1.0, then stepped
            text = text.substring(0, start) + "(" + selected + ":1.0)" + text.substring(end);
            start += 1;
            end += 1;
            close = ":";
            delta = precision("keyedit_precision_attention", 0.1);
        }
        const weightEnd = text.indexOf(text[start - 1] === "<" ? ">" : ")", end);
        const weight = parseFloat(text.substring(end + 1, weightEnd));
        if (!Number.isFinite(weight)) return;
        const next = format(weight + (up ? delta : -delta));
        text = text.substring(0, end + 1) + next + text.substring(weightEnd);
        if (text[start - 1] === "(" && parseFloat(next) === 1) {  // back at 1: the brackets go
            const closing = end + 1 + next.length;
            text = text.substring(0, start - 1) + selected + text.substring(closing + 1);
            start -= 1;
            end -= 1;
        }
        area.value = text;
        area.setSelectionRange(start, end);
        updateInput(area);
    }

    document.addEventListener("keydown", editAttention);

    // Alt+← / Alt+→: the parts between commas under the selection swap places with the part
    // before / after them. The spaces around each part stay where they were, so `a, b, c` with
    // the cursor in `a` gives `b, a, c` (A1111 carries them along: ` b,a, c`).
    function editOrder(event) {
        const area = event.target;
        if (!area.matches || !area.matches(PROMPT_BOX)) return;
        if (!event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
        const left = event.key === "ArrowLeft";
        if (!left && event.key !== "ArrowRight") return;
        if (option("keyedit_move") === false) return;
        event.preventDefault();

        const text = area.value;
        const parts = text.split(",").map((part) => {
            const [, lead, body, trail] = part.match(/^(\s*)([\s\S]*?)(\s*)$/);
            return {lead, body, trail};
        });
        const commas = (upTo) => (text.slice(0, upTo).match(/,/g) || []).length;
        const first = commas(area.selectionStart);
        const last = commas(area.selectionEnd);
        const to = left ? first - 1 : first + 1;
        if (to < 0 || last + (left ? 0 : 1) >= parts.length) return;
        const bodies = parts.map((p) => p.body);
        const moved = bodies.splice(first, last - first + 1);
        bodies.splice(to, 0, ...moved);
        parts.forEach((p, i) => { p.body = bodies[i]; });
        const start = (i) => parts.slice(0, i).reduce((n, p) => n + p.lead.length + p.body.length + p.trail.length + 1, 0) +
            parts[i].lead.length;
        area.value = parts.map((p) => p.lead + p.body + p.trail).join(",");
        const end = to + moved.length - 1;
        area.setSelectionRange(start(to), start(end) + parts[end].body.length);
        updateInput(area);
    }

    document.addEventListener("keydown", editOrder);
})();

// -- A1111's token-counter globals --------------------------------------------------------------
// promptTokenCountUpdateFunctions: prompt id and button id -> a recount, as A1111 fills it
var promptTokenCountUpdateFunctions = {};
(function() {
    const boxes = [["txt2img_prompt", "txt2img_token_counter", "txt2img_token_button"],
        ["txt2img_neg_prompt", "txt2img_negative_token_counter", "txt2img_negative_token_button"],
        ["img2img_prompt", "img2img_token_counter", "img2img_token_button"],
        ["img2img_neg_prompt", "img2img_negative_token_counter", "img2img_negative_token_button"]];
    for (const [prompt, counter, button] of boxes) {
        const recount = () => {
            const shown = document.getElementById(counter);
            if (!shown || (window.opts || {}).disable_token_counters) return;  // counters off: nothing to show
            const hidden = document.getElementById(button);
            if (hidden) hidden.click();
        };
        promptTokenCountUpdateFunctions[prompt] = recount;
        promptTokenCountUpdateFunctions[button] = recount;
    }
})();

function update_token_counter(button_id) {
    promptTokenCountUpdateFunctions[button_id]?.();
}

function recalculatePromptTokens(name) {
    promptTokenCountUpdateFunctions[name]?.();
}

// A1111 calls these from Gradio's `_js`: they pass their arguments on (two: the first alone)
function update_txt2img_tokens(...args) {
    update_token_counter("txt2img_token_button");
    update_token_counter("txt2img_negative_token_button");
    return args.length == 2 ? args[0] : args;
}

function update_img2img_tokens(...args) {
    update_token_counter("img2img_token_button");
    update_token_counter("img2img_negative_token_button");
    return args.length == 2 ? args[0] : args;
}

function recalculate_prompts_txt2img(...args) {
    recalculatePromptTokens("txt2img_prompt");
    recalculatePromptTokens("txt2img_neg_prompt");
    return args;
}

function recalculate_prompts_img2img(...args) {
    recalculatePromptTokens("img2img_prompt");
    recalculatePromptTokens("img2img_neg_prompt");
    return args;
}

// -- context menus (A1111's contextMenus.js globals) ------------------------------------------
var contextMenuInit = function() {
    let eventListenerApplied = false;
    const menuSpecs = new Map();

    const uid = () => Date.now().toString(36) + Math.random().toString(36).substring(2);

    function showContextMenu(event, element, entries) {
        const old = document.getElementById("context-menu");
        if (old) old.remove();
        const menu = document.createElement("nav");
        menu.id = "context-menu";
        menu.className = "context-menu";
        menu.style.left = `${event.pageX}px`;
        menu.style.top = `${event.pageY}px`;
        const list = document.createElement("ul");
        list.className = "context-menu-items";
        for (const entry of entries) {
            const item = document.createElement("li");
            const link = document.createElement("a");
            link.textContent = entry.name;
            link.setAttribute("role", "menuitem");
            link.addEventListener("click", () => {
                menu.remove();
                entry.func();
            });
            item.appendChild(link);
            list.appendChild(item);
        }
        menu.appendChild(list);
        document.body.appendChild(menu);
    }

    function appendContextMenuOption(targetElementSelector, entryName, entryFunction) {
        const entries = menuSpecs.get(targetElementSelector) || [];
        menuSpecs.set(targetElementSelector, entries);
        const id = targetElementSelector + "_" + uid();
        entries.push({id: id, name: entryName, func: entryFunction, isNew: true});
        return id;
    }

    function removeContextMenuOption(uid) {
        for (const entries of menuSpecs.values()) {
            const index = entries.findIndex((e) => e.id === uid);
            if (index !== -1) entries.splice(index, 1);
        }
    }

    function addContextMenuEventListener() {
        if (eventListenerApplied) return;
        document.addEventListener("click", (e) => {
            const menu = document.getElementById("context-menu");
            // the user's clicks only: Generate forever's own clicks on Generate leave an open menu open
            if (menu && e.isTrusted && !menu.contains(e.target)) menu.remove();
        });
        ["contextmenu", "touchstart"].forEach((kind) => {
            document.addEventListener(kind, (e) => {
                const menu = document.getElementById("context-menu");
                if (menu) menu.remove();
                for (const [selector, entries] of menuSpecs) {
                    const target = e.target.closest && e.target.closest(selector);
                    if (target && entries.length) {
                        e.preventDefault();
                        showContextMenu(e, target, entries);
                        return;
                    }
                }
            });
        });
        eventListenerApplied = true;
    }

    return [appendContextMenuOption, removeContextMenuOption, addContextMenuEventListener];
};

var initResponse = contextMenuInit();
var appendContextMenuOption = initResponse[0];
var removeContextMenuOption = initResponse[1];
var addContextMenuEventListener = initResponse[2];

// -- Generate forever -------------------------------------------------------------------------
// Generate is clicked again each time the tab's job has ended, until "Cancel generate forever",
// Interrupt, or a job that failed (its message stays in the info box) ends the loop.
(function() {
    const loops = {};  // tab -> {busySeen, observer, timer}
    const shown = (el) => el && el.offsetParent !== null;
    const el = (id) => document.getElementById(id);

    function stop(tab) {
        const loop = loops[tab];
        if (!loop) return;
        loop.observer.disconnect();
        loop.toasts.disconnect();
        clearInterval(loop.timer);
        delete loops[tab];
    }

    // the job's message in the info box, or a toast (Gradio refusing a value, an error of the job)
    function failed(tab) {
        return loops[tab].toastSeen || !!document.querySelector(`#html_info_${tab} .error`);
    }

    function check(tab) {
        const loop = loops[tab];
        if (!loop) return;
        const busy = shown(el(`${tab}_interrupt`)) || !shown(el(`${tab}_generate`));
        if (busy) {
            loop.busySeen = true;
            loop.endedAt = 0;
            return;
        }
        if (!loop.busySeen) return;  // the click has not started the job yet
        if (failed(tab)) {
            stop(tab);
            return;
        }
        // a moment after the end, for a failure's toast that comes after the buttons' reset
        if (!loop.endedAt) loop.endedAt = Date.now();
        if (Date.now() - loop.endedAt < 300) return;
        loop.busySeen = false;
        loop.endedAt = 0;
        el(`${tab}_generate`).click();
    }

    function start(tab) {
        if (loops[tab]) return;
        const button = el(`${tab}_generate`);
        if (!button) return;
        const loop = {busySeen: false, toastSeen: false};
        loop.toasts = new MutationObserver((records) => {
            for (const r of records) {
                for (const node of r.addedNodes) {
                    if (node.nodeType !== Node.ELEMENT_NODE) continue;
                    if (node.matches(".toast-body.error, .toast-body.warning") ||
                        node.querySelector(".toast-body.error, .toast-body.warning")) loop.toastSeen = true;
                }
            }
        });
        loop.toasts.observe(document.body, {childList: true, subtree: true});
        loop.observer = new MutationObserver(() => check(tab));
        loop.observer.observe(el(`${tab}_actions_column`) || document.body,
                              {attributes: true, childList: true, subtree: true});
        loop.timer = setInterval(() => check(tab), 250);
        loops[tab] = loop;
        if (shown(button)) button.click();
        else loop.busySeen = true;  // a job runs already: the loop goes on after it
    }

    window.easelGenerateForever = {start: start, stop: stop, running: (tab) => !!loops[tab]};

    // Interrupt ends the loop (the job itself is interrupted by the button's own event)
    document.addEventListener("click", (e) => {
        const button = e.target.closest && e.target.closest("[id$='_interrupt']");
        const match = button && button.id.match(/^(txt2img|img2img)_interrupt$/);
        if (match) stop(match[1]);
    }, true);

    for (const tab of ["txt2img", "img2img"]) {
        appendContextMenuOption(`#${tab}_generate`, "Generate forever", () => start(tab));
        appendContextMenuOption(`#${tab}_generate`, "Cancel generate forever", () => stop(tab));
        appendContextMenuOption(`#${tab}_interrupt`, "Cancel generate forever", () => stop(tab));  // shown while a job runs
    }
    addContextMenuEventListener();
})();

// -- icons for buttons Easel does not know by id ------------------------------------------------
(function() {
    const ICONS = {
        "🔄": "refresh", "\u{1f504}": "refresh", "📋": "clipboard", "🗑️": "trash", "🗑": "trash", "🎴": "cards",
        "💾": "save", "♻️": "recycle", "♻": "recycle", "🎲️": "dice", "🎲": "dice", "↙️": "paste", "↙": "paste",
        "📐": "ruler", "📂": "folder", "🗃️": "zip", "🗃": "zip", "✏️": "edit", "✏": "edit", "⇅": "swap",
        "🖌️": "brush", "🖌": "brush", "🖼️": "picture", "🖼": "picture", "🎨️": "palette", "🎨": "palette",
    };
    const LEADING = /^\s*(\S+?)\s+(\S.*)$/s;  // "🖼️ Send to img2img": the emoji becomes the glyph
    const tag = () => {
        for (const button of document.querySelectorAll("button:not([data-easel-icon]), button.easel-icon-text")) {
            const text = button.textContent;
            const icon = ICONS[text.trim()];
            if (icon) {
                button.dataset.easelIcon = icon;
                continue;
            }
            const lead = text.match(LEADING);
            // the label's own text node (Svelte leaves comment nodes beside it); buttons with other content are left alone
            const texts = [...button.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE && n.data.trim());
            const node = texts[0];
            if (!lead || !ICONS[lead[1]] || texts.length !== 1 || button.children.length) continue;
            button.dataset.easelIcon = ICONS[lead[1]];
            button.classList.add("easel-icon-text");
            node.data = lead[2];
        }
    };
    tag();
    new MutationObserver(tag).observe(document.body, {childList: true, subtree: true, characterData: true});
})();
