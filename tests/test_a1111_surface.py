"""A1111's module surface as popular extensions import it (issue 18): every name their import lines
ask for resolves to a working object over Easel's own code.

A fixture extension (tests/fixtures/extensions/a1111_surface) imports the modules the way
sd-dynamic-prompts, tagcomplete, images-browser, regional prompter and ADetailer do and registers an
extra-network type; a real engine runs a job with it. The rest are unit checks of each shim against
A1111's documented behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.test_extensions import FIXTURES

SURFACE = FIXTURES / "a1111_surface"


# ---- the shims on their own --------------------------------------------------------------------

def test_prompt_parser_gives_a1111_shapes():
    from modules import prompt_parser

    assert prompt_parser.get_learned_conditioning_prompt_schedules(["a [b:c:2]", "plain"], 4) == [
        [[2, "a b"], [4, "a c"]], [[4, "plain"]]]
    # hires: the timeline goes on from the first pass (1.5 is half-way through the second pass)
    assert prompt_parser.get_learned_conditioning_prompt_schedules(["[x:y:1.5]"], 10, 4) == [[[2, "x"], [4, "y"]]]
    assert prompt_parser.parse_prompt_attention("a (b:1.5) [c]") == [["a ", 1.0], ["b", 1.5], [" ", 1.0], ["c", 1 / 1.1]]
    indexes, flat, _ = prompt_parser.get_multicond_prompt_list(["cat AND dog :0.5"])
    assert flat == ["cat", " dog"] and indexes == [[(0, 1.0), (1, 0.5)]]
    assert prompt_parser.re_AND.split("a AND b") == ["a ", " b"]
    cond = prompt_parser.SdConditioning(["x"], is_negative_prompt=True, width=64, height=32)
    assert list(cond) == ["x"] and cond.is_negative_prompt and (cond.width, cond.height) == (64, 32)
    sched = [[prompt_parser.ScheduledPromptConditioning(2, torch.zeros(2, 3)),
              prompt_parser.ScheduledPromptConditioning(4, torch.ones(2, 3))]]
    assert prompt_parser.reconstruct_cond_batch(sched, 1).sum() == 0
    assert prompt_parser.reconstruct_cond_batch(sched, 3).sum() == 6
    with pytest.raises(NotImplementedError, match="encoded by the core"):
        prompt_parser.get_learned_conditioning(None, ["x"], 4)


def test_extra_networks_parse_and_registered_types_are_called_and_credited(capsys):
    from modules import extra_networks

    text, data = extra_networks.parse_prompt("a <lora:x:0.5> b <probe:one:te=2>")
    assert text == "a  b " and sorted(data) == ["lora", "probe"]
    assert data["probe"][0].items == ["one", "te=2"] and data["probe"][0].positional == ["one"]
    assert data["probe"][0].named == {"te": "2"}

    calls = []

    class Probe(extra_networks.ExtraNetwork):
        def activate(self, p, params_list):
            calls.append(("activate", self.name, [x.items for x in params_list]))

        def deactivate(self, p):
            raise RuntimeError("broken deactivate")

    saved = dict(extra_networks.extra_network_registry)
    try:
        extra_networks.register_extra_network(Probe("probe"))
        extra_networks.register_extra_network(Probe("unused"))
        extra_networks.register_extra_network(Probe("lora"))  # Easel's engine applies LoRA itself
        extra_networks.activate(None, data, builtin=False)
        assert calls == [("activate", "probe", [["one", "te=2"]]), ("activate", "unused", [])]
        extra_networks.deactivate(None, data, builtin=False)  # a failure is reported, never raised
        assert "deactivating extra network probe" in capsys.readouterr().err
    finally:
        extra_networks.extra_network_registry.clear()
        extra_networks.extra_network_registry.update(saved)


def test_create_binary_mask_and_masking():
    from modules import masking
    from modules.processing import create_binary_mask

    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 0, 0, 200))
    rgba.putpixel((2, 2), (0, 0, 0, 100))
    mask = create_binary_mask(rgba)
    assert mask.mode == "L" and mask.getpixel((1, 1)) == 255 and mask.getpixel((2, 2)) == 0
    assert create_binary_mask(rgba, round=False).getpixel((2, 2)) == 100
    grey = Image.new("RGB", (8, 8), (100, 100, 100))
    assert create_binary_mask(grey).getpixel((0, 0)) == 100  # no alpha: the grey values as they are

    m = Image.new("L", (64, 64))
    m.paste(255, (10, 20, 30, 40))
    assert masking.get_crop_region(m, 4) == (6, 16, 34, 44)
    assert masking.get_crop_region(__import__("numpy").array(m)) == (10, 20, 30, 40)
    assert masking.get_crop_region_v2(Image.new("L", (64, 64))) is None
    assert masking.get_crop_region(Image.new("L", (64, 64))) == (64, 64, 0, 0)  # A1111's empty-mask box
    assert masking.expand_crop_region((10, 20, 30, 40), 512, 256, 64, 64) == (0, 20, 40, 40)
    filled = masking.fill(Image.new("RGB", (32, 32), (200, 0, 0)), m.resize((32, 32)))
    assert filled.mode == "RGB" and filled.getpixel((10, 15))[0] > 150


def test_schedulers_rng_approx_and_safe():
    from modules import rng, safe, sd_samplers_common, sd_schedulers, sd_vae_approx

    labels = [s.label for s in sd_schedulers.schedulers]
    assert labels[:3] == ["Automatic", "Uniform", "Karras"] and "Align Your Steps" in labels
    karras = sd_schedulers.schedulers_map["karras"]
    assert karras is sd_schedulers.schedulers_map["Karras"] and karras.default_rho == 7.0
    sigmas = karras.function(5, 0.03, 14.6)
    assert sigmas.shape == (6,) and float(sigmas[0]) == pytest.approx(14.6) and float(sigmas[-1]) == 0

    noise = rng.ImageRNG((4, 8, 8), [1, 2]).first()
    assert noise.shape == (2, 4, 8, 8)
    assert torch.equal(noise[0].cpu(), rng.randn(1, (4, 8, 8)).cpu())  # image i from seed i alone
    assert not torch.equal(noise[0], noise[1])

    rgb = sd_vae_approx.cheap_approximation(torch.ones(2, 4, 8, 8))
    assert rgb.shape == (2, 3, 8, 8)
    assert sd_samplers_common.approximation_indexes["Approx cheap"] == 2
    assert safe.unsafe_torch_load is torch.load or callable(safe.unsafe_torch_load)


def test_save_files_writes_the_gallery_with_infotexts_and_log(tmp_path, monkeypatch):
    from modules import images, paths_internal, shared
    from modules.ui_common import save_files

    monkeypatch.setattr(paths_internal, "data_path", str(tmp_path))
    monkeypatch.setitem(shared.opts.data, "outdir_save", str(tmp_path / "saved"))
    picture = tmp_path / "in.png"
    Image.new("RGB", (16, 8), (1, 2, 3)).save(picture)
    info = "a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 16x8"
    js = json.dumps({"infotexts": [info], "index_of_first_image": 0, "sd_model_name": "m"})
    update, message = save_files(js, [{"name": str(picture)}], False, 0)
    saved = [Path(f) for f in update["value"]]
    assert update["visible"] and saved and saved[0].parent == tmp_path / "saved"
    assert message == f"<p>Saved: {saved[0].name}</p>"
    assert images.read_info_from_image(Image.open(saved[0]))[0] == info
    log_rows = (tmp_path / "saved" / "log.csv").read_text().splitlines()
    assert log_rows[0].startswith("prompt,seed") and log_rows[1].startswith("a cat,42,16,8,Euler")


def test_upscaler_objects_behind_sd_upscalers():
    from modules import shared

    shared.sd_upscalers[:] = shared._upscalers()
    lanczos = next(u for u in shared.sd_upscalers if u.name == "Lanczos")
    out = lanczos.scaler.upscale(Image.new("RGB", (50, 30)), 2, lanczos.data_path)
    assert out.size == (96, 56)  # A1111: scale times the size, down to a multiple of 8
    none = next(u for u in shared.sd_upscalers if u.name == "None")
    assert none.scaler.upscale(Image.new("RGB", (50, 30)), 2, None).size == (96, 56)


def test_other_names_extensions_read():
    from modules import extras, lowvram, modelloader, shared, shared_items, sd_hijack

    assert shared.mem_mon.read() is not None and hasattr(shared.mem_mon, "stop")
    assert shared.log.name == "sd" and shared.batch_cond_uncond is True
    assert shared_items.sd_vae_items()[:2] == ["Automatic", "None"]
    assert lowvram.is_enabled(None) is False
    assert extras.run_pnginfo(None) == ("", "", "")
    picture = Image.new("RGB", (4, 4))
    picture.info["parameters"] = "x"
    assert extras.run_pnginfo(picture)[1] == "x"
    assert sd_hijack.model_hijack.embedding_db.word_embeddings == {}  # no server: no embeddings
    with pytest.raises(FileNotFoundError, match="offline"):
        modelloader.load_file_from_url("https://example.invalid/x.pth", model_dir="/tmp/easel-none")


# ---- a real engine with the fixture extension ----------------------------------------------------

@pytest.fixture(scope="module")
def surface_engine(tiny_checkpoints, tmp_path_factory):
    import webui
    from modules import cmd_args, extensions, scripts, shared

    data = tmp_path_factory.mktemp("surface-data")
    (data / "embeddings").mkdir()
    from tests.fixtures.tiny_embeddings import write_a1111_pt

    write_a1111_pt(data / "embeddings" / "probe-emb.pt", torch.zeros(1, 64))
    write_probe_lora(data / "models" / "Lora", tiny_checkpoints.sd1)
    opts = cmd_args.parse_args(["--data-dir", str(data), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--ckpt", str(tiny_checkpoints.sd1)], extra_preloads=[])
    engine = webui.build_engine(opts)
    saved = list(extensions.extensions)
    surface = extensions.Extension("a1111_surface", str(SURFACE))
    extensions.extensions[:] = [surface]
    shared.bind(engine, opts)
    scripts.load_scripts(extension_list=[surface])
    assert not [e for e in scripts.load_errors if "a1111_surface" in e[0]], scripts.load_errors
    yield engine
    extensions.extensions[:] = saved
    from modules import extra_networks

    extra_networks.extra_network_registry.pop("probe", None)


def write_probe_lora(folder, checkpoint) -> None:
    """A LoRA for the tiny SD1 (one attention projection) as models/Lora/probe-lora.safetensors."""
    from modules.core.devices import choose_policy
    from modules.core.model_loader import load_checkpoint
    from tests.fixtures.tiny_loras import _K, RANK, _T, _tensors, _write, module_of

    shape = tuple(module_of(load_checkpoint(checkpoint, choose_policy(precision="full")[0]), "unet",
                            f"{_T}.attn1.to_q").weight.shape)
    folder.mkdir(parents=True)
    _write(folder / "probe-lora.safetensors",
           _tensors(torch.Generator().manual_seed(1), f"{_K}_attn1_to_q", "lora", shape, {}, float(RANK)))


def test_a_job_activates_the_extensions_network_and_sees_embeddings(surface_engine, tmp_path, monkeypatch):
    from modules import processing, scripts
    from modules import sd_hijack

    log = tmp_path / "surface.jsonl"
    monkeypatch.setenv("EASEL_SURFACE_LOG", str(log))
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a [red:blue:2] cat <probe:x:te=0.5> <lora:probe-lora:0.7>",
                                                    steps=3, width=64,
                                                    height=64, seed=1, do_not_save_samples=True,
                                                    do_not_save_grid=True)
    p.scripts = scripts.scripts_txt2img
    p.script_args = [None] * 200
    processed = processing.process_images(p)
    assert len(processed.images) == 1
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    events = [e["event"] for e in entries]
    assert events == ["activate", "process_batch", "deactivate"], entries
    assert entries[0]["items"] == [["x", "te=0.5"]]
    batch = entries[1]
    # process_batch sees the prompts without their tags, as in A1111
    assert batch["schedules"] == [[[2, "a red cat  "], [3, "a blue cat  "]]]
    assert batch["networks"] == []
    assert entries[0]["prompts"] == ["a [red:blue:2] cat <probe:x:te=0.5> <lora:probe-lora:0.7>"]
    assert "probe-emb" in sd_hijack.model_hijack.embedding_db.word_embeddings
    assert batch["words"] == ["probe-emb"]
    # A1111's built-in Lora modules (extensions-builtin/Lora): the files, and the batch's LoRA with its weights
    assert batch["available"] == ["probe-lora"]
    assert batch["loaded"] == [["probe-lora", 0.7, 0.7]]
    # the UNet as LDM's diffusion_model with CrossAttention modules, the text encoder's A1111 chunking
    assert batch["cross_attention"] > 0
    assert batch["tokens"] == [77, [77, 77], [49406, 320, 2368, 49407]]  # "a cat" BREAK "a dog": 75 + 2
