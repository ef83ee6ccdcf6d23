// A1111's page globals (its script.js and the parts of ui.js extensions call), for extensions'
// javascript/*.js files. This file runs as a classic global <script> (page.js adds it before the
// extensions' files), so its function declarations and `var`s become properties of `window`.
//
// Semantics follow A1111: callbacks are queued with onUiLoaded/onUiUpdate/...; executeCallbacks
// runs each in its own try/catch (a broken extension only logs); onUiLoaded callbacks run once,
// when the txt2img prompt is on the page; onUiUpdate callbacks get the MutationRecords of each
// change; onAfterUiUpdate callbacks run 200 ms after the last change; onUiTabChange callbacks run
// when the selected main tab changes; onOptionsChanged callbacks run when `opts` is (re)filled.

function gradioApp() {
    const elems = document.getElementsByTagName("gradio-app");
    const elem = elems.length === 0 ? document : elems[0];
    if (elem !== document) {
        elem.getElementById = function(id) {
            return document.getElementById(id);
        };
    }
    return elem.shadowRoot ? elem.shadowRoot : elem;
}

// The selected main tab's button / content (A1111 ids: #tabs, #tab_<name>, #tab_<name>-button).
function get_uiCurrentTab() {
    return gradioApp().querySelector("#tabs > .tab-wrapper [role=tablist] > button.selected");
}

function get_uiCurrentTabContent() {
    const panels = gradioApp().querySelectorAll("#tabs > .tabitem[id^=tab_]");
    for (const panel of panels) {
        if (panel.style.display !== "none" && panel.offsetParent !== null) return panel;
    }
    return null;
}

// A1111's hints.js: `titles` maps a button's text or a label's text to its tooltip; extensions add
// to it (sd-dynamic-prompts: `titles = {...titles, ...}`). Applied on every page change.
var titles = window.titles || {"\u21c5": "Switch width/height"};

function _easelApplyTitles() {
    if (typeof titles !== "object" || titles === null) return;
    const nodes = gradioApp().querySelectorAll("button, label > span, h2, select option, .gradio-button");
    for (const node of nodes) {
        if (node.title) continue;
        const text = (node.textContent || "").trim();
        const tooltip = titles[text] || (node.value && titles[node.value]);
        if (tooltip) node.title = tooltip;
    }
}

// Gradio 3's DOM paths A1111 extensions select on, aliased onto Gradio 6's: a textbox's textarea
// was a direct child of its <label> (`#txt2img_prompt > label > textarea`); now it sits one level
// deeper. querySelector/querySelectorAll/matches/closest read such selectors as descendants.
(function aliasGradio3Selectors() {
    if (window._easelSelectorAliases) return;
    window._easelSelectorAliases = true;
    const gradio3 = />\s*label\s*>\s*(textarea|input)\b/g;
    const rewrite = (selector) => (typeof selector === "string" && selector.includes("label")
        ? selector.replace(gradio3, "> label $1") : selector);
    for (const proto of [Document.prototype, Element.prototype, DocumentFragment.prototype]) {
        for (const name of ["querySelector", "querySelectorAll", "matches", "closest"]) {
            const original = proto[name];
            if (typeof original !== "function") continue;
            proto[name] = function(selector, ...rest) {
                return original.call(this, rewrite(selector), ...rest);
            };
        }
    }
})();

var uiUpdateCallbacks = [];
var uiAfterUpdateCallbacks = [];
var uiLoadedCallbacks = [];
var uiTabChangeCallbacks = [];
var optionsChangedCallbacks = [];
var optionsAvailableCallbacks = [];
var uiAfterUpdateTimeout = null;
var uiCurrentTab = null;
var opts = window.opts || {};
var options_available = false;
var executedOnLoaded = false;

function onUiUpdate(callback) {
    uiUpdateCallbacks.push(callback);
}

function onAfterUiUpdate(callback) {
    uiAfterUpdateCallbacks.push(callback);
}

function onUiLoaded(callback) {
    uiLoadedCallbacks.push(callback);
}

function onUiTabChange(callback) {
    uiTabChangeCallbacks.push(callback);
}

function onOptionsChanged(callback) {
    optionsChangedCallbacks.push(callback);
}

function onOptionsAvailable(callback) {
    if (options_available) {
        callback();
    }
    optionsAvailableCallbacks.push(callback);
}

function executeCallbacks(queue, arg) {
    for (const callback of queue) {
        try {
            callback(arg);
        } catch (e) {
            console.error("error running callback", callback, ":", e);
        }
    }
}

function scheduleAfterUiUpdateCallbacks() {
    clearTimeout(uiAfterUpdateTimeout);
    uiAfterUpdateTimeout = setTimeout(function() {
        executeCallbacks(uiAfterUpdateCallbacks);
    }, 200);
}

// Tell Gradio a value was changed from script (A1111's ui.js).
function updateInput(target) {
    const e = new Event("input", {bubbles: true});
    Object.defineProperty(e, "target", {value: target});
    target.dispatchEvent(e);
}

function uiElementIsVisible(el) {
    if (el === document) {
        return true;
    }
    const computedStyle = getComputedStyle(el);
    const isVisible = computedStyle.display !== "none";
    if (!isVisible) return false;
    return el.parentNode ? uiElementIsVisible(el.parentNode) : true;
}

function uiElementInSight(el) {
    const clRect = el.getBoundingClientRect();
    const windowHeight = window.innerHeight;
    const isOnScreen = clRect.bottom > 0 && clRect.top < windowHeight;
    return isOnScreen;
}

// -- tabs and galleries (A1111's ui.js helpers that extensions call) ----------------------
function get_tab_index(tabId) {
    const buttons = gradioApp().querySelectorAll(`#${tabId} > .tab-wrapper [role=tablist] > button`);
    let index = 0;
    buttons.forEach(function(button, i) {
        if (button.classList.contains("selected")) index = i;
    });
    return index;
}

function _easelSelectTab(buttonId) {
    const button = gradioApp().querySelector(`#${buttonId}`);
    if (button) button.click();
}

function switch_to_txt2img() {
    _easelSelectTab("tab_txt2img-button");
    return Array.from(arguments);
}

function switch_to_img2img_tab(no) {
    _easelSelectTab("tab_img2img-button");
    const buttons = gradioApp().querySelectorAll("#mode_img2img > .tab-wrapper [role=tablist] > button");
    if (buttons[no]) buttons[no].click();
}

function switch_to_img2img() {
    switch_to_img2img_tab(0);
    return Array.from(arguments);
}

function switch_to_sketch() {
    switch_to_img2img_tab(1);
    return Array.from(arguments);
}

function switch_to_inpaint() {
    switch_to_img2img_tab(2);
    return Array.from(arguments);
}

function switch_to_inpaint_sketch() {
    switch_to_img2img_tab(3);
    return Array.from(arguments);
}

function all_gallery_buttons() {
    const tab = get_uiCurrentTabContent();
    if (!tab) return [];
    return Array.from(tab.querySelectorAll("[id$='_gallery'] .thumbnail-item, [id$='_gallery'] .thumbnail-small"));
}

function selected_gallery_button() {
    return all_gallery_buttons().find((b) => b.classList.contains("selected")) || null;
}

function selected_gallery_index() {
    return all_gallery_buttons().findIndex((b) => b.classList.contains("selected"));
}

// -- start-up (called by page.js once the extensions' files have run) ---------------------
function _easelSetOptions(json) {
    let values = {};
    try {
        values = JSON.parse(json || "{}");
    } catch (e) {
        console.error("options are not JSON", e);
        return;
    }
    for (const key of Object.keys(opts)) delete opts[key];
    Object.assign(opts, values);
    window.opts = opts;
    if (!options_available) {
        options_available = true;
        executeCallbacks(optionsAvailableCallbacks);
    }
    executeCallbacks(optionsChangedCallbacks);
}

// A1111 runs the onUiLoaded callbacks once txt2img's prompt is there; with txt2img in hidden_tabs
// (no such tab on the page) once the main tabs are (this runs after each was shown once)
function _easelCheckLoaded() {
    const app = gradioApp();
    const ready = app.querySelector("#txt2img_prompt") || (app.querySelector("#tabs") && !app.querySelector("#tab_txt2img-button"));
    if (!executedOnLoaded && ready) {
        executedOnLoaded = true;
        executeCallbacks(uiLoadedCallbacks);
    }
}

function _easelCheckTab() {
    const newTab = get_uiCurrentTab();
    if (newTab && newTab !== uiCurrentTab) {
        uiCurrentTab = newTab;
        executeCallbacks(uiTabChangeCallbacks);
        return true;
    }
    return false;
}

// Gradio 6 puts a tab's content on the page only when the tab is first shown, while A1111
// extensions look up elements of every main tab (#img2img_prompt, #tab_settings ...) once the UI
// has loaded. So each main tab is shown once, briefly, before the onUiLoaded callbacks run, and
// the tab that was selected is selected again. A click by the user meanwhile ends the round there.
async function _easelRenderMainTabs() {
    const buttons = () => Array.from(gradioApp().querySelectorAll("#tabs > .tab-wrapper [role=tablist] > button"));
    const original = buttons().find((b) => b.classList.contains("selected"));
    let userClicked = false;
    let userTarget = null;  // what the user clicked (the nested round puts back what it changed elsewhere)
    const onClick = (e) => {
        if (!e.isTrusted) return;
        userClicked = true;
        userTarget = e.target;
    };
    document.addEventListener("click", onClick, true);
    const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
    try {
        for (const button of buttons()) {
            if (userClicked) return;
            const panelId = button.id.replace(/-button$/, "");
            if (!panelId || gradioApp().querySelector(`#${panelId}`)) continue;
            button.click();
            for (let i = 0; i < 100 && !gradioApp().querySelector(`#${panelId}`); i++) await frame();
            await frame();
        }
        if (!userClicked && original && !original.classList.contains("selected")) {
            const again = buttons().find((b) => b.id === original.id);
            if (again) again.click();
            await frame();
        }
        await _easelRenderNestedTabs(() => (userClicked ? userTarget || document.body : null), frame);
    } finally {
        document.removeEventListener("click", onClick, true);
    }
}

// The same for the tab lists inside the main tabs (img2img's Sketch, Inpaint ... whose pictures
// extensions look up at load: sd-webui-aspect-ratio-helper), each list's selected tab selected again.
// Easel's own sub-tabs keep their state in the page (no round trip to race); Settings' sections,
// tabs in a list's overflow menu and tabs without an id stay as Gradio shows them. A click by the
// user ends the round; the list it was in the middle of gets its tab back unless the click was in it.
async function _easelRenderNestedTabs(userClick, frame) {
    const shown = (id) => gradioApp().querySelector(`#${CSS.escape(id)}`);
    const putBack = (list, original) => {
        const target = userClick();
        if (target && list.contains(target)) return;  // the user chose a tab of this list
        if (original && !original.classList.contains("selected")) original.click();
    };
    for (let round = 0; round < 3; round++) {  // a tab shown here may hold tab lists of its own
        let clicked = false;
        for (const list of gradioApp().querySelectorAll("#tabs .tabitem [role=tablist]")) {
            if (list.closest("#tab_settings")) continue;
            const buttons = Array.from(list.querySelectorAll(":scope > button[id$='-button']"));
            const original = buttons.find((b) => b.classList.contains("selected"));
            for (const button of buttons) {
                if (userClick()) return putBack(list, original);
                const panelId = button.id.replace(/-button$/, "");
                if (!panelId || shown(panelId)) continue;
                button.click();
                clicked = true;
                for (let i = 0; i < 100 && !shown(panelId); i++) await frame();
            }
            putBack(list, original);
            await frame();
            if (userClick()) return;
        }
        if (!clicked) return;
    }
}

async function _easelStartWebuiGlobals(optsJson) {
    if (window._easelWebuiObserver) return;
    window._easelWebuiObserver = true;
    try {
        await _easelRenderMainTabs();
    } catch (e) {
        console.error("showing the main tabs once failed", e);
    }
    _easelSetOptions(optsJson);
    // (in A1111 the page changes after the options arrive: extensions' observers waiting for both see it)
    const marker = document.createElement("span");
    marker.id = "easel-options-applied";
    marker.hidden = true;
    (gradioApp().querySelector(".gradio-container") || document.body).appendChild(marker);
    window._easelWebuiObserver = new MutationObserver(function(m) {
        _easelCheckLoaded();
        _easelApplyTitles();
        executeCallbacks(uiUpdateCallbacks, m);
        scheduleAfterUiUpdateCallbacks();
        _easelCheckTab();
    });
    window._easelWebuiObserver.observe(gradioApp(), {childList: true, subtree: true});
    // a tab already shown once is shown again by a class change only (no child list change); in
    // A1111 (Gradio 3) showing a tab changed the page's elements, so the update callbacks ran too
    // (sd-dynamic-prompts loads its Wildcards Manager from onAfterUiUpdate when its tab is shown)
    let tabCheckPending = false;
    new MutationObserver(function() {
        if (tabCheckPending) return;
        tabCheckPending = true;
        requestAnimationFrame(function() {
            tabCheckPending = false;
            if (_easelCheckTab()) {
                executeCallbacks(uiUpdateCallbacks, []);
                scheduleAfterUiUpdateCallbacks();
            }
        });
    }).observe(gradioApp(), {attributes: true, attributeFilter: ["class"], subtree: true});
    // the page is usually complete already when this runs (a load event): start as A1111 does
    // on its first mutation
    uiCurrentTab = get_uiCurrentTab();  // the round through the tabs is no tab change
    _easelCheckLoaded();
    _easelApplyTitles();
    executeCallbacks(uiUpdateCallbacks, []);
    scheduleAfterUiUpdateCallbacks();
}
