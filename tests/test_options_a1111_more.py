"""More of A1111 1.10's options (issue 13, item 3), each checked where A1111 applies it: the files
written (read back with PIL), the pictures returned, the infotext. Every request is tiny (64 px,
1 step) and sets its options in its own override_settings, with its outputs in a folder of the
test's, so the shared server's other tests see nothing of them.

Sections touched: "Saving images/grids" (copies before the hires pass, colour correction and face
restoration; masks; init images; incomplete images; the Save button's log.csv and archive name; the
grids' label colours and font), "Paths for saving" (outdir_init_images), "img2img" (return_mask,
return_mask_composite, overlay_inpaint), "Upscaling" (upscaler_for_img2img), "Infotext"
(enable_pnginfo, disable_weights_auto_swap, add_user_name_to_info), "System" (samples_log_stdout,
enable_console_prompts), "Stable Diffusion" (comma_padding_backtrack, sdxl_clip_l_skip).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.api_common import decode

BASE = {"prompt": "a red cube", "negative_prompt": "", "width": 64, "height": 64, "steps": 1,
        "cfg_scale": 7.0, "sampler_name": "Euler", "seed": 77, "save_images": True}
FLAT = {"save_to_dirs": False, "samples_filename_pattern": "[seed]"}  # NNNNN-SEED[-suffix].png in the folder


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def options(tmp_path, **more) -> dict:
    return {"outdir_samples": str(tmp_path / "samples"), "outdir_grids": str(tmp_path / "grids"), **FLAT, **more}


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def post(server, kind: str, body: dict) -> tuple[list[Image.Image], dict]:
    r = server.post(f"/sdapi/v1/{kind}", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return [decode(x) for x in data["images"]], json.loads(data["info"])


def init_picture() -> Image.Image:
    """64x64 RGB: a smooth gradient, so any repainting shows."""
    y, x = np.mgrid[0:64, 0:64]
    return Image.fromarray(np.dstack([x * 4, y * 4, 255 - x * 2]).astype(np.uint8), "RGB")


def square_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


# --------------------------------------------------------------------------------------- Infotext

def test_enable_pnginfo_off_leaves_the_infotext_out_of_the_file_not_out_of_the_txt(server, tmp_path):
    images, info = post(server, "txt2img", {**BASE, "override_settings": options(
        tmp_path, enable_pnginfo=False, save_txt=True)})
    samples = tmp_path / "samples"
    assert names(samples) == ["00000-77.png", "00000-77.txt"]
    with Image.open(samples / "00000-77.png") as saved:
        assert "parameters" not in saved.info  # A1111: no text chunk at all
    text = (samples / "00000-77.txt").read_text(encoding="utf-8")
    assert "Seed: 77" in text and text.strip() == info["infotexts"][0]
    assert "parameters" not in images[0].info  # the picture returned carries none either (A1111)


def _other_checkpoint(server) -> dict:
    models = server.get("/sdapi/v1/sd-models").json()
    return next(m for m in models if m["model_name"] == "tiny-sd2-v")


def test_disable_weights_auto_swap(server, tmp_path):
    """A pasted infotext (the API's `infotext`) switches the job's checkpoint only when the option is
    off; on (A1111's default) the selected checkpoint stays."""
    other = _other_checkpoint(server)
    text = f"a cat\nSteps: 1, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Model: {other['model_name']}"
    body = {**BASE, "save_images": False, "infotext": text}
    _, kept = post(server, "txt2img", body)
    assert kept["sd_model_name"] == "tiny-sd1" and kept["all_seeds"] == [77]  # the body's own fields win
    _, swapped = post(server, "txt2img", {**body, "override_settings": {"disable_weights_auto_swap": False}})
    assert swapped["sd_model_name"] == "tiny-sd2-v"
    assert "Model: tiny-sd2-v" in swapped["infotexts"][0]
    # the job's checkpoint only: the selected one is still the same
    assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd1")


# ---------------------------------------------------------------------------------- Saving images

def test_save_images_before_highres_fix(server, tmp_path):
    body = {**BASE, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 1,
            "denoising_strength": 0.5, "override_settings": options(tmp_path, save_images_before_highres_fix=True)}
    images, info = post(server, "txt2img", body)
    samples = tmp_path / "samples"
    assert names(samples) == ["00000-77-before-highres-fix.png", "00001-77.png"]  # A1111's suffix and order
    with Image.open(samples / "00000-77-before-highres-fix.png") as before, Image.open(samples / "00001-77.png") as after:
        assert before.size == (64, 64) and after.size == (96, 96)
        assert "Hires upscale: 1.5" in before.info["parameters"]  # the job's infotext
        assert before.info["parameters"] == after.info["parameters"] == info["infotexts"][0]
    assert [im.size for im in images] == [(96, 96)]  # a copy, not a result


def test_save_incomplete_images(server, tmp_path):
    """An interrupted job's pictures are saved only with save_incomplete_images (A1111's
    p.save_samples()); they are returned either way."""
    body = {**BASE, "width": 256, "height": 256, "steps": 40,
            "override_settings": options(tmp_path, save_incomplete_images=True)}
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(r=server.post("/sdapi/v1/txt2img", json=body)))
    worker.start()
    deadline = time.monotonic() + 120
    step = 0
    while time.monotonic() < deadline and worker.is_alive():
        state = server.get("/sdapi/v1/progress?skip_current_image=true").json()["state"]
        if state["job"] == "txt2img" and state["sampling_step"] > 0:
            step = state["sampling_step"]
            break
        time.sleep(0.02)
    assert 0 < step < 40, "never saw the job sampling"
    assert server.post("/sdapi/v1/interrupt").json() == {}
    worker.join(120)
    assert server.get("/sdapi/v1/progress").json()["state"]["interrupted"] is True
    r = outcome["r"]
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1
    assert names(tmp_path / "samples") == ["00000-77.png"]
    with Image.open(tmp_path / "samples" / "00000-77.png") as saved:
        assert saved.size == (256, 256) and "Seed: 77" in saved.info["parameters"]


# ------------------------------------------------------- img2img: masks, overlay, copies, init images

def test_inpainting_masks_copies_and_init_image(server, tmp_path):
    init = init_picture()
    body = {**BASE, "init_images": [b64(init)], "mask": b64(square_mask()), "denoising_strength": 0.9,
            "mask_blur": 4, "inpainting_fill": 1,
            "override_settings": options(tmp_path, save_mask=True, save_mask_composite=True, return_mask=True,
                                         return_mask_composite=True, img2img_color_correction=True,
                                         save_images_before_color_correction=True, save_init_img=True,
                                         outdir_init_images=str(tmp_path / "init"))}
    images, info = post(server, "img2img", body)

    # returned: the result, then the greyscale mask, then the masked composite (A1111's order); three
    # pictures make a grid, which leads (A1111 counts the masks among its output images too)
    grid, result, mask, composite = images
    assert info["index_of_first_image"] == 1 and grid.size[0] > 64
    assert result.size == mask.size == composite.size == (64, 64)
    assert mask.mode == "RGB" and composite.mode == "RGBA"
    m = np.asarray(mask)
    assert (m[32, 32] == 255).all() and (m[0, 0] == 0).all() and (m[2, 60] == 0).all()
    c, r = np.asarray(composite), np.asarray(result)
    assert c[0, 0, 3] == 0 and c[32, 32, 3] == 255  # transparent outside the mask, opaque inside
    # overlay_inpaint (default on): outside the blurred mask the result is the init picture, exactly
    assert (r[:4] == np.asarray(init)[:4]).all()
    assert len(info["infotexts"]) == 4 and len(info["all_seeds"]) == 1

    # saved: the result, its copy before colour correction and both masks, all with the job's infotext
    samples = tmp_path / "samples"
    assert names(samples) == ["00000-77-before-color-correction.png", "00001-77.png", "00002-77-mask.png",
                              "00003-77-mask-composite.png"]
    for name in names(samples):
        with Image.open(samples / name) as saved:
            assert saved.info["parameters"] == info["infotexts"][0], name
    with Image.open(samples / "00002-77-mask.png") as saved_mask:
        assert (np.asarray(saved_mask) == m).all()

    # the init image as sent, under its MD5, and that hash in the infotext (A1111's "Init image hash")
    digest = hashlib.md5(init.tobytes()).hexdigest()
    assert names(tmp_path / "init") == [f"{digest}.png"]
    with Image.open(tmp_path / "init" / f"{digest}.png") as saved_init:
        assert (np.asarray(saved_init) == np.asarray(init)).all()
    assert f"Init image hash: {digest}" in info["infotexts"][0]


def test_overlay_inpaint_off_returns_the_picture_as_sampled(server, tmp_path):
    init = init_picture()
    body = {**BASE, "init_images": [b64(init)], "mask": b64(square_mask()), "denoising_strength": 0.9,
            "mask_blur": 0, "save_images": False, "override_settings": {"overlay_inpaint": False}}
    (result,), _ = post(server, "img2img", body)
    outside = np.asarray(result)[:8].astype(int) - np.asarray(init)[:8].astype(int)
    assert np.abs(outside).max() > 0  # not pasted back: the sampled (VAE-decoded) pixels show there too


def test_upscaler_for_img2img_enlarges_the_init_image(server):
    """A smaller init image is enlarged with upscaler_for_img2img (A1111's resize_image), not Lanczos."""
    checks = Image.fromarray((np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8), "L").convert("RGB")
    body = {**BASE, "init_images": [b64(checks)], "denoising_strength": 0.0, "save_images": False}
    (lanczos,), _ = post(server, "img2img", body)
    (nearest,), _ = post(server, "img2img", {**body, "override_settings": {"upscaler_for_img2img": "Nearest"}})
    assert lanczos.size == nearest.size == (64, 64)
    assert not (np.asarray(lanczos) == np.asarray(nearest)).all()
    r = server.post("/sdapi/v1/img2img", json={**body, "override_settings": {"upscaler_for_img2img": "Sharpest"}})
    assert r.status_code == 422 and "upscaler_for_img2img" in r.text


# ----------------------------------------------------------------------------- Stable Diffusion

def test_comma_padding_backtrack(server, sd1):
    """A full 75-token chunk moves its tail after the last comma to the next chunk when the tail is
    at most comma_padding_backtrack tokens (A1111's 20); 0 never moves it. The picture follows."""
    from modules.core.conditioning import TextConditioner
    from modules.core.conditioning_options import ConditioningOptions

    prompt = "a " * 70 + ", b b b b b b b b"
    def chunks(backtrack: int) -> list:
        conditioner = TextConditioner(sd1, options=ConditioningOptions(comma_padding_backtrack=backtrack))
        return conditioner.chunker.chunks([(prompt, 1.0)])

    kept, moved, comma = chunks(0), chunks(20), TextConditioner(sd1).chunker.comma
    assert len(kept[0].tokens) == 75 and kept[0].tokens[-1] != comma  # 0: the full chunk just ends
    assert moved[0].tokens[-1] == comma and len(moved[0].tokens) < 75
    needed = 75 - (len(moved[0].tokens) - 1)  # the full chunk's length past its last comma
    assert len(chunks(needed)[0].tokens) == len(moved[0].tokens) and len(chunks(needed - 1)[0].tokens) == 75
    body = {**BASE, "prompt": prompt, "save_images": False}
    (default,), _ = post(server, "txt2img", body)
    (off,), _ = post(server, "txt2img", {**body, "override_settings": {"comma_padding_backtrack": 0}})
    assert not (np.asarray(default) == np.asarray(off)).all()


def test_sdxl_clip_l_skip(sdxl):
    """Off (A1111's default), SDXL ignores Clip skip: both encoders read their penultimate layer. On,
    CLIP-L reads the layer Clip skip names (2: the penultimate again; 1: the last); bigG is unchanged."""
    import torch

    from modules.core.conditioning import TextConditioner
    from modules.core.conditioning_options import ConditioningOptions

    def context(clip_skip: int, on: bool) -> torch.Tensor:
        conditioner = TextConditioner(sdxl, clip_skip=clip_skip, options=ConditioningOptions(sdxl_clip_l_skip=on))
        return conditioner.encode(["a red circle"], 64, 64)["context"]

    default = context(1, False)
    assert torch.equal(context(2, False), default)
    assert torch.allclose(context(2, True), default)
    width_l = sdxl.text_encoders[0].config.hidden_size  # the CLIP-L part comes first in the context
    last, third = context(1, True), context(3, True)
    for other in (last, third):
        assert not torch.allclose(other[..., :width_l], default[..., :width_l])
        assert torch.allclose(other[..., width_l:], default[..., width_l:])


# ------------------------------------------------------------- face restoration (a core-level check)

def test_save_images_before_face_restoration(sd1, tmp_path):
    """With a hook that restores faces (the face restorers' and the scripts' hooks say so), the
    picture is saved before it, with A1111's suffix; the restored one after."""
    from modules.core.job_hooks import JobHooks
    from modules.core.pipeline import GenerationSettings, generate
    from modules.core.types import GenerationRequest

    class Restorer(JobHooks):
        def restores_faces(self):
            return True

        def image_ready(self, batch, position, image):
            return Image.new("RGB", image.size, (0, 255, 0))  # "restored": all green

    settings = GenerationSettings(outdir_samples=tmp_path, save_to_dirs=False, samples_filename_pattern="[seed]",
                                  save_images_before_face_restoration=True)
    request = GenerationRequest(prompt="a face", steps=1, width=64, height=64, seed=9, sampler_name="Euler",
                                save_images=True)
    generate(request, sd1, settings, hooks=Restorer())
    assert names(tmp_path) == ["00000-9-before-face-restoration.png", "00001-9.png"]
    with Image.open(tmp_path / "00000-9-before-face-restoration.png") as before, \
            Image.open(tmp_path / "00001-9.png") as after:
        assert np.asarray(after.convert("RGB"))[..., 1].min() == 255 and np.asarray(after)[..., 0].max() == 0
        assert not (np.asarray(before.convert("RGB")) == np.asarray(after.convert("RGB"))).all()
        assert "Seed: 9" in before.info["parameters"]
    settings.save_images_before_face_restoration = False  # off: the restored picture only
    generate(request, sd1, settings, hooks=Restorer())
    assert names(tmp_path) == ["00000-9-before-face-restoration.png", "00001-9.png", "00002-9.png"]


def test_add_user_name_to_info_names_the_pages_user(tiny_checkpoints, tmp_path):
    """The UI's logged-in user (A1111's p.user) reaches the job: "User: NAME" closes the infotext
    when the option is on, and [user] names files; the API's jobs (no user) and the option off
    write none."""
    import webui
    from modules import cmd_args
    from modules.core.types import GenerationRequest
    from modules.ui import generation_tab

    opts = cmd_args.parse_args(["--data-dir", str(tmp_path / "data"), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--ckpt", str(tiny_checkpoints.sd1)], extra_preloads=[])
    engine = webui.build_engine(opts)
    request = GenerationRequest(prompt="a cup", steps=1, width=64, height=64, seed=4, sampler_name="Euler",
                                save_images=True)
    saving = {"outdir_samples": str(tmp_path / "out"), "save_to_dirs": False, "samples_filename_pattern": "[user]-[seed]"}
    on = engine.submit_txt2img(request, overrides={**saving, "add_user_name_to_info": True}, user="alice").result()
    assert on.infotexts[0].endswith(", User: alice")  # A1111: after Version
    assert [Path(x).name for x in on.paths] == ["00000-alice-4.png"]
    off = engine.submit_txt2img(request, overrides=saving, user="alice").result()
    assert "User:" not in off.infotexts[0]
    nobody = engine.submit_txt2img(request, overrides={**saving, "add_user_name_to_info": True}).result()
    assert "User:" not in nobody.infotexts[0]
    # the job settings the engine builds from the options (what the HTTP tests cannot see directly)
    settings = engine.settings_for(engine.resolve_checkpoint(None), "img2img", {
        "sdxl_clip_l_skip": True, "comma_padding_backtrack": 3, "overlay_inpaint": False,
        "upscaler_for_img2img": "Nearest", "save_init_img": True, "outdir_init_images": "in"}, user="carol")
    assert settings.conditioning.sdxl_clip_l_skip and settings.conditioning.comma_padding_backtrack == 3
    assert not settings.img2img.overlay and settings.img2img.upscaler == "Nearest"
    assert settings.outdir_init_images == engine.data_path / "in" and settings.user == "carol"
    assert engine.settings_for(engine.resolve_checkpoint(None), "txt2img", {"save_init_img": True}).outdir_init_images is None
    # the page's Generate hands its login to submit (thread by thread)
    generation_tab._page_user.name = "bob"
    assert generation_tab.GenerationTab.user_kw() == {"user": "bob"}
    generation_tab._page_user.name = None
    assert generation_tab.GenerationTab.user_kw() == {}


def test_samples_log_stdout_and_enable_console_prompts(server, tmp_path):
    prompt = f"a log line {time.time_ns()}"
    _, info = post(server, "txt2img", {**BASE, "prompt": prompt, "save_images": False,
                                       "override_settings": {"samples_log_stdout": True,
                                                             "enable_console_prompts": True}})
    # A1111 prints the prompt for its UI's jobs only (modules/txt2img.py), never for the API's
    assert not [line for line in server.output().splitlines() if line == f"txt2img: {prompt}"]
    deadline = time.monotonic() + 10
    while True:
        # (the progress bars' cursor moves may precede it: a log file is no terminal)
        lines = [line[line.index('{"prompt"'):] for line in re.split(r"[\r\n]+", server.output())
                 if '{"prompt"' in line and prompt in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(lines) == 1
    printed = json.loads(lines[0])
    assert printed["prompt"] == prompt and printed["all_seeds"] == [77]
    assert printed["infotexts"] == info["infotexts"]
    _, _ = post(server, "txt2img", {**BASE, "prompt": prompt + " quiet", "save_images": False})
    assert not [line for line in server.output().splitlines() if prompt + " quiet" in line]  # both off: silent


def test_save_button_zip_name_and_log_csv(tmp_path, monkeypatch):
    """The 🗃️ button's archive is named by grid_zip_filename_pattern (A1111's default
    "[datetime]_[[model_name]]_[seed]-[seed_last]"); save_write_log_csv off writes no log.csv."""
    from modules import paths_internal, shared
    from modules.ui_common import save_files

    monkeypatch.setattr(paths_internal, "data_path", str(tmp_path))
    monkeypatch.setitem(shared.opts.data, "outdir_save", str(tmp_path / "saved"))
    monkeypatch.setitem(shared.opts.data, "save_write_log_csv", False)
    monkeypatch.setitem(shared.opts.data, "save_selected_only", False)
    pictures = []
    for seed in (42, 43):
        pictures.append(tmp_path / f"in{seed}.png")
        Image.new("RGB", (16, 8), (seed, 2, 3)).save(pictures[-1])
    infos = [f"a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: {seed}, Size: 16x8" for seed in (42, 43)]
    js = json.dumps({"infotexts": infos, "index_of_first_image": 0, "batch_size": 2})
    monkeypatch.setitem(shared.opts.data, "grid_zip_filename_pattern", "cats-[seed]-[seed_last]-[prompt_words]")
    update, _ = save_files(js, [{"name": str(x)} for x in pictures], True, -1)
    archive = Path(update["value"][0])
    assert archive.name == "cats-42-43-a cat.zip"
    import zipfile
    with zipfile.ZipFile(archive) as z:
        assert len(z.namelist()) == 2
    assert not (tmp_path / "saved" / "log.csv").exists()
    monkeypatch.setitem(shared.opts.data, "grid_zip_filename_pattern", "")
    monkeypatch.setitem(shared.opts.data, "save_write_log_csv", True)
    update, _ = save_files(js, [{"name": str(x)} for x in pictures], True, -1)
    default = Path(update["value"][0]).name
    assert re.fullmatch(r"\d{14}_\[.*\]_42-43\.zip", default), default
    assert (tmp_path / "saved" / "log.csv").read_text().splitlines()[0].startswith("prompt,seed")


def test_grid_label_colors_and_font(monkeypatch):
    """A1111's images.draw_grid_annotations (X/Y/Z plot's and Prompt matrix's labels) in the
    grid_text_active_color / grid_text_inactive_color colours and the `font` option's font."""
    from modules import images, shared
    from modules.core.grid_labels import GridAnnotation

    def labelled() -> np.ndarray:
        grid = Image.new("RGB", (512, 256), "white")  # two 256 px cells: 20 px labels above them
        hor = [[GridAnnotation("active", True)], [GridAnnotation("inactive", False)]]
        return np.asarray(images.draw_grid_annotations(grid, 256, 256, hor, [[GridAnnotation()]]).convert("RGB"))

    monkeypatch.setitem(shared.opts.data, "grid_text_active_color", "#ff0000")
    monkeypatch.setitem(shared.opts.data, "grid_text_inactive_color", "#00ff00")
    monkeypatch.setitem(shared.opts.data, "font", "")
    band = labelled()
    red = (band[..., 0] > 200) & (band[..., 1] < 60) & (band[..., 2] < 60)
    green = (band[..., 1] > 200) & (band[..., 0] < 60) & (band[..., 2] < 60)
    assert red[:, :256].sum() > 10 and red[:, 256:].sum() == 0  # the active label, on the left
    assert green[:, 256:].sum() > 10 and green[:, :256].sum() == 0
    font = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if font.is_file():
        monkeypatch.setitem(shared.opts.data, "font", str(font))
        assert not (labelled() == band).all()


def test_the_options_have_a1111s_names_defaults_and_sections():
    from modules.services.options import Options

    o = Options(None)
    expected = {
        "save_images_before_face_restoration": (False, "saving-images"),
        "save_images_before_highres_fix": (False, "saving-images"),
        "save_images_before_color_correction": (False, "saving-images"),
        "save_mask": (False, "saving-images"), "save_mask_composite": (False, "saving-images"),
        "save_init_img": (False, "saving-images"), "save_incomplete_images": (False, "saving-images"),
        "outdir_init_images": ("outputs/init-images", "saving-paths"),
        "return_mask": (False, "img2img"), "return_mask_composite": (False, "img2img"),
        "overlay_inpaint": (True, "img2img"),
        "enable_pnginfo": (True, "infotext"), "disable_weights_auto_swap": (True, "infotext"),
        "add_user_name_to_info": (False, "infotext"), "samples_log_stdout": (False, "system"),
        "enable_console_prompts": (False, "system"),
        "save_write_log_csv": (True, "saving-images"), "grid_zip_filename_pattern": ("", "saving-images"),
        "comma_padding_backtrack": (20, "sd"), "upscaler_for_img2img": (None, "upscaling"),
        "sdxl_clip_l_skip": (False, "sd"), "font": ("", "saving-images"),
        "grid_text_active_color": ("#000000", "saving-images"), "grid_text_inactive_color": ("#999999", "saving-images"),
    }
    for key, (default, section) in expected.items():
        assert (o.defs[key].default, o.defs[key].section_id) == (default, section), key
    assert o.defs["outdir_init_images"].restrict  # A1111's restricted_opts: --hide-ui-dir-config locks it

