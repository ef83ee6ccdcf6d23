"""External VAE files (A1111's ``sd_vae``): read one into a loaded model, and put the
checkpoint's own VAE back exactly.

A VAE file holds either LDM first-stage keys (``encoder.*``, ``decoder.*``, ``quant_conv``,
``post_quant_conv``, maybe under ``first_stage_model.``; extra keys such as ``loss.*`` or
``model_ema.*`` are ignored) or diffusers AutoencoderKL keys. Either way the tensors are
renamed to diffusers' names, checked key by key and shape by shape against the model's VAE,
and only then adopted; a file that does not fit raises ``VaeFileError`` naming it and the
model keeps the VAE it had.

The checkpoint's own VAE module is kept (moved to the CPU while an external one is in use),
so ``restore`` gives back the very same tensors: decoding is bit-identical to before.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from . import memory
from .checkpoint_file import CheckpointFile
from .model_loader import LoadedModel

_OWN = "checkpoint_vae"  # LoadedModel.extra: the checkpoint's own VAE module while an external one is used
_FILE = "vae_file"  # LoadedModel.extra: the external VAE file in use (absent: the checkpoint's own)
LDM_PREFIX = "first_stage_model."

# diffusers' attention names before 0.14 -> today's
_OLD_ATTENTION = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}


class VaeFileError(ValueError):
    """A VAE file that cannot be used with the loaded model (message names the file)."""


def _is_ldm(keys) -> bool:
    return any(k.startswith(("encoder.down.", "decoder.up.", "encoder.mid.", "decoder.mid.")) for k in keys)


def _diffusers_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if ".attentions." in key:
            for old, new in _OLD_ATTENTION.items():
                head, sep, tail = key.rpartition(".attentions.")
                if tail.split(".", 1)[-1].startswith(old):
                    index, rest = tail.split(".", 1)
                    key = f"{head}{sep}{index}.{new}{rest[len(old):]}"
                    break
            if value.ndim == 4 and value.shape[-2:] == (1, 1) and any(s in key for s in ("to_q", "to_k", "to_v", "to_out")):
                value = value[:, :, 0, 0]  # 1x1 conv weights of old files -> linear
        out[key] = value
    return out


def read_vae_file(path: str | Path, config: dict, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The file's VAE tensors under diffusers AutoencoderKL names (not yet checked against a model)."""
    path = Path(path)
    ckpt = CheckpointFile(path)  # CheckpointError (a ValueError) for missing/corrupt/unsafe files
    try:
        keys = list(ckpt.shapes)
        if any(k.startswith(LDM_PREFIX) for k in keys):
            keys = [k for k in keys if k.startswith(LDM_PREFIX)]
        state = {k: ckpt.get(k, dtype) for k in keys}
    finally:
        ckpt.close()
    if _is_ldm(k.removeprefix(LDM_PREFIX) for k in state):
        try:
            return convert_ldm_vae_checkpoint(state, dict(config))
        except (KeyError, IndexError, RuntimeError, ValueError) as exc:
            raise VaeFileError(f"VAE {path.name} does not fit this model's VAE: {exc}") from exc
    return _diffusers_keys(state)


def _check(path: Path, state: dict[str, torch.Tensor], target: AutoencoderKL) -> None:
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    missing = sorted(expected.keys() - state.keys())
    if missing:
        raise VaeFileError(f"VAE {path.name} does not fit this model: it lacks {len(missing)} of the VAE's "
                           f"weights (e.g. {missing[0]})")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise VaeFileError(f"VAE {path.name} does not fit this model: {key} has shape "
                               f"{tuple(state[key].shape)}, the model's VAE needs {shape}")


def current_vae_file(model: LoadedModel) -> Path | None:
    """The external VAE file in use, or None for the checkpoint's own."""
    return model.extra.get(_FILE)


class VaeStateCache:
    """A1111's ``sd_vae_checkpoint_cache``: the tensors of the last ``limit`` VAE files read (in RAM,
    least recently used out first), so switching back to one reads no file. The tensors are shared
    with the VAE modules made from them, which never change them in place."""

    def __init__(self, limit: int = 0):
        self.limit = limit
        self.reads = 0  # files read (a cache hit reads none)
        self._states: dict[tuple, dict[str, torch.Tensor]] = {}

    def get(self, path: Path, config: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        try:
            st = path.stat()
            key = (str(path), st.st_mtime_ns, st.st_size, str(dtype))
        except OSError:
            key = None
        if key is not None and key in self._states:
            self._states[key] = self._states.pop(key)  # most recently used last
            return self._states[key]
        self.reads += 1
        state = read_vae_file(path, config, dtype)
        if key is not None and self.limit > 0:
            self._states[key] = state
            while len(self._states) > self.limit:
                self._states.pop(next(iter(self._states)))
        return state

    def set_limit(self, limit: int) -> None:
        self.limit = max(0, int(limit))
        while len(self._states) > self.limit:
            self._states.pop(next(iter(self._states)))


def load_vae(model: LoadedModel, path: str | Path, cache: VaeStateCache | None = None) -> None:
    """Use the VAE in `path` for `model` (no-op if it is already in use). Raises VaeFileError /
    CheckpointError (ValueErrors naming the file); then the model's VAE is unchanged. ``cache``:
    the VAE files kept in RAM (None: read the file)."""
    path = Path(path)
    if current_vae_file(model) == path:
        return
    own = model.extra.get(_OWN, model.vae)
    if cache is not None:
        state = cache.get(path, own.config, model.policy.vae_dtype)
    else:
        state = read_vae_file(path, own.config, model.policy.vae_dtype)
    _check(path, state, own)
    with torch.device("meta"):
        vae = AutoencoderKL(**{k: v for k, v in own.config.items() if not k.startswith("_")})
    vae.load_state_dict({k: state[k] for k in own.state_dict()}, strict=True, assign=True)
    vae.eval().requires_grad_(False)
    memory.move(vae, dtype=model.policy.vae_dtype)
    if model.policy.attention == "xformers":
        vae.enable_xformers_memory_efficient_attention()
    owner = _owner(model)
    owner.adopt(vae, like=model.vae)  # placed by the memory owner, where the VAE it replaces was
    if _OWN not in model.extra:
        owner.forget(own)  # kept whole (exact restore), out of device memory
        model.extra[_OWN] = own
    else:
        owner.forget(model.vae)  # the previous external VAE goes
    model.vae = vae
    model.extra[_FILE] = path


def restore_vae(model: LoadedModel) -> None:
    """Put the checkpoint's own VAE back (no-op if it is in use)."""
    own = model.extra.pop(_OWN, None)
    model.extra.pop(_FILE, None)
    if own is not None:
        owner = _owner(model)
        owner.adopt(own, like=model.vae)
        owner.forget(model.vae)
        model.vae = own


def _owner(model: LoadedModel) -> memory.DeviceMemory:
    if model.memory is None:
        model.memory = memory.DeviceMemory(model.device)
    return model.memory
