"""A third batch of A1111 1.10's options (issue 13), each checked where A1111 applies it: the Extras
files' names, the model lists (hidden folders, the built-in Real-ESRGAN/DAT names), the VAE a
checkpoint gets, the console (prompts of UI jobs, --enable-console-prompts, the progress bars, the
embeddings' list). The page's options: tests/test_options_a1111_batch3_ui.py.

Sections touched here: "Saving images/grids" (use_original_name_batch, use_upscaler_name_as_suffix),
"Upscaling" (realesrgan_enabled_models, dat_enabled_models, set_scale_by_when_changing_upscaler),
"System" (list_hidden_files, multiple_tqdm, enable_console_prompts' default), "VAE"
(sd_vae_overrides_per_model_preferences), "Extra Networks" (textual_inversion_print_at_load). The
first test checks every option of the batch, the page's too, through /sdapi/v1/options.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from modules import postprocessing, shared
from modules.core import upscaler_models, upscaling
from modules.services import extras
from modules.services.checkpoints import CheckpointRegistry, HashCache
from modules.services.hypernetworks import HypernetworkRegistry
from modules.services.options import Options, default_definitions
from modules.services.upscalers import ModelUpscalers, folders_for
from modules.services.vaes import VaeRegistry
from scripts.postprocessing_upscale import ScriptPostprocessingUpscale
from tests.test_postprocessing_scripts import runner_of, stand_in_engine

upscaler_models.spandrel_module()  # spandrel, importable without torchvision
from spandrel.architectures.DAT import DAT  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402

NEW = {  # key: (A1111's default, a value it refuses)
    "use_original_name_batch": (True, "yes"),
    "use_upscaler_name_as_suffix": (False, 1),
    "realesrgan_enabled_models": (["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"], ["R-ESRGAN 9x"]),
    "dat_enabled_models": (["DAT x2", "DAT x3", "DAT x4"], "DAT x2"),
    "list_hidden_files": (True, "no"),
    "sd_vae_overrides_per_model_preferences": (True, None),
    "send_size": (True, "no"),
    "do_not_show_images": (False, 0),
    "img2img_batch_show_results_limit": (32, -2),
    "textual_inversion_print_at_load": (False, "on"),
    "extra_networks_card_width": (0, -1),
    "extra_networks_card_height": (0, "tall"),
    "extra_networks_card_text_scale": (1.0, 2.5),
    "extra_networks_card_show_desc": (True, "no"),
    "extra_networks_card_description_is_html": (False, 1),
    "extra_networks_add_text_separator": (" ", 3),
    "set_scale_by_when_changing_upscaler": (False, "yes"),
    "gallery_height": ("", 768),
    "img2img_editor_height": (720, 40),
    "img2img_sketch_default_brush_color": ("#ffffff", 5),
    "img2img_inpaint_mask_brush_color": ("#ffffff", None),
    "img2img_inpaint_sketch_default_brush_color": ("#ffffff", ["#000000"]),
    "include_styles_into_token_counters": (True, "yes"),
    "sd_checkpoint_dropdown_use_short": (False, "short"),
    "multiple_tqdm": (True, "2"),
    "disable_token_counters": (False, "off"),
}


def picture(width=12, height=8) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.dstack([x * 20, y * 30, x * 0 + 90]).astype(np.uint8), "RGB")


# ------------------------------------------------------------------------------- through the API

def assert_defaults_and_refusals(server, new: dict) -> dict:
    """Each of ``new`` ({key: (A1111's default, a bad value)}) is listed with its default, and the bad
    value is a 422 naming the key that changes nothing; {key: its section id}."""
    values = server.get("/sdapi/v1/options").json()
    for key, (default, bad) in new.items():
        assert values[key] == default, key
        r = server.post("/sdapi/v1/options", json={key: bad})
        assert r.status_code == 422 and key in r.text, (key, r.status_code, r.text)
    assert server.get("/sdapi/v1/options").json() == values  # nothing changed
    return {k: Options(None).defs[k].section_id for k in new}


def test_the_api_lists_each_option_with_a1111s_default_and_refuses_a_bad_value(server):
    sections = assert_defaults_and_refusals(server, NEW)
    assert sections == {"use_original_name_batch": "saving-images", "use_upscaler_name_as_suffix": "saving-images",
                        "realesrgan_enabled_models": "upscaling", "dat_enabled_models": "upscaling",
                        "set_scale_by_when_changing_upscaler": "upscaling",
                        "list_hidden_files": "system", "multiple_tqdm": "system", "sd_vae_overrides_per_model_preferences": "sd",
                        "send_size": "ui", "do_not_show_images": "ui_gallery", "gallery_height": "ui_gallery",
                        "include_styles_into_token_counters": "ui_prompt_editing",
                        "disable_token_counters": "ui_prompt_editing",
                        "sd_checkpoint_dropdown_use_short": "ui_alternatives",
                        **{k: "img2img" for k in NEW if k.startswith("img2img_")},
                        "textual_inversion_print_at_load": "extra_networks",
                        **{k: "extra_networks" for k in NEW if k.startswith("extra_networks_")}}


def test_list_hidden_files_off_leaves_a_checkpoint_in_a_dot_folder_out_of_sd_models(server, tiny_checkpoints):
    hidden = tiny_checkpoints.checkpoints_dir / ".stash" / "hidden-copy.safetensors"
    hidden.parent.mkdir(exist_ok=True)
    shutil.copyfile(tiny_checkpoints.sd1, hidden)

    def listed() -> list[str]:
        server.post("/sdapi/v1/refresh-checkpoints")
        return [m["model_name"] for m in server.get("/sdapi/v1/sd-models").json()]

    try:
        assert any("hidden-copy" in name for name in listed())  # A1111's default: listed
        assert server.post("/sdapi/v1/options", json={"list_hidden_files": False}).status_code == 200
        names = listed()
        assert names and not any("hidden-copy" in name for name in names)
    finally:
        server.post("/sdapi/v1/options", json={"list_hidden_files": True})
        shutil.rmtree(hidden.parent)
        server.post("/sdapi/v1/refresh-checkpoints")


def test_console_prompts_are_printed_for_ui_jobs_only_not_for_the_api(server):
    prompt = f"an api prompt {time.time_ns()}"
    r = server.post("/sdapi/v1/txt2img", json={"prompt": prompt, "width": 64, "height": 64, "steps": 1,
                                               "sampler_name": "Euler", "save_images": False,
                                               "override_settings": {"enable_console_prompts": True}})
    assert r.status_code == 200, r.text
    assert not [line for line in server.output().splitlines() if prompt in line]  # A1111's API prints none


# ------------------------------------------------------------------------- the composition root

@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_checkpoints):
    """A real engine built by webui.build_engine with --enable-console-prompts."""
    import webui
    from modules import cmd_args

    data = tmp_path_factory.mktemp("batch3-data")
    opts = cmd_args.parse_args(["--data-dir", str(data), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--enable-console-prompts"], extra_preloads=[])
    return webui.build_engine(opts)


def test_enable_console_prompts_flag_is_the_options_default_and_a_saved_value_wins(engine, tmp_path):
    assert engine.options.get("enable_console_prompts") is True
    assert engine.options.defs["enable_console_prompts"].default is True
    assert Options(None).get("enable_console_prompts") is False  # without the flag
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"enable_console_prompts": False}), encoding="utf-8")
    assert Options(config, default_definitions(enable_console_prompts=True)).get("enable_console_prompts") is False


def test_a_ui_job_prints_its_prompt_an_api_style_job_does_not(engine, capsys):
    from modules.core.types import GenerationRequest

    request = GenerationRequest(prompt="a console cube", width=64, height=64, steps=1, seed=3, save_images=False)
    engine.submit_txt2img(request, console_prompt=True).result()
    assert "txt2img: a console cube" in capsys.readouterr().out.splitlines()
    engine.submit_txt2img(request).result()  # the API's call: no console_prompt
    assert "a console cube" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------ the Extras

def run_upscale(engine, images, monkeypatch, suffix: bool, second: str = "None", visibility: float = 0.0):
    monkeypatch.setitem(shared.opts.data, "use_upscaler_name_as_suffix", suffix)
    runner = runner_of(ScriptPostprocessingUpscale)
    args = runner.create_args_for_run({"Upscale": {
        "upscale_enabled": True, "upscale_mode": 0, "upscale_by": 2, "max_side_length": 0, "upscale_to_width": 64,
        "upscale_to_height": 64, "upscale_crop": True, "upscaler_1_name": "Nearest", "upscaler_2_name": second,
        "upscaler_2_visibility": visibility}})
    return extras.submit(engine, images, postprocessing.ScriptsPostprocessor(args, runner)).result()


def test_use_upscaler_name_as_suffix_names_the_upscalers_in_the_file_name(tmp_path, monkeypatch):
    engine = stand_in_engine(tmp_path)
    [plain] = run_upscale(engine, [("", picture())], monkeypatch, suffix=False)
    [named] = run_upscale(engine, [("", picture())], monkeypatch, suffix=True)
    [both] = run_upscale(engine, [("", picture())], monkeypatch, suffix=True, second="Lanczos", visibility=0.5)
    paths = extras.save(engine, [plain, named, both], tmp_path / "out")
    assert [p.name for p in paths] == ["00000.png", "00001-Nearest.png", "00002-Nearest-Lanczos 0.5.png"]
    assert Image.open(paths[1]).size == (24, 16)


def test_use_original_name_batch_names_a_batchs_files_after_their_inputs(tmp_path, monkeypatch):
    images = [("photos/cat.png", picture()), ("dog.final.jpg", picture(16, 8))]
    on = stand_in_engine(tmp_path, use_original_name_batch=True)
    results = run_upscale(on, images, monkeypatch, suffix=True)
    paths = extras.save(on, results, tmp_path / "on", batch=True)
    assert [p.name for p in paths] == ["cat-Nearest.png", "dog.final-Nearest.png"]
    assert [Image.open(p).size for p in paths] == [(24, 16), (32, 16)]
    again = extras.save(on, results[:1], tmp_path / "on", batch=True)  # A1111: the file is replaced
    assert again == paths[:1] and sorted(p.name for p in (tmp_path / "on").iterdir()) == \
        ["cat-Nearest.png", "dog.final-Nearest.png"]
    keep = stand_in_engine(tmp_path, use_original_name_batch=True, save_images_replace_action="Add number suffix")
    assert extras.save(keep, results[:1], tmp_path / "on", batch=True)[0].name == "cat-Nearest-1.png"
    assert [p.name for p in extras.save(on, results, tmp_path / "single")] == \
        ["00000-Nearest.png", "00001-Nearest.png"]  # one picture (not a batch): numbered, as A1111
    off = stand_in_engine(tmp_path, use_original_name_batch=False)
    assert [p.name for p in extras.save(off, results, tmp_path / "off", batch=True)] == \
        ["00000-Nearest.png", "00001-Nearest.png"]


def test_the_extras_tab_batch_upload_is_saved_under_the_uploads_names(engine, tmp_path):
    from modules.ui.extras_tab import ExtrasTab

    tab = ExtrasTab(engine)
    uploads = []
    for name in ("first.png", "second.png"):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "a cat\nSteps: 3, Seed: 1")
        picture().save(tmp_path / name, pnginfo=info)
        uploads.append({"path": str(tmp_path / name), "orig_name": name})
    folder = engine.data_path / "outputs" / "extras-images"
    before = set(folder.glob("*")) if folder.is_dir() else set()
    tab.run(1, None, uploads, False, 2.0, 64, 64, True, "Nearest", "None", 0.0, "", "", True)
    assert sorted(p.name for p in set(folder.glob("*")) - before) == ["first.png", "second.png"]
    assert Image.open(folder / "first.png").info["parameters"] == "a cat\nSteps: 3, Seed: 1"


# ---------------------------------------------------------------------------------- model lists

def tiny_upscalers(models: Path) -> None:
    torch.manual_seed(0)
    files = {models / "RealESRGAN" / "RealESRGAN_x4plus.pth": ESRGAN(num_filters=8, num_blocks=1, scale=4),
             models / "RealESRGAN" / "RealESRGAN_x2plus.pth": ESRGAN(num_filters=8, num_blocks=1, scale=2),
             models / "RealESRGAN" / "my-own-x2.pth": ESRGAN(num_filters=8, num_blocks=1, scale=2),
             models / "DAT" / "DAT_x2.pth": DAT(img_size=16, embed_dim=16, split_size=[2, 4], depth=[1], num_heads=[2],
                                                upscale=2, expansion_factor=2.0),
             models / "ESRGAN" / ".old" / "4x-Hidden.pth": ESRGAN(num_filters=8, num_blocks=1, scale=4)}
    for path, model in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)


def test_enabled_models_and_hidden_folders_decide_the_upscaler_rows(tmp_path):
    tiny_upscalers(tmp_path / "models")
    options = Options(None)
    service = ModelUpscalers(folders_for(object(), tmp_path / "models"), options, log=lambda _: None)
    try:
        def rows() -> set[str]:
            service.refresh()
            return {u.name for u in upscaling.model_upscalers()}

        # A1111's defaults: R-ESRGAN 4x+ and every DAT; a file under a name of its own is always listed
        assert rows() == {"R-ESRGAN 4x+", "my-own-x2", "DAT x2", "4x-Hidden"}
        options.set("realesrgan_enabled_models", ["R-ESRGAN 2x+"])
        options.set("dat_enabled_models", [])
        assert rows() == {"R-ESRGAN 2x+", "my-own-x2", "4x-Hidden"}
        assert {f.name for f in service.realesrgan_models()} == {"R-ESRGAN 4x+", "R-ESRGAN 2x+", "my-own-x2"}
        with pytest.raises(ValueError, match="DAT x2"):  # a row no longer there cannot run
            upscaling.get("DAT x2")
        options.set("list_hidden_files", False)
        assert rows() == {"R-ESRGAN 2x+", "my-own-x2"}
    finally:
        upscaling.set_model_upscalers([])


def test_list_hidden_files_decides_the_checkpoint_and_hypernetwork_lists(tmp_path):
    (tmp_path / "ckpt" / ".trash").mkdir(parents=True)
    (tmp_path / "ckpt" / "sub").mkdir()
    for name in ("top.safetensors", ".trash/old.safetensors", "sub/kept.safetensors"):
        (tmp_path / "ckpt" / name).write_bytes(b"\0" * 16)
    (tmp_path / "hn" / ".cache").mkdir(parents=True)
    for name in ("style.pt", ".cache/old.pt"):
        (tmp_path / "hn" / name).write_bytes(b"\0" * 16)
    shown = {"value": True}
    checkpoints = CheckpointRegistry([tmp_path / "ckpt"], HashCache(tmp_path / "cache.json"),
                                     show_hidden=lambda: shown["value"])
    hypernetworks = HypernetworkRegistry([tmp_path / "hn"], show_hidden=lambda: shown["value"])
    assert sorted(i.name for i in checkpoints.refresh()) == [".trash/old.safetensors", "sub/kept.safetensors",
                                                            "top.safetensors"]
    assert sorted(hypernetworks.items()) == ["old", "style"]
    assert sorted(Path(p).name for p in shared.walk_files(str(tmp_path / "hn"))) == ["old.pt", "style.pt"]
    shown["value"] = False
    assert sorted(i.name for i in checkpoints.refresh()) == ["sub/kept.safetensors", "top.safetensors"]
    assert sorted(hypernetworks.items()) == ["style"]


def test_walk_files_follows_list_hidden_files(tmp_path, monkeypatch):
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "a.pth").write_bytes(b"x")
    (tmp_path / "b.pth").write_bytes(b"x")
    monkeypatch.setitem(shared.opts.data, "list_hidden_files", False)
    assert [Path(p).name for p in shared.walk_files(str(tmp_path), [".pth"])] == ["b.pth"]
    monkeypatch.setitem(shared.opts.data, "list_hidden_files", True)
    assert sorted(Path(p).name for p in shared.walk_files(str(tmp_path), [".pth"])) == ["a.pth", "b.pth"]


# ------------------------------------------------------------------------------------------- VAE

def test_sd_vae_overrides_per_model_preferences_orders_setting_metadata_and_near_vae(tmp_path):
    from modules.services.engine import Engine

    vae_dir, ckpt_dir = tmp_path / "VAE", tmp_path / "ckpt"
    vae_dir.mkdir()
    ckpt_dir.mkdir()
    for name in ("chosen.safetensors", "preferred.safetensors", "model.vae.safetensors"):
        (vae_dir / name).write_bytes(b"\0" * 16)
    checkpoint = ckpt_dir / "model.safetensors"
    checkpoint.write_bytes(b"\0" * 16)
    metadata = ckpt_dir / "model.json"
    metadata.write_text(json.dumps({"vae": "preferred.safetensors"}), encoding="utf-8")
    vaes = VaeRegistry([vae_dir], [ckpt_dir])
    options = Options(None)
    options.defs["sd_vae"].choices = vaes.choices
    host = SimpleNamespace(vaes=vaes, options=options, vae_path=None)
    info = SimpleNamespace(filename=checkpoint)

    def chosen(overrides=None) -> str | None:
        found = Engine.vae_file(host, info, None, overrides)
        return found.name if found else None

    options.set("sd_vae", "chosen.safetensors")
    assert chosen() == "chosen.safetensors"  # A1111's default: the setting wins
    options.set("sd_vae_overrides_per_model_preferences", False)
    assert chosen() == "preferred.safetensors"  # the checkpoint's user metadata
    assert chosen({"sd_vae_overrides_per_model_preferences": True}) == "chosen.safetensors"  # a job's override
    metadata.write_text(json.dumps({"vae": "None"}), encoding="utf-8")
    time.sleep(0.01)
    assert chosen() is None  # "None" in the metadata: the checkpoint's own VAE
    metadata.unlink()
    assert chosen() == "model.vae.safetensors"  # then the VAE named like the checkpoint
    options.set("sd_vae_overrides_per_model_preferences", True)
    options.set("sd_vae", "Automatic")
    metadata.write_text(json.dumps({"vae": "preferred.safetensors"}), encoding="utf-8")
    assert chosen() == "preferred.safetensors"  # "Automatic" asks the checkpoint whatever the option
    options.set("sd_vae", "None")
    assert chosen() is None


def test_textual_inversion_print_at_load_prints_the_embeddings_once_per_change(engine, capsys):
    from modules.core.types import GenerationRequest

    request = GenerationRequest(prompt="an embedding cube", width=64, height=64, steps=1, seed=7, save_images=False)
    engine.submit_txt2img(request).result()
    assert "Textual inversion embeddings" not in capsys.readouterr().out  # A1111's default: silent
    engine.options.set("textual_inversion_print_at_load", True)
    try:
        engine.submit_txt2img(request).result()
        loaded = engine.embeddings.loaded
        assert f"Textual inversion embeddings loaded({len(loaded)}): {', '.join(loaded)}" in \
            capsys.readouterr().out.splitlines()
        engine.submit_txt2img(request).result()
        assert "Textual inversion embeddings" not in capsys.readouterr().out  # nothing changed: not again
    finally:
        engine.options.set("textual_inversion_print_at_load", False)


def test_set_scale_by_when_changing_upscaler_takes_the_scale_from_the_name(monkeypatch):
    import gradio as gr

    from scripts.postprocessing_upscale import scale_for_upscaler

    assert scale_for_upscaler("4x-Tiny") == gr.update()  # A1111's default: Resize stays
    monkeypatch.setitem(shared.opts.data, "set_scale_by_when_changing_upscaler", True)
    assert scale_for_upscaler("4x-Tiny") == gr.update(value=4)
    assert scale_for_upscaler("DAT x3") == gr.update(value=3)
    assert scale_for_upscaler("R-ESRGAN 2x+") == gr.update(value=2)
    assert scale_for_upscaler("Lanczos") == gr.update()  # no scale in the name


def test_multiple_tqdm_adds_the_total_progress_bar_on_the_console():
    import io

    from modules.services.console_progress import ConsoleProgress

    def printed(total_bar: bool) -> str:
        out = io.StringIO()
        console = ConsoleProgress(out, total_bar=lambda: total_bar)
        console.begin_batch(0, 2, 3)
        for step in range(3):
            console.step(step, 3)
        console.end()
        return out.getvalue()

    both = printed(True)
    assert "Total progress" in both and "3/3" in both  # A1111's default: the job's bar too
    steps_only = printed(False)
    assert "Total progress" not in steps_only and "3/3" in steps_only
