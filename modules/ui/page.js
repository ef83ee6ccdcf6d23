// Runs once when the page has loaded (as the `js` of a load event): adds the stylesheet,
// tooltips, and A1111's keyboard shortcuts: Ctrl+Enter generates, Alt+Enter skips.
(css, hints) => {
    if (window.easelPageReady) return;
    window.easelPageReady = true;

    const style = document.createElement("style");
    style.id = "easel-style";
    style.textContent = css;
    document.head.appendChild(style);

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
