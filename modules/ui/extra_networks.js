// The extra networks panel's A1111 settings on the page (modules/ui/extra_networks.py builds the
// HTML; page.js does the cards' clicks and the search itself):
// - the folder buttons above the cards (A1111's dirs view): a click puts the folder into the
//   search box (the cards of that folder stay), a second click on the same button clears it;
// - extra_networks_hidden_models "When searched": a card of a model in a hidden folder
//   (.search-only) is shown only while the search text has 4 characters or more.

(function startExtraNetworksOptions() {
    if (window._easelExtraNetworksOptions) return;
    window._easelExtraNetworksOptions = true;

    const searchBox = (tab) => document.querySelector(`#${tab}_extra_search input, #${tab}_extra_search textarea`);

    const applySearchOnly = (tab) => {
        const box = searchBox(tab);
        const long = (box ? box.value : "").trim().length >= 4;
        document.querySelectorAll(`#${tab}_extra_networks .card.search-only`).forEach((card) => {
            card.classList.toggle("hidden-search-only", !long);
        });
    };
    const applyAll = () => {
        for (const panel of document.querySelectorAll("[id$='_extra_networks']")) {
            applySearchOnly(panel.id.replace(/_extra_networks$/, ""));
        }
    };

    document.addEventListener("input", (e) => {
        const box = e.target.closest && e.target.closest("[id$='_extra_search']");
        if (box) applySearchOnly(box.id.replace(/_extra_search$/, ""));
    });
    // cards drawn (the panel opened, Refresh, an edited card): their state follows the search
    new MutationObserver((records) => {
        if (records.some((r) => r.target.closest && r.target.closest("[id$='_extra_networks']"))) applyAll();
    }).observe(document.body, {childList: true, subtree: true});

    document.addEventListener("click", (e) => {
        const button = e.target.closest && e.target.closest(".extra-network-dirs button[data-path]");
        if (!button) return;
        const tab = button.closest(".extra-network-dirs").dataset.tab;
        const box = searchBox(tab);
        if (!box) return;
        const selected = button.classList.contains("selected");
        for (const other of document.querySelectorAll(`#${tab}_extra_networks .extra-network-dirs button`)) {
            other.classList.remove("selected");
        }
        box.value = selected ? "" : button.dataset.path;
        if (!selected) button.classList.add("selected");
        box.dispatchEvent(new Event("input", {bubbles: true}));  // page.js filters, Gradio takes the value
    });
    applyAll();
})();
