"""ControlNet, built in: sd-webui-controlnet's AlwaysVisible script ("ControlNet"), its accordion and
its unit arguments, over Easel's own ControlNet (modules.core.controlnet*, modules.services.controlnets).

The script's arguments are its units, one per unit (``control_net_unit_count``, 3 by default), as the
extension's: the API's ``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`` puts its unit dicts
there, the accordion keeps each unit's values in a ``gr.State``. The job reads them right before it
generates (modules.controlnet_processing). Element ids and infotext keys are the extension's
(``txt2img_controlnet_ControlNet-0_controlnet_enable_checkbox``, ``ControlNet 0 module``, ...), and
pasting an infotext's ``ControlNet N: "Module: ..., Model: ..."`` fills unit N.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from modules import script_callbacks, scripts, shared
from modules.core import controlnet, controlnet_preprocessors
from modules.services import controlnets

UNIT_COUNT_OPTION = "control_net_unit_count"
FIELDS = ("enabled", "image", "mask", "module", "model", "weight", "guidance_start", "guidance_end", "control_mode",
          "resize_mode", "pixel_perfect", "processor_res", "threshold_a", "threshold_b", "hr_option")


def unit_count() -> int:
    try:
        return max(1, int(shared.opts.data.get(UNIT_COUNT_OPTION, controlnets.DEFAULT_UNIT_COUNT)))
    except (TypeError, ValueError):
        return controlnets.DEFAULT_UNIT_COUNT


def default_unit() -> dict:
    return {"enabled": False, "module": "none", "model": "None", "weight": 1.0, "image": None, "mask": None,
            "resize_mode": "Crop and Resize", "processor_res": -1, "threshold_a": -1, "threshold_b": -1,
            "guidance_start": 0.0, "guidance_end": 1.0, "pixel_perfect": False, "control_mode": "Balanced",
            "hr_option": "Both"}


class ControlNetScript(scripts.Script):
    def __init__(self):
        super().__init__()
        _add_xyz_axes()  # every script module is loaded by now (X/Y/Z plot's included)

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def wanted_for(self, args) -> bool:
        """The job needs the script flow only when a unit is enabled (modules.services.script_jobs)."""
        return any(isinstance(a, dict) and a.get("enabled") for a in args or [])

    def postprocess_batch(self, p, *args, **kwargs):
        """The extension's finishes of the decoded pictures (``images``, (B, 3, H, W) in [0, 1]): the
        recolor units' gray map written into their lightness (Lab L) or intensity (HSV V); then
        ``inpaint_only``'s: the pictures keep the unit's picture outside its mask (dilated and blurred by
        ``control_net_inpaint_blur_sigma``). Not with img2img's own inpainting mask: there the
        extension falls back to its global inpaint, and A1111's overlay keeps the unmasked pixels."""
        images = kwargs.get("images")
        if images is None or not len(images) or not self.wanted_for(args):
            return
        from modules.core import controlnet as core_controlnet
        from modules.controlnet_processing import with_axis_values

        units = controlnets.units_from_args(with_axis_values(p, list(args)))
        init = p.init_images[0] if getattr(p, "init_images", None) else None
        height, width = images[0].shape[-2:]
        for kind, feed in controlnets.recolor_feeds(units, width=width, height=height, init_image=init):
            for i in range(len(images)):
                x = images[i]
                done = core_controlnet.recolor(x.detach().float().permute(1, 2, 0).cpu().numpy(), feed, kind)
                images[i] = torch.from_numpy(done).permute(2, 0, 1).to(x)
        if init is not None and getattr(p, "image_mask", None) is not None:
            return
        sigma = int(shared.opts.data.get("control_net_inpaint_blur_sigma", controlnets.INPAINT_BLUR_SIGMA))
        keeps = controlnets.inpaint_keeps(units, width=width, height=height, init_image=init, sigma=sigma)
        for raw, keep in keeps:
            raw_t = torch.from_numpy(raw).permute(2, 0, 1)
            keep_t = torch.from_numpy(keep).permute(2, 0, 1)
            for i in range(len(images)):
                x = images[i]
                blended = keep_t.to(x) * x.clamp(0, 1) + (1 - keep_t.to(x)) * raw_t.to(x)
                images[i] = blended.clamp(0, 1)

    def ui(self, is_img2img):
        import gradio as gr

        tab = "img2img" if is_img2img else "txt2img"
        states, self.infotext_fields, self.paste_field_names = [], [], []
        with gr.Group(elem_id=f"{tab}_controlnet"):
            with gr.Accordion("ControlNet", open=False, elem_id="controlnet"):
                with gr.Tabs(elem_id=f"{tab}_controlnet_tabs"):
                    for index in range(unit_count()):
                        with gr.Tab(f"ControlNet Unit {index}"):
                            states.append(self._unit_ui(gr, f"{tab}_controlnet_ControlNet-{index}", index))
        return states

    def _unit_ui(self, gr, prefix: str, index: int):
        modules = [p.name for p in controlnet_preprocessors.sorted_rows()]
        models = ["None", *controlnets.get().titles()]
        with gr.Row():
            image = gr.Image(label="Single Image", type="pil", elem_id=f"{prefix}_input_image")
            preview = gr.Image(label="Preprocessor Preview", type="pil", interactive=False,
                               elem_id=f"{prefix}_generated_image")
        mask = gr.Image(label="Mask", type="pil", elem_id=f"{prefix}_mask_image")
        with gr.Row():
            enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_controlnet_enable_checkbox")
            pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=False,
                                        elem_id=f"{prefix}_controlnet_pixel_perfect_checkbox")
        with gr.Row():
            module = gr.Dropdown(modules, value="none", label="Preprocessor",
                                 elem_id=f"{prefix}_controlnet_preprocessor_dropdown")
            run = gr.Button("\U0001f4a5", elem_id=f"{prefix}_controlnet_trigger_preprocessor")
            model = gr.Dropdown(models, value="None", label="Model", elem_id=f"{prefix}_controlnet_model_dropdown")
            refresh = gr.Button("\U0001f504", elem_id=f"{prefix}_controlnet_refresh_models")
        weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight",
                           elem_id=f"{prefix}_controlnet_control_weight_slider")
        with gr.Row():
            start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step",
                              elem_id=f"{prefix}_controlnet_start_control_step_slider")
            end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step",
                            elem_id=f"{prefix}_controlnet_ending_control_step_slider")
        with gr.Row():
            resolution = gr.Slider(-1, 2048, value=-1, step=1, label="Preprocessor Resolution",
                                   elem_id=f"{prefix}_controlnet_preprocessor_resolution_slider")
            threshold_a = gr.Slider(-1, 255, value=-1, step=0.01, label="Threshold A",
                                    elem_id=f"{prefix}_controlnet_threshold_A_slider")
            threshold_b = gr.Slider(-1, 255, value=-1, step=0.01, label="Threshold B",
                                    elem_id=f"{prefix}_controlnet_threshold_B_slider")
        control_mode = gr.Radio(list(controlnet.CONTROL_MODES), value="Balanced", label="Control Mode",
                                elem_id=f"{prefix}_controlnet_control_mode_radio")
        resize_mode = gr.Radio(list(controlnet.RESIZE_MODES), value="Crop and Resize", label="Resize Mode",
                               elem_id=f"{prefix}_controlnet_resize_mode_radio")
        hr_option = gr.Radio(list(controlnet.HR_OPTIONS), value="Both", label="Hires-Fix Option",
                             elem_id=f"{prefix}_controlnet_hr_option_radio")
        state = gr.State(default_unit())
        controls = dict(enabled=enabled, image=image, mask=mask, module=module, model=model, weight=weight,
                        guidance_start=start, guidance_end=end, control_mode=control_mode, resize_mode=resize_mode,
                        pixel_perfect=pixel_perfect, processor_res=resolution, threshold_a=threshold_a,
                        threshold_b=threshold_b, hr_option=hr_option)

        def gather(*values):
            return dict(zip(controls, values))

        inputs = list(controls.values())
        for control in inputs:
            control.change(gather, inputs=inputs, outputs=[state], show_progress="hidden")
        run.click(_preview, inputs=[module, image, mask, resolution, threshold_a, threshold_b], outputs=[preview])
        refresh.click(lambda: gr.update(choices=["None", *controlnets.get().titles()]), outputs=[model])
        for field in controlnets.INFOTEXT_FIELDS:
            self.infotext_fields.append((controls[field], f"ControlNet {index} {field}"))
            self.paste_field_names.append(f"ControlNet {index} {field}")
        self.infotext_fields.append((enabled, lambda params, i=index: f"ControlNet {i}" in params))
        return state


def _preview(module, image, mask, resolution, threshold_a, threshold_b):
    if image is None:
        return None
    detected = controlnets.detect(module, image, mask, resolution=resolution, threshold_a=threshold_a,
                                  threshold_b=threshold_b)
    return Image.fromarray(np.ascontiguousarray(detected[:, :, :3]))


def _pasted(infotext: str, params: dict) -> None:
    """``ControlNet N: "Module: ..., ..."`` -> ``ControlNet N module`` ... for the units' controls."""
    for key, value in list(params.items()):
        if not key.startswith("ControlNet ") or not key[len("ControlNet "):].isdigit() or not isinstance(value, str):
            continue
        for field, parsed in controlnets.parse_infotext_value(value).items():
            if field in controlnets.INFOTEXT_FIELDS:
                params[f"{key} {field}"] = parsed


def _add_xyz_axes() -> None:
    """The extension's X/Y/Z plot axes; each sets the ``p.control_net_*`` value that
    modules.controlnet_processing applies to the units (one value: every unit; Enabled: the first)."""
    xyz = next((d.module for d in scripts.scripts_data if os.path.basename(d.path) == "xyz_grid.py"), None)
    if xyz is None or any(o.label.startswith("[ControlNet]") for o in xyz.axis_options):
        return

    def field(attr):
        def apply(p, x, xs):
            setattr(p, attr, x)
        return apply

    def choices(values):
        return lambda: list(values() if callable(values) else values)

    rows = (("Enabled", str, "control_net_enabled", ["False", "True"]),
            ("Model", str, "control_net_model", lambda: ["None", *controlnets.get().titles()]),
            ("Weight", float, "control_net_weight", None),
            ("Guidance Start", float, "control_net_guidance_start", None),
            ("Guidance End", float, "control_net_guidance_end", None),
            ("Control Mode", str, "control_net_control_mode", controlnet.CONTROL_MODES),
            ("Resize Mode", str, "control_net_resize_mode", controlnet.RESIZE_MODES),
            ("Preprocessor", str, "control_net_module", lambda: list(controlnet_preprocessors.PREPROCESSORS)),
            ("Pre Resolution", int, "control_net_pres", None),
            ("Pre Threshold A", float, "control_net_pthr_a", None),
            ("Pre Threshold B", float, "control_net_pthr_b", None))
    for label, kind, attr, values in rows:
        xyz.axis_options.append(xyz.AxisOption(f"[ControlNet] {label}", kind, field(attr),
                                               choices=choices(values) if values is not None else None,
                                               cost=0.9 if attr == "control_net_model" else 0.0))


def _ui_settings() -> None:
    import gradio as gr

    shared.opts.add_option(UNIT_COUNT_OPTION, shared.OptionInfo(
        controlnets.DEFAULT_UNIT_COUNT, "Multi-ControlNet: ControlNet unit number (requires restart)",
        gr.Slider, {"minimum": 1, "maximum": 10, "step": 1}, section=("control_net", "ControlNet")))
    shared.opts.add_option("control_net_inpaint_blur_sigma", shared.OptionInfo(
        controlnets.INPAINT_BLUR_SIGMA, "ControlNet inpainting Gaussian blur sigma", gr.Slider,
        {"minimum": 0, "maximum": 64, "step": 1}, section=("control_net", "ControlNet")))


script_callbacks.on_infotext_pasted(_pasted)
script_callbacks.on_ui_settings(_ui_settings)
