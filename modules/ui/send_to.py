"""The "Send to ..." buttons extensions register (A1111's `infotext_utils.register_paste_params_button`
and the older `bind_buttons`), connected once the page is built, as A1111's
`connect_paste_params_buttons` does: a click takes the binding's infotext (its text component, or
the text stored in its picture) and picture, fills the target tab's controls the way the ↙️ button
does (modules/ui/paste_params.py), puts the picture into img2img's (or Inpaint's) image and shows
the tab; "extras" puts the picture into Extras' single image. Other targets are reported and left
unconnected.
"""

from __future__ import annotations

import gradio as gr
from PIL import Image

from modules import infotext_utils

from . import paste_params
from .img2img import IMG2IMG, INPAINT

TARGETS = ("txt2img", "img2img", "inpaint", "extras")


def _picture(value):
    image = infotext_utils.image_from_url_text(value)
    if isinstance(image, Image.Image):
        image.load()
        return image
    return None


def _infotext(text, image) -> str:
    if isinstance(text, str) and text.strip():
        return text
    if image is not None:
        from modules import images

        found, _items = images.read_info_from_image(image)
        return found or ""
    return ""


def connect(txt2img, img2img, main_tabs: gr.Tabs, extras=None) -> int:
    """Wire every registered binding; the number connected. `extras`: the Extras tab (ExtrasTab)."""
    connected = 0
    skipped: set[str] = set()
    for binding in list(infotext_utils.registered_param_bindings):
        target = binding.tabname
        if (target not in TARGETS or binding.paste_button is None
                or (target == "extras" and (extras is None or binding.source_image_component is None))):
            skipped.add(str(target))
            continue
        if target == "extras":  # the picture only, into Extras' single image (A1111)
            binding.paste_button.click(
                lambda value: (gr.Tabs(selected="extras"), _picture(value) or gr.update(),
                               gr.Tabs(selected=extras.single_tab_id), extras.single_mode),
                inputs=binding.source_image_component,
                outputs=[main_tabs, extras.image, extras.mode_tabs, extras.mode], queue=False)
            connected += 1
            continue
        tab = txt2img if target == "txt2img" else img2img
        fields = paste_params.unique(tab.all_paste_fields())
        if binding.paste_field_names:
            fields = [f for f in fields if f[1] in binding.paste_field_names or f[1] in ("Prompt", "Negative prompt")]
        sources = [c for c in (binding.source_text_component, binding.source_image_component) if c is not None]
        has_text = binding.source_text_component is not None
        has_image = binding.source_image_component is not None
        mode = INPAINT if target == "inpaint" else IMG2IMG

        def send(*values, has_text=has_text, has_image=has_image, target=target, fields=fields, mode=mode):
            text = values[0] if has_text else None
            image = _picture(values[-1]) if has_image else None
            filled = paste_params.updates(fields, _infotext(text, image)) if (text or image is not None) else \
                [gr.update()] * len(fields)
            if target == "txt2img":
                return gr.Tabs(selected="txt2img"), *filled
            if image is None:
                picture = gr.update()
            else:
                picture = image if mode == IMG2IMG else {"background": image, "layers": [], "composite": image}
            return (gr.Tabs(selected="img2img"), picture, gr.Tabs(selected=mode), mode,
                    gr.update(), *filled)  # (the inpainting controls follow the mode: style.css)

        outputs = [main_tabs]
        if target != "txt2img":
            editor = img2img.init_img if mode == IMG2IMG else img2img.inpaint
            outputs += [editor, img2img.mode_tabs, img2img.mode, img2img.inpaint_controls]
        outputs += [c for c, _ in fields]
        binding.paste_button.click(send, inputs=sources, outputs=outputs, queue=False)
        connected += 1
    if skipped:
        print(f"[easel] extensions' send-to buttons for {', '.join(sorted(skipped))} are not connected: "
              f"Easel sends to {', '.join(TARGETS)}")
    return connected
