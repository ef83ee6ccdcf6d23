"""The Gradio page: checkpoint picker on top, then the tabs (txt2img, img2img, the extensions'
own tabs, Settings, Extensions), with A1111's page globals and the extensions' JS/CSS."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import gradio as gr

from modules import gradio_compat
from modules.services.engine import Engine
from modules.services.option_sections import GRADIO_THEMES

from . import localization as page_localization
from .extensions_tab import ExtensionsTab
from .extras_tab import ExtrasTab
from .extra_networks import HINTS as EXTRA_NETWORK_HINTS
from .gallery_buttons import HINTS as GALLERY_HINTS
from .generation_tab import RANDOM_SEED_HINT, REUSE_SEED_HINT, GenerationTab
from .img2img import IMG2IMG, INPAINT, Img2ImgTab
from .paste_params import HINT as PASTE_HINT
from .prompt_tools import HINTS as PROMPT_TOOL_HINTS
from .merger_tab import MergerTab
from .pnginfo_tab import PngInfoTab
from .scripts_ui import component_callbacks, current_runner, extension_tabs, register_paste_fields
from . import send_to, tab_names
from .refiner import HINTS as REFINER_HINTS
from .settings import SettingsTab
from .styles import HINTS as STYLE_HINTS
from .txt2img import Txt2ImgTab

HERE = Path(__file__).resolve().parent
STARTUP_LOAD_WAIT = 120  # seconds a page load waits for the start-up checkpoint load

HINTS = {
    "refresh_sd_model_checkpoint": "Refresh the list of checkpoints",
    **{f"{tab}_{name}": text for tab in ("txt2img", "img2img") for name, text in {
        "random_seed": RANDOM_SEED_HINT,
        "paste": PASTE_HINT,
        "reuse_seed": REUSE_SEED_HINT,
        "generate": "Generate (Ctrl+Enter)",
        "skip": "Stop the current batch and go on with the next (Alt+Enter)",
        "interrupt": "Stop the job; what was made so far is shown, not saved",
    }.items()},
    "img2img_detect_image_size_btn": "Auto detect size from the image",
    **GALLERY_HINTS,
    **{f"{tab}_{name}": text for tab in ("txt2img", "img2img")
       for name, text in {**STYLE_HINTS, **EXTRA_NETWORK_HINTS, **REFINER_HINTS, **PROMPT_TOOL_HINTS}.items()},
}


def _extension_files(kind: str) -> list[tuple[str, str]]:
    """(name, text) of the active extensions' javascript/*.js (kind "js") or style.css ("css")
    files, in load order; none when the extension system is absent. A file that cannot be read is
    reported and left out."""
    try:
        from modules import extensions
    except ImportError:
        return []
    lister = getattr(extensions, "javascript_files" if kind == "js" else "css_files", None)
    files = []
    for path in (lister() if lister else []):
        path = Path(path)
        name = "/".join(path.parts[-3:] if kind == "js" else path.parts[-2:])  # <extension>/javascript/x.js
        try:
            files.append((name, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            print(f"[easel] extension file {path} not added to the page: {exc}")
    return files


def page_script() -> str:
    """The JS of the page's load event: stylesheet, A1111's globals, the extensions' files,
    tooltips, keyboard shortcuts. It takes the options' JSON (window.opts) as its input.

    It goes through a load event because `gr.mount_gradio_app` (webui.py) replaces a
    Blocks' own `css`/`js`/`head` with its arguments."""
    css = (HERE / "style.css").read_text(encoding="utf-8")
    script = (HERE / "page.js").read_text(encoding="utf-8").strip()
    webui_globals = (HERE / "webui_globals.js").read_text(encoding="utf-8")
    args = ", ".join(json.dumps(a) for a in (css, HINTS))
    # Easel's own prompt tools (Ctrl+↑/↓, Generate forever, icons), the full page image viewer
    # (lightbox.js) and the extra networks' folder buttons (extra_networks.js) run first, as
    # A1111's javascript/ files do
    own = [(f"easel/{name}", (HERE / name).read_text(encoding="utf-8")) for name in ("prompt_tools.js", "lightbox.js", "extra_networks.js")]
    scripts = [*own, *_extension_files("js")]
    # A1111's notification_audio plays the install's notification.mp3 when it is there as the page is built
    from modules.file_route import allowed_files

    sound = any(path.name == "notification.mp3" and path.is_file() for path in allowed_files())
    extension_args = ", ".join(json.dumps(a) for a in (webui_globals, scripts, _extension_files("css"), sound))
    return f"(optsJson) => ({script})({args}, optsJson, {extension_args})"


# A1111's gradio_theme: "Default" or a theme's name on the Hugging Face hub. The themes that ship
# with Gradio are built here from its own classes (no download); the choices are
# modules.services.option_sections.GRADIO_THEMES
# the option's choices ("gradio/soft") -> Gradio's class of that theme (gr.themes.Soft)
_BUILT_IN_THEMES = {name: name.split("/", 1)[1].capitalize() for name in GRADIO_THEMES if name != "Default"}


def page_theme(options) -> gr.themes.ThemeClass:
    """The page's Gradio theme as the option gradio_theme names it, read as the page is built
    (A1111: Reload UI after a change). Gradio 6 takes the theme where the page is mounted
    (`gr.mount_gradio_app(..., theme=...)`, webui.py); create_ui also keeps it as `demo.theme`.
    An unknown name is reported and the default theme used, as A1111 does when a theme fails."""
    name = options.get("gradio_theme") or "Default"
    class_name = _BUILT_IN_THEMES.get(name, "Default")
    if name != "Default" and name not in _BUILT_IN_THEMES:
        print(f"[easel] Gradio theme {name!r} is not one that ships with Gradio: the default theme is used")
    return getattr(gr.themes, class_name)()


def _size_fields(tabs: list[GenerationTab]) -> list[gr.components.Component]:
    """What follows the loaded model: the sizes, then each tab's family controls (modules.ui.generation_tab)."""
    return [c for tab in tabs for c in (tab.width, tab.height)] + [c for tab in tabs for c in tab.family_controls()]


def _family_updates(tabs: list[GenerationTab], changed: bool) -> list:
    return [u for tab in tabs for u in tab.family_updates(changed)]


def _checkpoint_row(engine: Engine, tabs: list[GenerationTab], settings: SettingsTab) -> gr.Dropdown:
    keep_sizes = [gr.update()] * (2 * len(tabs))

    def choose(evt: gr.SelectData):
        return load(evt.value)

    def load(title: str | None):
        keep = [*keep_sizes, *_family_updates(tabs, changed=False)]
        if not title:
            return gr.update(), *keep
        distilled_before = engine.uses_distilled_guidance()
        try:
            engine.select_checkpoint(title)
        except Exception as exc:  # noqa: BLE001 - any load failure is the user's message; the old model stays
            gr.Warning(html.escape(f"Could not load {title}: {exc}"), title="Error")
            return gr.update(choices=_titles(engine), value=_current(engine)), *keep
        w, h = engine.native_size()  # the size defaults follow the model, and the guidance controls its family
        family = _family_updates(tabs, changed=engine.uses_distilled_guidance() != distilled_before)
        return gr.update(choices=_titles(engine), value=_current(engine)), *[w, h] * len(tabs), *family

    def refresh():
        engine.checkpoints.refresh()
        return gr.update(choices=_titles(engine), value=_current(engine))

    with gr.Row(elem_id="quicksettings"):
        dropdown = gr.Dropdown(_titles(engine), value=_current(engine), label="Stable Diffusion checkpoint",
                               elem_id="setting_sd_model_checkpoint", scale=4, allow_custom_value=False,
                               interactive=True)
        refresh_button = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", min_width=40, scale=0)
        settings.build_quicksettings()  # the rest of quicksettings_list
    # `select`, not `input`: Gradio 6's dropdown sends `input` twice per pick (on the pick and
    # again on blur), which would load a checkpoint twice and report a failure twice
    # `always_last`: a pick made while a load is still pending runs after it (the default,
    # "once", drops it silently while the picker already shows it)
    dropdown.select(choose, outputs=[dropdown, *_size_fields(tabs)], show_progress_on=[dropdown],
                    concurrency_limit=None, trigger_mode="always_last")
    refresh_button.click(refresh, outputs=dropdown, queue=False)
    for tab in tabs:  # a checkpoint card of the extra networks panel loads its checkpoint like a pick here
        tab.extra_networks.checkpoint_button.click(
            load, inputs=tab.extra_networks.checkpoint_name, outputs=[dropdown, *_size_fields(tabs)],
            js="(name) => window.easelDesiredCheckpoint || ''", show_progress_on=[dropdown],
            concurrency_limit=None, trigger_mode="always_last")
    return dropdown


def _title(engine: Engine, info) -> str:
    """How the checkpoint picker names a checkpoint: its title, or with A1111's
    sd_checkpoint_dropdown_use_short its file's stem without folders (both load it)."""
    return info.short_title if engine.options.get("sd_checkpoint_dropdown_use_short") else info.title


def _titles(engine: Engine) -> list[str]:
    return [_title(engine, info) for info in engine.checkpoints.list()]


def _current(engine: Engine) -> str | None:
    info = engine.models.info
    return _title(engine, info) if info else None


def sent_fields(image, seed, options) -> tuple:
    """(seed, width, height) that a picture sent to img2img sets there: the source tab's seed
    (setting send_seed) and the picture's size, to a multiple of 8 within the sliders (send_size);
    gr.update() (left as it is) where the setting is off, as A1111's send buttons."""
    sent_seed = seed if options.get("send_seed", True) else gr.update()
    if options.get("send_size", True):
        width, height = (max(64, min(2048, side // 8 * 8)) for side in image.size)
    else:
        width = height = gr.update()
    return sent_seed, width, height


def _wire_send_to(tabs: list[GenerationTab], img2img: Img2ImgTab, extras: ExtrasTab, main_tabs: gr.Tabs) -> None:
    """The send-to buttons under txt2img's and img2img's galleries: the selected picture (the first
    without a selection) goes to img2img (with the tab's prompts, sampler settings, and its seed and
    the picture's size as send_seed / send_size say), its Inpaint tab, or Extras' single image; that
    tab is then shown."""
    common = [img2img.prompt, img2img.negative, img2img.sampler, img2img.scheduler, img2img.steps, img2img.cfg,
              img2img.width, img2img.height, main_tabs, img2img.mode_tabs, img2img.mode, img2img.inpaint_controls,
              img2img.seed]

    def sender(mode: int):
        def send(gallery, selected, prompt, negative, sampler, scheduler, steps, cfg, seed):
            image = _gallery_image(gallery, selected)
            if image is None:
                gr.Warning("Generate an image first, then send it", title="Nothing to send")
                return [gr.update()] * (len(common) + 1)
            sent_seed, width, height = sent_fields(image, seed, img2img.engine.options)
            editor_value = image if mode == IMG2IMG else {"background": image, "layers": [], "composite": image}
            return (editor_value, prompt, negative, sampler, scheduler, steps, cfg, width, height,
                    gr.Tabs(selected="img2img"), gr.Tabs(selected=mode), mode,
                    gr.update(), sent_seed)  # (the inpainting controls follow the mode: style.css)
        return send

    def to_extras(gallery, selected):
        image = _gallery_image(gallery, selected)
        if image is None:
            gr.Warning("Generate an image first, then send it", title="Nothing to send")
            return [gr.update()] * 4
        return image, gr.Tabs(selected="extras"), gr.Tabs(selected=extras.single_tab_id), extras.single_mode

    for tab in tabs:
        sources = [tab.gallery, tab.selected, tab.prompt, tab.negative, tab.sampler, tab.scheduler, tab.steps, tab.cfg,
                   tab.seed]
        # (through the queue, so that "Nothing to send" shows as a toast)
        tab.send_to_img2img.click(sender(IMG2IMG), inputs=sources, outputs=[img2img.init_img, *common])
        tab.send_to_inpaint.click(sender(INPAINT), inputs=sources, outputs=[img2img.inpaint, *common])
        tab.send_to_extras.click(to_extras, inputs=[tab.gallery, tab.selected],
                                 outputs=[extras.image, main_tabs, extras.mode_tabs, extras.mode])


def _gallery_image(gallery, selected: int):
    """The selected gallery entry as a loaded picture (None when the gallery is empty)."""
    from PIL import Image

    if not gallery:
        return None
    entry = gallery[selected if isinstance(selected, int) and 0 <= selected < len(gallery) else 0]
    source = entry[0] if isinstance(entry, (tuple, list)) else entry
    if isinstance(source, Image.Image):
        return source.copy()
    with Image.open(source) as picture:
        picture.load()
        return picture.copy()


def create_ui(engine: Engine, *, allow_folders: bool = True) -> gr.Blocks:
    """`allow_folders` False (--hide-ui-dir-config) turns off img2img's and Extras' batch from server folders.

    While the page is built every component is announced to the extensions' component callbacks
    (scripts_ui.component_callbacks)."""
    gradio_compat.apply()
    with component_callbacks():
        return _create_ui(engine, allow_folders)


def _create_ui(engine: Engine, allow_folders: bool) -> gr.Blocks:
    txt2img = Txt2ImgTab(engine)
    txt2img.allow_folders = allow_folders  # (img2img takes it as an argument)
    img2img = Img2ImgTab(engine, allow_folders=allow_folders)
    settings = SettingsTab(engine.options, appliers={"sd_vae": engine.select_vae})
    pnginfo = PngInfoTab()
    extras = ExtrasTab(engine, allow_folders=allow_folders)
    merger = MergerTab(engine)
    tabs = [txt2img, img2img]
    extension_interfaces = extension_tabs()  # A1111 builds them before the page, each its own Blocks

    def generation(tab: GenerationTab):
        def build():
            with current_runner(tab.tabname):
                tab.build()
        return build

    # (label, id, build) in A1111's usual order; the labels are what ui_tab_order and hidden_tabs name
    page_tabs = [
        ("txt2img", "txt2img", generation(txt2img)),
        ("img2img", "img2img", generation(img2img)),
        ("Extras", "extras", extras.build),
        ("PNG Info", "pnginfo", pnginfo.build),
        ("Checkpoint Merger", "modelmerger", merger.build),
        *[(title, tab_id, interface.render) for interface, title, tab_id in extension_interfaces],
        ("Settings", "settings", settings.build),
        ("Extensions", "extensions", ExtensionsTab(engine.options, submit=engine.queue.submit).build),
    ]
    tab_names.record([label for label, _, _ in page_tabs])  # (before Settings lists the two options' choices)
    # A1111's ui_tab_order and hidden_tabs, read as the page is built (Reload UI). A hidden tab is
    # built all the same but left out of the page (not rendered), so that what other tabs wire to
    # it (send-to, paste, the checkpoint's sizes) keeps working; the first tab shown is selected
    hidden_tabs = engine.options.get("hidden_tabs") or []
    page_tabs = [(*tab, not tab_names.hidden(tab[0], hidden_tabs))
                 for tab in tab_names.ordered(page_tabs, engine.options.get("ui_tab_order"))]
    first_shown = next((tab_id for _, tab_id, _, shown in page_tabs if shown), None)
    with gr.Blocks(title="Easel", analytics_enabled=False) as demo:
        placeholder = gr.Column()
        with gr.Tabs(elem_id="tabs", selected=first_shown) as main_tabs:
            for label, tab_id, build, shown in page_tabs:
                with gr.Tab(label, id=tab_id, elem_id=f"tab_{tab_id}", visible=shown):
                    build()
        with placeholder:
            dropdown = _checkpoint_row(engine, tabs, settings)
        merger.wire(dropdown)
        _wire_send_to(tabs, img2img, extras, main_tabs)
        pnginfo.wire_send(txt2img, img2img, main_tabs, IMG2IMG)
        send_to.connect(txt2img, img2img, main_tabs, extras)  # the send-to buttons extensions registered
        settings.defaults.wire(demo)  # Settings → Defaults: the page's controls that have ui-config keys

        built_size = (txt2img.width.value, txt2img.height.value)
        built_distilled = txt2img.distilled_cfg.visible
        keep_sizes = [gr.update()] * (2 * len(tabs))

        def on_load():
            # the start-up load runs on the worker; a page opened meanwhile waits for it, so the
            # picker and the size defaults show the model that is really there
            deadline = time.time() + STARTUP_LOAD_WAIT
            while engine.state.job == "load checkpoint" and engine.models.info is None and time.time() < deadline:
                time.sleep(0.2)
            # sizes only when the model differs from the one the page was built with: a load
            # event may land after the user has already typed a size
            w, h = engine.native_size()
            sizes = keep_sizes if (w, h) == built_size else [w, h] * len(tabs)
            family = _family_updates(tabs, changed=engine.uses_distilled_guidance() != built_distilled)
            return gr.update(choices=_titles(engine), value=_current(engine)), *sizes, *family

        demo.load(on_load, outputs=[dropdown, *_size_fields(tabs)], show_progress_on=[dropdown])
        demo.load(settings.values, outputs=settings.components, queue=False)  # as changed since (API, config)
        if settings.quick_components:
            demo.load(settings.quick_values, outputs=settings.quick_components, queue=False)
        for tab in tabs:  # styles saved or files edited since the page was built
            demo.load(tab.styles.current, outputs=tab.styles.dropdown, queue=False)
            demo.load(tab.sampler_choices, outputs=tab.sampler_lists(), queue=False)  # hide_samplers
        # the page's script gets the options as they are now, for A1111's window.opts
        demo.load(settings.options_json, outputs=settings.json, queue=False).then(
            None, inputs=settings.json, js=page_script(), queue=False)
        page_localization.add_to_page(demo, engine.options)  # the chosen localization's texts
    demo.theme = page_theme(engine.options)  # (Gradio 6: what webui.py mounts the page with)
    register_paste_fields("txt2img", txt2img.all_paste_fields())
    register_paste_fields("img2img", img2img.all_paste_fields(), init_img=img2img.init_img)
    return demo
