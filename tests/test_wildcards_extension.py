"""A wildcard extension written to A1111's documented API (tests/fixtures/extensions/wildcards: an
AlwaysVisible script replacing `__name__` in p.all_prompts from wildcards/name.txt in its own folder,
seeded per picture, the prompt as written in extra_generation_params["Wildcard prompt"], an option
from on_ui_settings) working unmodified: over real HTTP (installed in the data dir's extensions/),
in the PNGs it saves, and in-process through modules.processing.process_images and the engine."""

from __future__ import annotations

import datetime
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.core.infotext import parse_infotext

from tests.api_common import BASE, decode

EXTENSION = Path(__file__).parent / "fixtures" / "extensions" / "wildcards"
COLORS = ["red", "green", "blue", "yellow"]  # wildcards/color.txt without its comment and blank lines
ANIMALS = ["cat", "dog"]
WRITTEN = "a __color__ __animal__ on a __nope__ table"  # __nope__ has no file: it stays


def expected(seed: int) -> str:
    """What the extension promises: one generator per picture, seeded with the picture's seed,
    drawing the wildcards left to right."""
    gen = random.Random(seed)
    return f"a {gen.choice(COLORS)} {gen.choice(ANIMALS)} on a __nope__ table"


@pytest.fixture(scope="module")
def wildcard_server(tiny_checkpoints, tmp_path_factory):
    """A server whose data dir holds the extension in extensions/wildcards, as a user installs it."""
    from tests.server import run_server

    data = tmp_path_factory.mktemp("wildcards-data")
    shutil.copytree(EXTENSION, data / "extensions" / "wildcards")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--ckpt", str(tiny_checkpoints.sd1)) as srv:
        yield srv


def txt2img(srv, body: dict) -> tuple[list[Image.Image], dict]:
    r = srv.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return [decode(s) for s in data["images"]], json.loads(data["info"])


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_api_pictures_are_made_from_the_replaced_prompts_and_say_so(wildcard_server):
    body = {**BASE, "steps": 1, "prompt": WRITTEN, "seed": 100, "batch_size": 2, "n_iter": 2}
    images, info = txt2img(wildcard_server, body)

    wanted = [expected(100 + i) for i in range(4)]
    assert info["all_prompts"] == wanted and info["all_seeds"] == [100, 101, 102, 103]
    assert len(set(wanted)) > 1  # the fixture's seeds really pick different words
    for text, prompt in zip(info["infotexts"], wanted):
        assert text.split("\n")[0] == prompt
        assert parse_infotext(text)["Wildcard prompt"] == WRITTEN
    # the picture is the replaced prompt's: the same seed and prompt typed out give the same picture
    # (up to rounding: a batch of two and a single picture differ in the last bit), the written one not
    typed, _ = txt2img(wildcard_server, {**BASE, "steps": 1, "prompt": wanted[2], "seed": 102})
    literal, _ = txt2img(wildcard_server, {**BASE, "steps": 1, "prompt": "a cube on a __nope__ table", "seed": 102})
    assert np.abs(px(images[2]).astype(int) - px(typed[0])).max() <= 2
    assert np.abs(px(images[2]).astype(int) - px(literal[0])).mean() > 2
    # the same seeds choose the same words again
    _, again = txt2img(wildcard_server, body)
    assert again["all_prompts"] == wanted


def test_a_prompt_without_wildcards_is_left_alone(wildcard_server):
    _, info = txt2img(wildcard_server, {**BASE, "steps": 1})
    assert info["all_prompts"] == [BASE["prompt"]] and "Wildcard prompt" not in info["infotexts"][0]


def test_saved_pngs_carry_the_replaced_prompt_and_the_written_one(wildcard_server):
    folder = wildcard_server.data_dir / "outputs" / "txt2img-images" / datetime.date.today().strftime("%Y-%m-%d")
    before = set(folder.glob("*.png")) if folder.exists() else set()
    _, info = txt2img(wildcard_server, {**BASE, "steps": 1, "prompt": WRITTEN, "seed": 7, "save_images": True})

    saved = sorted(set(folder.glob("*.png")) - before)
    assert len(saved) == 1 and saved[0].name.endswith("-7.png")
    with Image.open(saved[0]) as png:
        text = png.info["parameters"]
    assert text == info["infotexts"][0]
    assert text.split("\n")[0] == expected(7) and parse_infotext(text)["Wildcard prompt"] == WRITTEN


def test_the_extensions_option_is_a_setting_and_changes_the_draw(wildcard_server):
    options = wildcard_server.get("/sdapi/v1/options").json()
    assert options["wildcards_same_seed"] is False
    r = wildcard_server.post("/sdapi/v1/options", json={"wildcards_same_seed": True})
    assert r.status_code == 200, r.text
    try:
        _, info = txt2img(wildcard_server, {**BASE, "steps": 1, "prompt": WRITTEN, "seed": 100, "batch_size": 4})
    finally:
        wildcard_server.post("/sdapi/v1/options", json={"wildcards_same_seed": False})
    assert info["all_prompts"] == [expected(100)] * 4  # every picture drew with the first seed
    assert info["all_seeds"] == [100, 101, 102, 103]


# ------------------------------------------------------------------------------------ in-process

@pytest.fixture(scope="module")
def runtime(tiny_checkpoints, tmp_path_factory):
    """A real engine with A1111's slots bound to it and the extension loaded from its fixture folder."""
    import webui
    from modules import cmd_args, errors, extensions, script_callbacks, scripts, shared

    data = tmp_path_factory.mktemp("wildcards-runtime")
    opts = cmd_args.parse_args(["--data-dir", str(data), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--ckpt", str(tiny_checkpoints.sd1)], extra_preloads=[])
    engine = webui.build_engine(opts)
    saved = list(extensions.extensions)
    wildcards = extensions.Extension("wildcards", str(EXTENSION))
    extensions.extensions[:] = [wildcards]
    shared.bind(engine, opts)
    scripts.load_scripts(extension_list=[wildcards])
    script_callbacks.ui_settings_callback()
    assert not scripts.load_errors, scripts.load_errors
    yield engine
    extensions.extensions[:] = saved
    errors.exception_records.clear()


def test_process_images_from_python_runs_the_extension(runtime):
    from modules import scripts
    from modules.processing import StableDiffusionProcessingTxt2Img, process_images

    p = StableDiffusionProcessingTxt2Img(prompt=WRITTEN, negative_prompt="blurry", seed=11, steps=1, width=64,
                                         height=64, batch_size=2, sampler_name="Euler a", do_not_save_samples=True)
    p.scripts = scripts.scripts_txt2img
    p.script_args = p.scripts.default_args()
    processed = process_images(p)  # from the test's thread: queued on the worker, as an extension's route would

    assert processed.all_prompts == [expected(11), expected(12)]
    assert p.all_prompts == processed.all_prompts and p.extra_generation_params["Wildcard prompt"] == WRITTEN
    first = processed.index_of_first_image  # 1: a grid of the batch leads
    assert len(processed.images) == first + 2
    assert [t.split("\n")[0] for t in processed.infotexts[first:]] == processed.all_prompts
    assert all(parse_infotext(t)["Wildcard prompt"] == WRITTEN for t in processed.infotexts)


def test_an_engine_job_runs_the_alwaysvisible_script(runtime):
    from modules.core.types import GenerationRequest
    from modules.services.script_jobs import ScriptCall

    request = GenerationRequest(prompt=WRITTEN, seed=21, steps=1, width=64, height=64, save_images=False)
    result = runtime.submit_txt2img(request, scripts=ScriptCall()).result()
    assert result.prompts == [expected(21)] and result.infotexts[0].startswith(expected(21) + "\n")
    assert result.extra_generation_params["Wildcard prompt"] == WRITTEN
