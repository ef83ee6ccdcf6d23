"""A1111's Interrogate CLIP: a BLIP caption (modules.core.blip) then the best lines of the category
lists ranked by CLIP (modules.core.clip_interrogate), over real files: a tiny random BLIP in
Salesforce's original ``.pth`` layout, a tiny CLIP with OpenAI's module names saved as a real
TorchScript archive (``torch.jit.trace``; Easel reads its weights without running it), small
category lists. The ranking is checked against OpenAI's own computation run here by the eager
module that was traced; TorchScript archives carrying code in their pickle are refused unrun."""

from __future__ import annotations

import base64
import io
import math
import pickle
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from modules.core import blip, clip_interrogate, torchscript_weights
from modules.core.types import RequestError
from modules.services import interrogator
from tests.api_common import assert_error
from tests.pictures import picture

ROUTE = "/sdapi/v1/interrogate"
LISTS = {"animals.txt": ["a cat", "a dog", "a horse", "an owl", "a fish"],
         "colors.top2.txt": ["red", "", "green", "blue", "yellow", "purple"],
         "styles.txt": ["oil painting", "pencil sketch", "photograph"]}
DEFAULTS = {"interrogate_return_ranks": False, "interrogate_clip_num_beams": 1, "interrogate_clip_min_length": 24,
            "interrogate_clip_max_length": 48, "interrogate_clip_dict_limit": 1500,
            "interrogate_clip_skip_categories": [], "interrogate_keep_models_in_memory": False}


# -- tiny models in the real file layouts -------------------------------------------------------

def blip_state(seed: int = 0, width: int = 64, vocab: int = 30524) -> dict[str, torch.Tensor]:
    """BLIP's captioning state dict with the original names (ViT-B layout, BERT decoder), tiny."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix):
        return {prefix + "weight": 1 + t(width), prefix + "bias": t(width)}

    def linear(prefix, out, inp):
        return {prefix + "weight": t(out, inp, scale=inp ** -0.5), prefix + "bias": t(out)}

    v, d = "visual_encoder.", "text_decoder."
    s = {v + "cls_token": t(1, 1, width), v + "pos_embed": t(1, 5, width), **linear(v + "patch_embed.proj.", width, 1)}
    s[v + "patch_embed.proj.weight"] = t(width, 3, 16, 16, scale=(3 * 256) ** -0.5)
    b = v + "blocks.0."
    s |= {**norm(b + "norm1."), **linear(b + "attn.qkv.", 3 * width, width), **linear(b + "attn.proj.", width, width),
          **norm(b + "norm2."), **linear(b + "mlp.fc1.", 2 * width, width), **linear(b + "mlp.fc2.", width, 2 * width),
          **norm(v + "norm.")}
    words = t(vocab, width, scale=1.0)
    s |= {d + "bert.embeddings.word_embeddings.weight": words, d + "bert.embeddings.position_embeddings.weight":
          t(64, width), d + "bert.embeddings.position_ids": torch.arange(64).unsqueeze(0),
          **norm(d + "bert.embeddings.LayerNorm.")}
    layer = d + "bert.encoder.layer.0."
    for part in ("attention.", "crossattention."):
        for name in ("query", "key", "value"):
            s |= linear(f"{layer}{part}self.{name}.", width, width)
        s |= {**linear(f"{layer}{part}output.dense.", width, width), **norm(f"{layer}{part}output.LayerNorm.")}
    s |= {**linear(layer + "intermediate.dense.", 2 * width, width),
          **linear(layer + "output.dense.", width, 2 * width), **norm(layer + "output.LayerNorm.")}
    head = d + "cls.predictions."
    bias = t(vocab)
    s |= {head + "bias": bias, **linear(head + "transform.dense.", width, width), **norm(head + "transform.LayerNorm."),
          head + "decoder.weight": words, head + "decoder.bias": bias}  # tied, as the release saves them
    return s


def write_blip(models_dir: Path, seed: int = 0) -> Path:
    folder = Path(models_dir) / "BLIP"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / blip.MODEL_FILE
    torch.save({"model": blip_state(seed)}, path)
    return path


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, attn_mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask = attn_mask

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask=None):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, resolution: int, patch: int, width: int, layers: int, output_dim: int):
        super().__init__()
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((resolution // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, width // 64)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
        x = self.ln_pre(x + self.positional_embedding).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class TinyOpenAICLIP(nn.Module):
    """OpenAI's CLIP (clip/model.py) at a tiny size, with its attribute names and its forward."""

    def __init__(self, resolution=32, patch=8, width=64, layers=1, embed=32, context=77, vocab=49408):
        super().__init__()
        self.visual = VisionTransformer(resolution, patch, width, layers, embed)
        mask = torch.empty(context, context).fill_(float("-inf")).triu_(1)
        self.transformer = Transformer(width, layers, width // 64, attn_mask=mask)
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed) * width ** -0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        for name, value in (("input_resolution", resolution), ("context_length", context), ("vocab_size", vocab)):
            self.register_buffer(name, torch.tensor(value))

    def encode_image(self, image):
        return self.visual(image)

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.ln_final(self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, text):
        return self.encode_image(image), self.encode_text(text)


def tiny_clip(seed: int = 0) -> TinyOpenAICLIP:
    torch.manual_seed(seed)
    return TinyOpenAICLIP().eval()


def write_clip(folder: Path, seed: int = 0) -> tuple[Path, TinyOpenAICLIP]:
    """The tiny CLIP saved as OpenAI's file is: a TorchScript archive (here traced)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_clip(seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing's own notices: the file is what matters here
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), torch.zeros(2, 77, dtype=torch.long)),
                                 check_trace=False)
    path = folder / clip_interrogate.MODEL_FILE
    traced.save(str(path))
    return path, model


def write_lists(folder: Path, lists: dict[str, list[str]] = LISTS) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in lists.items():
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def with_pickle(archive: Path, out: Path, data: bytes) -> Path:
    """A copy of the archive whose data.pkl is ``data``."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, data if info.filename.endswith("/data.pkl") else src.read(info))
    return out


def bombs(marker: Path) -> list[bytes]:
    """Pickles that would create ``marker`` if anything of them ran."""
    command = f"touch {marker}".encode()
    direct = b"cos\nsystem\n(V" + command + b"\ntR."
    hidden = (b"\x80\x02c__torch__.clip.model\nCLIP\n)\x81}(X\x06\x00\x00\x00visualcposix\nsystem\n(V" + command
              + b"\ntRub.")  # inside the module tree, as an attribute's value
    evaluated = b"cbuiltins\neval\n(V__import__('pathlib').Path('" + str(marker).encode() + b"').touch()\ntR."
    return [direct, hidden, evaluated]


# -- the independent computation: OpenAI's clip.tokenize, preprocess and rank -----------------------

def openai_tokens(texts: list[str]) -> torch.Tensor:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(clip_interrogate.TOKENIZER_DIR), local_files_only=True)
    out = torch.zeros(len(texts), 77, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [49406, *tok(text, add_special_tokens=False).input_ids, 49407]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


def openai_pixels(image: Image.Image, size: int = 32) -> torch.Tensor:
    w, h = image.size
    image = image.resize((size, size * h // w) if w <= h else (size * w // h, size), Image.BICUBIC)
    left, top = round((image.width - size) / 2), round((image.height - size) / 2)
    array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    mean, std = np.array(blip.CLIP_MEAN, dtype=np.float32), np.array(blip.CLIP_STD, dtype=np.float32)
    return torch.from_numpy((array - mean) / std).permute(2, 0, 1).unsqueeze(0)


@torch.no_grad()
def openai_rank(model: TinyOpenAICLIP, image: Image.Image, lines: list[str], top: int) -> list[tuple[str, float]]:
    picture_features = model.encode_image(openai_pixels(image))
    text = model.encode_text(openai_tokens(lines))
    picture_features = picture_features / picture_features.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    probs = (100.0 * picture_features @ text.T).softmax(dim=-1)[0]
    order = probs.argsort(descending=True)[:top]
    return [(lines[int(i)], float(probs[i])) for i in order]


def expected_matches(model, image, lists=LISTS, skip=(), limit=0) -> list[tuple[str, float]]:
    out = []
    for name in sorted(lists):
        stem = name[:-len(".txt")]
        if stem in skip:
            continue
        lines = [x for x in lists[name] if x][: limit or None]
        out += openai_rank(model, image, lines, 2 if ".top2." in name else 1)
    return out


# -- the readers and the models ---------------------------------------------------------------------

def test_torchscript_archive_is_read_as_openai_state_dict(tmp_path):
    path, model = write_clip(tmp_path)
    assert torchscript_weights.is_torchscript(path)
    state = torchscript_weights.read_state_dict(path)
    expected = model.state_dict()
    assert set(expected) <= set(state)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert state["transformer.resblocks.0.attn.in_proj_weight"].shape == (192, 64)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    assert not torchscript_weights.is_torchscript(plain)  # a torch.save file is read by torch.load


def test_an_archive_with_code_in_its_pickle_is_refused_unrun(tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(bombs(proof)[2])  # the bombs are real: plain unpickling runs them
    assert proof.exists()
    path, _model = write_clip(tmp_path / "good")
    marker = tmp_path / "bomb-ran"
    for i, data in enumerate(bombs(marker)):
        bad = with_pickle(path, tmp_path / f"bad{i}.pt", data)
        assert torchscript_weights.is_torchscript(bad)
        with pytest.raises(torchscript_weights.TorchScriptError, match="refused") as error:
            torchscript_weights.read_state_dict(bad)
        assert any(name in str(error.value) for name in ("os.system", "posix.system", "builtins.eval"))
        with pytest.raises(blip.ModelFileError, match="refused"):
            clip_interrogate.load(bad)
        assert not marker.exists()
    with zipfile.ZipFile(path) as zf:  # tensors rebuilt by a function weights never need: refused too
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    bad = with_pickle(path, tmp_path / "quantized.pt", data.replace(b"_rebuild_tensor_v2", b"_rebuild_qtensor"))
    with pytest.raises(torchscript_weights.TorchScriptError, match="_rebuild_qtensor"):
        torchscript_weights.read_state_dict(bad)


def test_clip_from_the_archive_ranks_as_openai(tmp_path):
    path, model = write_clip(tmp_path)
    hf = clip_interrogate.load(path)
    assert hf.config.vision_config.image_size == 32 and hf.config.text_config.max_position_embeddings == 77
    image = picture(48, 64)
    lines = ("a cat", "a dog", "a horse", "an owl", "a fish", "red", "green")
    with torch.no_grad():
        ours_image = clip_interrogate.image_features(hf, image)
        ours_text = clip_interrogate.text_features(hf, lines)
        theirs_image = model.encode_image(openai_pixels(image))
        theirs_text = model.encode_text(openai_tokens(list(lines)))
    assert torch.allclose(ours_image, theirs_image / theirs_image.norm(dim=-1, keepdim=True), atol=1e-5)
    assert torch.allclose(ours_text, theirs_text / theirs_text.norm(dim=-1, keepdim=True), atol=1e-5)
    ranked = clip_interrogate.rank(ours_image, lines, ours_text, 3)
    expected = openai_rank(model, image, list(lines), 3)
    assert [t for t, _ in ranked] == [t for t, _ in expected]
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(ranked, expected))
    # the same weights as safetensors with OpenAI's names give the same model
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "ViT-L-14.safetensors"))
    again = clip_interrogate.load(tmp_path / "ViT-L-14.safetensors")
    assert torch.allclose(clip_interrogate.image_features(again, image), ours_image)


def test_blip_original_layout_loads_and_captions(tmp_path):
    path = write_blip(tmp_path)
    tok = blip.tokenizer()
    assert tok(blip.PROMPT).input_ids == [101, 1037, 3861, 1997, 102]  # bert-base-uncased's ids
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
    model = blip.load(path)
    state = blip_state()
    assert model.config.vision_config.image_size == 32 and model.config.text_config.num_hidden_layers == 1
    pairs = {"vision_model.encoder.layers.0.self_attn.qkv.weight": "visual_encoder.blocks.0.attn.qkv.weight",
             "vision_model.encoder.layers.0.self_attn.projection.bias": "visual_encoder.blocks.0.attn.proj.bias",
             "vision_model.embeddings.class_embedding": "visual_encoder.cls_token",
             "vision_model.post_layernorm.weight": "visual_encoder.norm.weight",
             "text_decoder.bert.encoder.layer.0.crossattention.self.key.weight":
                 "text_decoder.bert.encoder.layer.0.crossattention.self.key.weight"}
    loaded = model.state_dict()
    for ours, original in pairs.items():
        assert torch.equal(loaded[ours], state[original]), ours
    image = picture(40, 56)
    text = blip.caption(model, image)
    assert isinstance(text, str) and text.strip()
    assert blip.caption(model, image) == text  # beam search, no sampling
    short = blip.caption(model, image, num_beams=2, min_length=5, max_length=8)
    assert short and len(short) < len(text)  # at most 4 tokens after the prompt's 4
    bad = dict(state)
    del bad["visual_encoder.norm.weight"]
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(blip.ModelFileError, match="post_layernorm"):
        blip.load(tmp_path / "bad.pth")


def test_the_releases_shapes_give_their_configs():
    """The configs read from the shapes of A1111's two files (tensors on the meta device: no data)."""
    def meta(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}

    clip = {"token_embedding.weight": (49408, 768), "positional_embedding": (77, 768), "ln_final.weight": (768,),
            "ln_final.bias": (768,), "text_projection": (768, 768), "logit_scale": (), "visual.proj": (1024, 768),
            "visual.class_embedding": (1024,), "visual.conv1.weight": (1024, 3, 14, 14),
            "visual.positional_embedding": (257, 1024), "visual.ln_pre.weight": (1024,), "visual.ln_pre.bias": (1024,),
            "visual.ln_post.weight": (1024,), "visual.ln_post.bias": (1024,)}
    for prefix, width, layers in (("transformer.", 768, 12), ("visual.transformer.", 1024, 24)):
        for i in range(layers):
            b = f"{prefix}resblocks.{i}."
            clip |= {b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
                     b + "mlp.c_fc.weight": (4 * width, width)}
    config = clip_interrogate.config_from_shapes(clip_interrogate.openai_to_hf(meta(clip)))
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (1024, 24, 16)
    assert (v.image_size, v.patch_size) == (224, 14)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size) == (768, 12, 12, 3072)
    assert config.projection_dim == 768 and t.max_position_embeddings == 77
    state = {k: v.shape for k, v in blip_state(width=64).items()}  # the names, at ViT-B / BERT-base widths:
    state = {k: tuple(768 if n == 64 else 3 * 768 if n == 192 else 3072 if n == 128 else n for n in s)
             for k, s in state.items()}
    state["visual_encoder.pos_embed"] = (1, 577, 768)
    config, _ = blip.convert(meta(state))
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_attention_heads, v.layer_norm_eps) == (768, 12, 1e-6)
    assert (v.image_size, v.patch_size) == (384, 16)
    assert (t.hidden_size, t.num_attention_heads, t.vocab_size, t.encoder_hidden_size) == (768, 12, 30524, 768)


def test_categories_follow_a1111s_files_and_options(tmp_path):
    folder = write_lists(tmp_path / "interrogate")
    cats = clip_interrogate.load_categories(folder)
    assert [(c.name, c.topn) for c in cats] == [("animals", 1), ("colors.top2", 2), ("styles", 1)]
    assert cats[1].items == ("red", "green", "blue", "yellow", "purple")  # blank lines dropped
    cats = clip_interrogate.load_categories(folder, skip=["styles"], dict_limit=2)
    assert [(c.name, c.items) for c in cats] == [("animals", ("a cat", "a dog")), ("colors.top2", ("red", "green"))]
    assert clip_interrogate.caption_string("a photo", [("x", 0.5), ("y (z)", 0.12345)]) == "a photo, x, y (z)"
    assert clip_interrogate.caption_string("a", [("x", 0.5)], include_ranks=True) == "a, (x:0.500)"
    shipped = [p.name for p in clip_interrogate.category_files(interrogator.SHIPPED_CATEGORIES)]
    assert shipped == ["artists.txt", "flavors.txt", "mediums.txt", "movements.txt"]


# -- the service, the buttons and the API ------------------------------------------------------------

def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class InlineQueue:
    """The worker queue's submit, run at once in this thread."""

    def submit(self, name, fn, *args, task_id=None):
        from concurrent.futures import Future

        future = Future()
        future.set_result(fn(*args))
        return future


@pytest.fixture(scope="module")
def served(server):
    """The tiny BLIP and CLIP in the server's models/BLIP and models/CLIP, small lists in its data
    folder's interrogate/; all removed and the options put back afterwards."""
    models = server.data_dir / "models"
    blip_path = write_blip(models)
    clip_path, model = write_clip(models / "CLIP")
    lists = write_lists(server.data_dir / "interrogate")
    yield server, model
    server.post("/sdapi/v1/options", json=DEFAULTS)
    for path in (blip_path, clip_path, *lists.iterdir()):
        path.unlink()
    lists.rmdir()


def _interrogate(server, image, **options) -> str:
    r = server.post("/sdapi/v1/options", json={**DEFAULTS, **options})
    assert r.status_code == 200, r.text
    r = server.post(ROUTE, json={"image": b64(image), "model": "clip"})
    assert r.status_code == 200, r.text
    return r.json()["caption"]


def test_api_answers_a1111s_caption_then_the_ranked_lines(served):
    server, model = served
    image = picture(64, 48)
    caption = blip.caption(blip.load(server.data_dir / "models" / "BLIP" / blip.MODEL_FILE), image)
    matches = expected_matches(model, image)
    assert len(matches) == 4
    answer = _interrogate(server, image)
    assert answer == caption + "".join(f", {text}" for text, _ in matches)
    ranked = _interrogate(server, image, interrogate_return_ranks=True)
    assert ranked.startswith(caption + ", (")
    parts = ranked[len(caption) + 2:].split(", ")
    assert [p[1:p.rindex(":")] for p in parts] == [t for t, _ in matches]
    assert all(abs(float(p[p.rindex(":") + 1:-1]) - score) <= 0.0011 for p, (_, score) in zip(parts, matches))
    limited = _interrogate(server, image, interrogate_clip_skip_categories=["animals"], interrogate_clip_dict_limit=3)
    assert limited == caption + "".join(f", {t}" for t, _ in expected_matches(model, image, skip=("animals",),
                                                                                   limit=3))
    short = _interrogate(server, image, interrogate_clip_num_beams=2, interrogate_clip_min_length=5,
                         interrogate_clip_max_length=7)
    model_file = blip.load(server.data_dir / "models" / "BLIP" / blip.MODEL_FILE)
    assert short == blip.caption(model_file, image, 2, 5, 7) + "".join(f", {t}" for t, _ in matches)


def test_api_an_archive_with_code_is_refused_and_runs_nothing(served, tmp_path):
    server, _model = served
    path = server.data_dir / "models" / "CLIP" / clip_interrogate.MODEL_FILE
    good = path.read_bytes()
    marker = tmp_path / "bomb-ran"
    try:
        (tmp_path / "good.pt").write_bytes(good)
        with_pickle(tmp_path / "good.pt", path, bombs(marker)[0])
        message = assert_error(server.post(ROUTE, json={"image": b64(picture()), "model": "clip"}), "model", (422,))
        assert "refused" in message and "os.system" in message and not marker.exists()
    finally:
        path.write_bytes(good)
    assert server.post(ROUTE, json={"image": b64(picture()), "model": "clip"}).status_code == 200


def test_api_caption_step_takes_blip(served):
    """With the BLIP file in place the Extras "Caption" step runs (the API saves nothing, so its text is
    checked in-process below); the picture comes back unchanged."""
    server, _model = served
    image = picture(32, 32)
    body = {"image": b64(image), "postprocessing_scripts": {"Caption": {"enable": True, "option": ["BLIP"]}}}
    r = server.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 200, r.text
    back = Image.open(io.BytesIO(base64.b64decode(r.json()["image"]))).convert("RGB")
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_buttons_and_service_over_the_files(tmp_path):
    from modules import interrogate, postprocessing, shared  # interrogate, shared: A1111's names
    from modules.services import extras
    from modules.services.jobs import JobState
    from modules.ui.interrogate_buttons import InterrogateButtons

    models = tmp_path / "models"
    values = dict(DEFAULTS)
    options = SimpleNamespace(get=lambda key, default=None: values.get(key, default))
    service = interrogator.Interrogators(models, options, categories_dir=tmp_path / "interrogate", log=lambda _: None)
    with pytest.raises(RequestError) as error:
        service.check("clip")
    assert blip.MODEL_FILE in error.value.message and str(models / "BLIP") in error.value.message
    assert clip_interrogate.MODEL_FILE in error.value.message and str(models / "CLIP") in error.value.message
    write_blip(models)
    _path, model = write_clip(models / "CLIP")
    assert service.category_types() == ("artists", "flavors", "mediums", "movements")  # the shipped lists
    write_lists(tmp_path / "interrogate")
    assert service.category_types() == ("animals", "colors.top2", "styles")
    engine = SimpleNamespace(options=options, state=JobState(), queue=InlineQueue(), data_path=tmp_path)
    previous = interrogator._current
    interrogator.install(service)
    try:
        image = picture(32, 32)
        tab = SimpleNamespace(mode="mode", pictures=lambda values, mode: (values["image"], None))
        answer = InterrogateButtons(engine).caption(tab, "clip", {"mode": 0, "image": image})
        processor = postprocessing.postprocessor_for({"Caption": {"enable": True, "option": ["BLIP"]}})
        extras_caption = extras.submit(engine, [("a.png", image)], processor).result()[0].caption
        assert shared.interrogator is interrogate.interrogator
        via_shared = shared.interrogator.interrogate(image)
        assert shared.interrogator.generate_caption(image) == service.caption(image)
        assert interrogate.category_types() == ["animals", "colors.top2", "styles"]
        assert [(c.name, c.topn) for c in shared.interrogator.categories()][1] == ("colors.top2", 2)
    finally:
        interrogator.install(previous)
    caption = service.caption(image)
    assert extras_caption == caption  # the Extras "Caption" step's BLIP: the caption alone
    assert answer == via_shared == caption + "".join(f", {t}" for t, _ in expected_matches(model, image))
    assert next(service._blip[1].parameters()).device.type == "cpu"  # back on the CPU between uses
