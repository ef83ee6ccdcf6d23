"""A1111's Interrogate: DeepBooru (modules.core.deepbooru, modules.services.interrogator) through
POST /sdapi/v1/interrogate of the shared server, the "Caption" Extras step and the img2img tab's
buttons. The model is a tiny random-weight DeepDanbooru written in the release's file layout
(tests/fixtures/tiny_interrogators.py) into the server's models/torch_deepdanbooru; every caption
is checked against the tags' scores computed here with the same module. Interrogate CLIP appears
here only where its files are missing (a 422 naming them); its captions: tests/test_interrogate_clip.py."""

from __future__ import annotations

import base64
import io
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from modules import postprocessing
from modules.core import deepbooru
from modules.core.types import RequestError
from modules.services import extras, interrogator
from modules.services.jobs import JobState
from tests.api_common import assert_error
from tests.fixtures.tiny_interrogators import TAGS, write_deepbooru, write_pickle_bomb
from tests.pictures import picture

ROUTE = "/sdapi/v1/interrogate"
DEFAULTS = {"interrogate_deepbooru_score_threshold": 0.5, "deepbooru_sort_alpha": True, "deepbooru_use_spaces": True,
            "deepbooru_escape": True, "deepbooru_filter_tags": "", "interrogate_return_ranks": False}


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def direct_scores(models_dir, image: Image.Image) -> dict[str, float]:
    net = deepbooru.load(models_dir / "torch_deepdanbooru" / deepbooru.MODEL_FILE)
    return deepbooru.scores(net, image.convert("RGB"))


# -- the network and the tag string -----------------------------------------------------------

def _release_shapes() -> dict[int, tuple[int, int, int, int]]:
    """The convolutions of A1111's model-resnet_custom_v3.pt (deepbooru_model.py), weights' shapes."""
    layers = [(3, 64, 7)]

    def projection(cin, cout, mid):
        layers.extend([(cin, cout, 1), (cin, mid, 1), (mid, mid, 3), (mid, cout, 1)])

    def identity(width, mid, count):
        for _ in range(count):
            layers.extend([(width, mid, 1), (mid, mid, 3), (mid, width, 1)])

    projection(64, 256, 64), identity(256, 64, 2)
    projection(256, 512, 128), identity(512, 128, 7)
    projection(512, 1024, 256), identity(1024, 256, 19)
    layers.extend([(1024, 256, 1), (256, 256, 3), (256, 1024, 1), (1024, 1024, 1)])  # n_Conv_97..100
    identity(1024, 256, 19)
    projection(1024, 2048, 512), identity(2048, 512, 2)
    projection(2048, 4096, 1024), identity(4096, 1024, 2)
    layers.append((4096, 9176, 1))
    return {i: (cout, cin, k, k) for i, (cin, cout, k) in enumerate(layers)}


def test_the_release_layout_is_read_from_its_shapes():
    shapes = _release_shapes()
    assert max(shapes) == 178  # n_Conv_178: the 9176 tags
    blocks = deepbooru.residual_blocks(shapes, 64)
    halving = [b for b in blocks if b.stride == 2]
    assert [(b.reduce, b.middle, b.expand, b.shortcut) for b in halving] == [
        (12, 13, 14, 11), (37, 38, 39, 36), (97, 98, 99, 100), (159, 160, 161, 158), (169, 170, 171, 168)]
    assert blocks[0] == deepbooru.Block(2, 3, 4, 1, 1)  # after the max-pool: same resolution
    assert sum(b.shortcut is None for b in blocks) == 2 + 7 + 19 + 19 + 2 + 2
    assert blocks[-1].expand == 177


def test_tiny_model_builds_weights_only_and_halves_as_the_release(tmp_path):
    path = write_deepbooru(tmp_path)
    net = deepbooru.load(path)
    assert net.tags == TAGS and net.head == 22
    seen = {}
    net.n_Conv_22.register_forward_hook(lambda _m, inputs, _out: seen.update(shape=tuple(inputs[0].shape)))
    probabilities = deepbooru.scores(net, picture(40, 64))
    assert seen["shape"] == (1, 16, 32, 32)  # 512 -> stem 256 -> pool 128 -> two halvings
    assert list(probabilities) == TAGS and all(0.0 < p < 1.0 for p in probabilities.values())
    assert max(probabilities.values()) - min(probabilities.values()) > 0.5
    assert deepbooru.scores(net, Image.new("RGB", (64, 64))) != probabilities  # the picture counts
    # the input: fitted into 512x512 with the edges stretched (A1111's resize mode 2), in [0, 1]
    pixels = deepbooru.prepare(Image.new("RGB", (20, 40), (255, 0, 51)))
    assert pixels.shape == (1, 512, 512, 3) and torch.allclose(pixels[0, 0, 0], torch.tensor([1.0, 0.0, 0.2]))


def test_a_file_of_another_layout_is_refused_with_the_reason(tmp_path):
    path = write_deepbooru(tmp_path)
    state = torch.load(path, weights_only=True)
    del state["tags"]
    with pytest.raises(deepbooru.DeepbooruFileError, match="tags"):
        deepbooru.build(state)
    state = torch.load(path, weights_only=True)
    state["n_Conv_10.weight"] = torch.zeros(4, 5, 3, 3)
    with pytest.raises(deepbooru.DeepbooruFileError, match="residual block"):
        deepbooru.build(state)


def test_tag_string_follows_a1111s_rules():
    p = {"b_tag": 0.9, "a_(x)": 0.7, "rating:safe": 0.99, "c\\d": 0.6, "low": 0.2, "solo": 0.8}
    s = deepbooru.TagSettings
    assert deepbooru.tag_string(p, s()) == "a \\(x\\), b tag, c\\\\d, solo"
    assert deepbooru.tag_string(p, s(sort_alpha=False)) == "b tag, solo, a \\(x\\), c\\\\d"
    assert deepbooru.tag_string(p, s(use_spaces=False, escape=False)) == "a_(x), b_tag, c\\d, solo"
    assert deepbooru.tag_string(p, s(threshold=0.75, include_ranks=True)) == "(b tag:0.900), (solo:0.800)"
    assert deepbooru.tag_string(p, s(filter_tags="b tag, solo")) == "a \\(x\\), c\\\\d"
    assert deepbooru.tag_string(p, s(threshold=0.0)).endswith("low, solo")


# -- the service --------------------------------------------------------------------------------

def test_a_pickle_bomb_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "bomb-ran"
    write_pickle_bomb(tmp_path / "models", marker)
    service = interrogator.Interrogators(tmp_path / "models", log=lambda _line: None)
    with pytest.raises(RequestError, match="refused") as error:
        service.interrogate(picture(), "deepdanbooru")
    assert error.value.field == "model" and not marker.exists()


def test_a_missing_file_names_the_file_and_the_folder(tmp_path):
    service = interrogator.Interrogators(tmp_path / "models")
    with pytest.raises(RequestError) as error:
        service.check("deepdanbooru")
    assert error.value.field == "model"
    assert "model-resnet_custom_v3.pt" in error.value.message and str(tmp_path / "models" / "torch_deepdanbooru") in \
        error.value.message


# -- the API ----------------------------------------------------------------------------------

def test_api_missing_model_clip_unknown_model_and_bad_image(server):
    folder = server.data_dir / "models" / "torch_deepdanbooru"
    assert not (folder / deepbooru.MODEL_FILE).exists()
    message = assert_error(server.post(ROUTE, json={"image": b64(picture()), "model": "deepdanbooru"}), "model", (422,))
    assert "model-resnet_custom_v3.pt" in message and str(folder) in message
    message = assert_error(server.post(ROUTE, json={"image": b64(picture()), "model": "clip"}), "model", (422,))
    models = server.data_dir / "models"  # Interrogate CLIP: BLIP's and CLIP's files, each with its folder
    assert "model_base_caption_capfilt_large.pth" in message and str(models / "BLIP") in message
    assert "ViT-L-14.pt" in message and str(models / "CLIP") in message
    message = assert_error(server.post(ROUTE, json={"image": b64(picture()), "model": "wd14"}), "model", (422,))
    assert "deepdanbooru" in message
    assert_error(server.post(ROUTE, json={"image": "not an image", "model": "deepdanbooru"}), "image", (422,))
    assert_error(server.post(ROUTE, json={"model": "deepdanbooru"}), "image", (422,))


@pytest.fixture(scope="module")
def served(server):
    """The tiny DeepBooru in the server's models/torch_deepdanbooru; the options put back afterwards."""
    path = write_deepbooru(server.data_dir / "models")
    yield server
    server.post("/sdapi/v1/options", json=DEFAULTS)
    path.unlink()


def _caption(server, image, **options) -> str:
    r = server.post("/sdapi/v1/options", json={**DEFAULTS, **options})
    assert r.status_code == 200, r.text
    r = server.post(ROUTE, json={"image": "data:image/png;base64," + b64(image), "model": "deepdanbooru"})
    assert r.status_code == 200, r.text
    return r.json()["caption"]


def test_api_caption_is_the_tags_over_the_threshold_in_a1111s_format(served):
    image = picture(48, 64)
    scores = direct_scores(served.data_dir / "models", image)
    ranked = sorted((p for t, p in scores.items() if not t.startswith("rating:")), reverse=True)
    caption = _caption(served, image)
    assert caption == deepbooru.tag_string(scores, deepbooru.TagSettings())
    assert caption and caption.split(", ") == sorted(caption.split(", "))  # by name
    # a threshold between the 3rd and 4th best: exactly three tags
    middle = (ranked[2] + ranked[3]) / 2
    options = {"interrogate_deepbooru_score_threshold": middle, "deepbooru_sort_alpha": False,
               "deepbooru_use_spaces": False, "deepbooru_escape": False}
    caption = _caption(served, image, **options)
    best = sorted((t for t in scores if not t.startswith("rating:")), key=lambda t: -scores[t])[:3]
    assert caption == ", ".join(best)  # by score, underscores kept
    everything = _caption(served, image, interrogate_deepbooru_score_threshold=0.0, interrogate_return_ranks=True)
    assert everything == deepbooru.tag_string(scores, deepbooru.TagSettings(threshold=0.0, include_ranks=True))
    assert "holding \\(object\\)" in everything and "back\\\\slash" in everything and "rating:" not in everything
    filtered = _caption(served, image, interrogate_deepbooru_score_threshold=0.0,
                        deepbooru_filter_tags="long hair, solo")
    assert "long hair" not in filtered and "solo" not in filtered and "1girl" in filtered


def test_api_a_pickle_bomb_put_in_place_is_refused(served, tmp_path):
    folder = served.data_dir / "models" / "torch_deepdanbooru"
    marker = tmp_path / "bomb-ran"
    try:
        write_pickle_bomb(served.data_dir / "models", marker)
        message = assert_error(served.post(ROUTE, json={"image": b64(picture()), "model": "deepdanbooru"}), "model",
                               (422,))
        assert "refused" in message and not marker.exists()
    finally:
        write_deepbooru(served.data_dir / "models")
    assert (folder / deepbooru.MODEL_FILE).exists()
    assert served.post(ROUTE, json={"image": b64(picture()), "model": "deepdanbooru"}).status_code == 200


def test_api_caption_step_names_the_missing_blip_file(served):
    body = {"image": b64(picture(16, 16)), "postprocessing_scripts": {"Caption": {"enable": True, "option": ["BLIP"]}}}
    message = assert_error(served.post("/sdapi/v1/extra-single-image", json=body), "option", (422,))
    assert "model_base_caption_capfilt_large.pth" in message and str(served.data_dir / "models" / "BLIP") in message
    body["postprocessing_scripts"]["Caption"]["option"] = ["Deepbooru"]
    assert served.post("/sdapi/v1/extra-single-image", json=body).status_code == 200


def test_img2img_tab_has_a1111s_interrogate_buttons_writing_the_prompt(server):
    config = server.get("/config").json()
    buttons = {c["props"].get("elem_id"): c["props"].get("value") for c in config["components"]}
    assert buttons["interrogate"] == "Interrogate\nCLIP" and buttons["deepbooru"] == "Interrogate\nDeepBooru"
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
    for button in ("interrogate", "deepbooru"):
        events = [d for d in config["dependencies"] if [ids[button], "click"] in [list(t) for t in d["targets"]]]
        assert events and ids["img2img_prompt"] in events[0]["outputs"], button


# -- in this process: the Caption step and the buttons over an installed service ----------------

class _InlineQueue:
    def submit(self, name, fn, *args, task_id=None):
        future = Future()
        future.set_result(fn(*args))
        return future


@pytest.fixture
def installed(tmp_path):
    models = tmp_path / "models"
    write_deepbooru(models)
    values = {**DEFAULTS, "enable_pnginfo": True, "samples_format": "png"}
    options = SimpleNamespace(get=lambda key, default=None: values.get(key, default))
    engine = SimpleNamespace(options=options, state=JobState(), queue=_InlineQueue(), data_path=tmp_path)
    previous = interrogator._current
    interrogator.install(interrogator.Interrogators(models, options))
    yield engine, models, values
    interrogator.install(previous)


def test_caption_step_writes_the_tags_next_to_the_saved_picture(installed, tmp_path):
    engine, models, _values = installed
    image = picture(32, 32)
    processor = postprocessing.postprocessor_for({"Caption": {"enable": True, "option": ["Deepbooru"]}})
    results = extras.submit(engine, [("a.png", image)], processor).result()
    expected = deepbooru.tag_string(direct_scores(models, image), deepbooru.TagSettings())
    assert results[0].caption == expected
    paths = extras.save(engine, results, tmp_path / "out")
    assert paths[0].with_suffix(".txt").read_text(encoding="utf-8") == expected


def test_buttons_put_the_caption_in_the_prompt_or_warn(installed):
    from modules.ui.interrogate_buttons import InterrogateButtons

    engine, models, _values = installed
    image = picture(32, 32)
    tab = SimpleNamespace(mode="mode", pictures=lambda values, mode: (values["image"], None))
    buttons = InterrogateButtons(engine)
    expected = deepbooru.tag_string(direct_scores(models, image), deepbooru.TagSettings())
    assert buttons.caption(tab, "deepdanbooru", {"mode": 0, "image": image}) == expected
    with pytest.warns(UserWarning, match="Interrogate CLIP needs two model files"):
        skipped = buttons.caption(tab, "clip", {"mode": 0, "image": image})
    assert skipped == {"__type__": "update"}  # the prompt is left as it was
    with pytest.warns(UserWarning, match="no image"):
        assert buttons.caption(SimpleNamespace(mode="mode", pictures=tab_without_picture), "deepdanbooru",
                               {"mode": 0}) == {"__type__": "update"}
    with pytest.warns(UserWarning, match="batch folder"):
        assert buttons.caption(tab, "deepdanbooru", {"mode": 5, "image": image}) == {"__type__": "update"}


def tab_without_picture(values, mode):
    raise RequestError("init_images", "no image: upload one in the img2img tab")


def test_a1111s_deepbooru_module_tags_with_the_options(installed):
    from modules import deepbooru as a1111_deepbooru

    engine, models, values = installed
    image = picture(32, 32)
    scores = direct_scores(models, image)
    assert a1111_deepbooru.model.model is None  # nothing read before the first use
    values.update(interrogate_return_ranks=True, deepbooru_sort_alpha=False)
    ranked = deepbooru.TagSettings(sort_alpha=False, include_ranks=True)
    assert a1111_deepbooru.model.tag(image) == deepbooru.tag_string(scores, ranked)
    plain = deepbooru.TagSettings(sort_alpha=False)
    assert a1111_deepbooru.model.tag_multi(image, force_disable_ranks=True) == deepbooru.tag_string(scores, plain)
    assert isinstance(a1111_deepbooru.model.model, deepbooru.DeepDanbooruNet)
