// A1111's full page image viewer ("lightbox", its javascript/imageviewer.js and
// imageviewerGamepad.js), rebuilt for Gradio 6's galleries. Runs as a classic global script
// (modules/ui/app.py adds it to the page's scripts, page.js runs it after webui_globals.js), so
// its functions are window's under A1111's names: closeModal, showModal, modalImageSwitch,
// modalNextImage, modalPrevImage, saveImage, modalSaveImage, modalKeyHandler, modalZoomSet,
// modalZoomToggle, modalTileImageToggle, setupImageForLightbox, updateOnBackgroundChange, negmod.
//
// Clicking a gallery's big picture (Gradio's preview of the selected entry) opens #lightboxModal
// with #modalImage when the option js_modal_lightbox is on (otherwise Gradio's own click: the
// preview's halves step back and forth). In it: ⤡ (.modalZoom) toggles the zoomed view (class
// modalImageFullscreen; js_modal_lightbox_initially_zoomed is its state at each opening), ⊞
// (.modalTileImage) previews the picture tiled, 🖫 (#modal_save, txt2img/img2img only) clicks the
// tab's 💾 (#save_txt2img / #save_img2img: the selected picture is saved), × / Escape / a click on
// the backdrop or the picture closes it, ❮ ❯ / ← → step through the gallery's pictures (the
// gallery's selection follows) and "s" saves. With js_modal_lightbox_gamepad a gamepad's left
// stick (or a horizontal wheel, as A1111's VR pointer support) steps through them while the viewer
// is open, once per js_modal_lightbox_gamepad_repeat ms while held.

function negmod(n, m) {
    return ((n % m) + m) % m;
}

var _easelLightboxGallery = null;  // the gallery the viewer shows pictures of

function _easelLightboxOption(key) {
    return (window.opts || {})[key];
}

function _easelLightbox() {
    return document.getElementById("lightboxModal");
}

function _easelLightboxOpen() {
    const modal = _easelLightbox();
    return !!modal && modal.style.display !== "none" && modal.style.display !== "";
}

// the gallery's entry buttons: the preview's strip when the preview is open, else its grid
function _easelGalleryButtons(gallery) {
    if (!gallery) return [];
    const strip = gallery.querySelectorAll(".thumbnails .thumbnail-item");
    if (strip.length) return Array.from(strip);
    return Array.from(gallery.querySelectorAll(".thumbnail-item"));
}

function _easelSelectedButton(gallery) {
    return _easelGalleryButtons(gallery).find((b) => b.classList.contains("selected")) || null;
}

function _easelShowSource(src) {
    const modalImage = document.getElementById("modalImage");
    const modal = _easelLightbox();
    if (!modalImage || !modal || !src) return;
    modalImage.src = src;
    if (modalImage.style.display === "none") modal.style.setProperty("background-image", `url(${src})`);
}

function closeModal() {
    const modal = _easelLightbox();
    if (modal) modal.style.display = "none";
}

function showModal(event) {
    const source = event.target || event.srcElement;
    const modal = _easelLightbox();
    const modalImage = document.getElementById("modalImage");
    if (!modal || !modalImage) return;
    _easelLightboxGallery = source.closest ? source.closest(".gallery-container") : null;
    modalImage.src = source.src;
    if (modalImage.style.display === "none") modal.style.setProperty("background-image", `url(${source.src})`);
    modal.style.display = "flex";
    modal.focus();
    // the save button only where the tab has a 💾 (txt2img, img2img)
    const tab = source.closest && source.closest("#tab_txt2img, #tab_img2img");
    const save = document.getElementById("modal_save");
    if (save) save.style.display = tab ? "inline" : "none";
    event.stopPropagation();
}

function updateOnBackgroundChange() {
    // the gallery's selection changed while the viewer is open (a new result, a click behind it)
    if (!_easelLightboxOpen()) return;
    const modalImage = document.getElementById("modalImage");
    const button = _easelSelectedButton(_easelLightboxGallery);
    const img = button && button.querySelector("img");
    if (img && modalImage && modalImage.src !== img.src) _easelShowSource(img.src);
}

function modalImageSwitch(offset) {
    const buttons = _easelGalleryButtons(_easelLightboxGallery);
    if (buttons.length < 2) return;
    const current = buttons.findIndex((b) => b.classList.contains("selected"));
    if (current === -1) return;
    const next = buttons[negmod(current + offset, buttons.length)];
    next.click();  // Gradio's selection follows (the send-to and save buttons use it)
    const img = next.querySelector("img");
    if (img) _easelShowSource(img.src);
    setTimeout(() => {
        const modal = _easelLightbox();
        if (modal) modal.focus();
    }, 10);
}

function saveImage() {
    const tab = typeof get_uiCurrentTabContent === "function" ? get_uiCurrentTabContent() : null;
    const tabId = tab ? tab.id : "";
    const button = tabId === "tab_txt2img" ? document.getElementById("save_txt2img")
        : tabId === "tab_img2img" ? document.getElementById("save_img2img") : null;
    if (button) button.click();
    else console.error("the image viewer cannot save pictures of this tab");
}

function modalSaveImage(event) {
    saveImage();
    event.stopPropagation();
}

function modalNextImage(event) {
    modalImageSwitch(1);
    if (event && event.stopPropagation) event.stopPropagation();
}

function modalPrevImage(event) {
    modalImageSwitch(-1);
    if (event && event.stopPropagation) event.stopPropagation();
}

function modalKeyHandler(event) {
    const actions = {
        s: () => saveImage(),
        ArrowLeft: () => modalImageSwitch(-1),
        ArrowRight: () => modalImageSwitch(1),
        Escape: () => closeModal(),
    };
    const action = actions[event.key];
    if (!action) return;
    action();
    // the gallery behind it (Gradio's own arrow keys and Escape) does not see the key
    event.preventDefault();
    event.stopPropagation();
}

function modalZoomSet(modalImage, enable) {
    if (modalImage) modalImage.classList.toggle("modalImageFullscreen", !!enable);
}

function modalZoomToggle(event) {
    const modalImage = document.getElementById("modalImage");
    modalZoomSet(modalImage, !modalImage.classList.contains("modalImageFullscreen"));
    event.stopPropagation();
}

function modalTileImageToggle(event) {
    const modalImage = document.getElementById("modalImage");
    const modal = _easelLightbox();
    if (modalImage.style.display === "none") {
        modalImage.style.display = "block";
        modal.style.setProperty("background-image", "none");
    } else {
        modalImage.style.display = "none";
        modal.style.setProperty("background-image", `url(${modalImage.src})`);
    }
    event.stopPropagation();
}

// A1111 marks each gallery picture it handles; here one listener serves every gallery (Gradio 6
// recreates the preview's <img> on each change), and this only marks the picture as clickable
function setupImageForLightbox(img) {
    if (img.dataset.modded) return;
    img.dataset.modded = "true";
    img.classList.add("easel-lightbox-image");
}

function _easelLightboxClick(event) {
    const img = event.target;
    if (!img || img.tagName !== "IMG" || !img.matches(".gallery-container .media-button img")) return;
    if (!_easelLightboxOption("js_modal_lightbox") || event.button !== 0) return;  // Gradio's own click
    modalZoomSet(document.getElementById("modalImage"), _easelLightboxOption("js_modal_lightbox_initially_zoomed"));
    event.preventDefault();
    showModal(event);
}

function _easelBuildLightbox() {
    if (_easelLightbox()) return;
    const modal = document.createElement("div");
    modal.id = "lightboxModal";
    modal.tabIndex = 0;
    modal.style.display = "none";
    modal.addEventListener("click", closeModal);

    const controls = document.createElement("div");
    controls.className = "modalControls gradio-container";
    modal.append(controls);
    const control = (className, html, title, handler, id) => {
        const span = document.createElement("span");
        span.className = `${className} cursor`;
        if (id) span.id = id;
        span.innerHTML = html;
        span.title = title;
        span.addEventListener("click", handler, true);
        controls.appendChild(span);
        return span;
    };
    control("modalZoom", "&#10529;", "Toggle zoomed view", modalZoomToggle);
    control("modalTileImage", "&#8862;", "Preview tiling", modalTileImageToggle);
    control("modalSave", "&#x1F5AB;", "Save Image(s)", modalSaveImage, "modal_save");
    control("modalClose", "&times;", "Close image viewer", (e) => {
        closeModal();
        e.stopPropagation();
    });

    const modalImage = document.createElement("img");
    modalImage.id = "modalImage";
    modalImage.tabIndex = 0;
    modalImage.addEventListener("click", closeModal);
    modal.appendChild(modalImage);

    const arrow = (className, html, handler) => {
        const a = document.createElement("a");
        a.className = className;
        a.innerHTML = html;
        a.tabIndex = 0;
        a.addEventListener("click", handler, true);
        modal.appendChild(a);
    };
    arrow("modalPrev", "&#10094;", modalPrevImage);
    arrow("modalNext", "&#10095;", modalNextImage);
    document.body.appendChild(modal);
}

(function startLightbox() {
    if (window._easelLightboxStarted) return;
    window._easelLightboxStarted = true;
    _easelBuildLightbox();
    // capture phase: before Gradio's own click on the preview (which steps through the pictures)
    document.addEventListener("click", _easelLightboxClick, true);
    document.addEventListener("keydown", (event) => {
        if (_easelLightboxOpen()) modalKeyHandler(event);
    }, true);
    onUiUpdate(function() {
        document.querySelectorAll(".gallery-container .media-button img").forEach(setupImageForLightbox);
        updateOnBackgroundChange();
    });

    // -- gamepad (A1111's imageviewerGamepad.js): the left stick's x axis past ±0.3 steps once,
    // then again after js_modal_lightbox_gamepad_repeat ms while it is held (at once when released)
    const repeatMs = () => Math.max(0, Number(_easelLightboxOption("js_modal_lightbox_gamepad_repeat")) || 0);
    const active = () => _easelLightboxOption("js_modal_lightbox_gamepad") && _easelLightboxOpen();
    const polled = new Set();
    const axis = (index) => {
        const pads = navigator.getGamepads ? navigator.getGamepads() : [];
        const pad = pads && pads[index];
        return pad && pad.axes && pad.axes.length ? pad.axes[0] : 0;
    };
    window.addEventListener("gamepadconnected", (event) => {
        const index = event.gamepad.index;
        if (polled.has(index)) return;
        polled.add(index);
        let heldSince = null;  // when the last step was taken while the stick is held
        const timer = setInterval(() => {
            if (!polled.has(index)) return clearInterval(timer);
            const x = axis(index);
            const direction = x <= -0.3 ? -1 : x >= 0.3 ? 1 : 0;
            if (!direction) {
                heldSince = null;
                return;
            }
            if (!active()) return;
            const now = Date.now();
            if (heldSince !== null && now - heldSince < repeatMs()) return;
            heldSince = now;
            modalImageSwitch(direction);
        }, 10);
    });
    window.addEventListener("gamepaddisconnected", (event) => polled.delete(event.gamepad.index));
    let wheelWait = false;
    window.addEventListener("wheel", (event) => {
        if (!active() || wheelWait) return;
        if (event.deltaX <= -0.6) modalImageSwitch(-1);
        else if (event.deltaX >= 0.6) modalImageSwitch(1);
        else return;
        wheelWait = true;
        setTimeout(() => { wheelWait = false; }, repeatMs());
    });
})();
