"""sd-webui-controlnet's "Reference" preprocessors: the unit's picture guides the UNet with no model.

``reference_only``, ``reference_adain`` and ``reference_adain+attn`` (the extension's
``AttentionInjection`` units). Before each model call where such a unit acts, its picture's latents
(the map fitted to the pass, through the VAE), noised to the call's timestep, go through the same
UNet with the same conditioning (the *reference pass*); what it leaves behind changes the main call:

- **attention** (``reference_only``, ``reference_adain+attn``): every self-attention layer (the
  transformer blocks' ``attn1``) keeps its input from the reference pass; in the main call its keys
  and values are ``[x, ref_x]`` (the tokens joined) instead of ``x``;
- **AdaIN** (``reference_adain``, ``reference_adain+attn``): the outputs of the UNet's middle block
  and of some down and up blocks (those the LDM UNet's ``input_blocks[4, 5, 7, 8, 10, 11]``,
  ``output_blocks[0..7]`` and ``middle_block`` are; SDXL: ``[4, 5, 7, 8]``, ``[0..5]``) take the
  reference's per-channel mean and standard deviation.

The extension's rules, kept here:

- **weight** is not a factor: it picks the layers that take part. The self-attention layers sorted
  widest first get ``i / count``, the AdaIN blocks ``2 * (1 - w / n)`` down, ``2 * w / n`` up, 0 in
  the middle; a layer takes part when the unit's weight is above its number (weight 0: none);
- **style fidelity** (the unit's ``threshold_a``, default 0.5): the unconditional rows' output is
  ``fidelity * plain + (1 - fidelity) * referenced`` (the conditional rows are always referenced), so
  classifier-free guidance pushes away from the reference less or more. SDXL cubes it; "ControlNet
  is more important" makes it 1, "My prompt is more important" and the hires pass 0;
- several reference units: each one's reference pass adds its tokens / statistics; the main call
  reads them all (keys and values joined, statistics averaged, fidelity averaged);
- the reference's noise is drawn from a generator seeded once per pass (the extension draws it from
  the global generator), so a job is reproducible;
- an inpainting UNet's reference pass gets an empty mask and the reference latents as its picture.

The layers' processors / hooks are put on the UNet for one model call and taken off after it (a
forward hook on the UNet that runs however the call ends), so nothing reaches the next call or job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NAMES = ("reference_only", "reference_adain", "reference_adain+attn")
STYLE_FIDELITY = 0.5  # the extension's "Style Fidelity (only for Balanced mode)" default
NOISE_SEED = 0  # the reference's noise generator, seeded once per pass
_IDLE, _WRITE, _READ = 0, 1, 2


@dataclass(frozen=True)
class Reference:
    """A reference unit's kind (``module``: one of NAMES) and its style fidelity; stands where other
    units have their ControlNet."""

    module: str
    style_fidelity: float = STYLE_FIDELITY

    @property
    def attention(self) -> bool:
        return self.module in ("reference_only", "reference_adain+attn")

    @property
    def adain(self) -> bool:
        return self.module in ("reference_adain", "reference_adain+attn")


def fidelity(reference: Reference, control_mode: str, sdxl: bool, hires: bool) -> float:
    """The extension's style fidelity for a model call (see the module docstring)."""
    value = max(0.0, min(1.0, float(reference.style_fidelity)))
    if sdxl:
        value = value ** 3.0
    if control_mode == "ControlNet is more important":
        return 1.0
    if control_mode == "My prompt is more important" or hires:
        return 0.0
    return value


def self_attention_layers(unet) -> list[tuple[torch.nn.Module, float]]:
    """(attn1, its weight threshold) of the UNet's transformer blocks: down, middle, up, then sorted
    widest first (a stable sort, as the extension), the i-th of n getting i / n."""
    blocks = []
    for part in (*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks):
        for module in part.modules():
            attn1 = getattr(module, "attn1", None)
            if attn1 is not None and hasattr(module, "norm1") and not getattr(module, "only_cross_attention", False):
                blocks.append((module, attn1))
    blocks.sort(key=lambda b: -b[1].to_q.in_features)
    return [(attn1, i / len(blocks)) for i, (_block, attn1) in enumerate(blocks)]


def adain_blocks(unet, sdxl: bool) -> list[tuple[torch.nn.Module, float]]:
    """(module, weight threshold) whose output is one of the LDM UNet's blocks the extension hooks:
    the middle block, ``input_blocks`` 4, 5, 7, 8 (10, 11), ``output_blocks`` 0-7 (SDXL 0-5); those a
    smaller UNet lacks are left out."""
    inputs: list[torch.nn.Module] = [unet.conv_in]
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            inputs.append(attentions[j] if attentions else resnet)
        if getattr(block, "downsamplers", None):
            inputs.append(block.downsamplers[0])
    outputs: list[torch.nn.Module] = []
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            last = j == len(block.resnets) - 1 and getattr(block, "upsamplers", None)
            outputs.append(block.upsamplers[0] if last else attentions[j] if attentions else resnet)
    input_ids = [4, 5, 7, 8] if sdxl else [4, 5, 7, 8, 10, 11]
    output_ids = list(range(6 if sdxl else 8))
    found = [(unet.mid_block, 0.0)] if unet.mid_block is not None else []
    found += [(inputs[i], 2.0 * (1.0 - w / len(input_ids))) for w, i in enumerate(input_ids) if i < len(inputs)]
    found += [(outputs[i], 2.0 * w / len(output_ids)) for w, i in enumerate(output_ids) if i < len(outputs)]
    return found


class _SelfAttention:
    """An ``attn1`` processor: in the reference pass it keeps its input, in the main call it attends
    over ``[x, kept...]``; otherwise (and with nothing kept) the layer's own processor runs."""

    def __init__(self, hooks: "ReferenceHooks", original, threshold: float):
        self.hooks, self.original, self.threshold = hooks, original, threshold
        self.bank: list[torch.Tensor] = []
        self.styles: list[float] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        hooks = self.hooks
        if hooks.mode == _WRITE and hooks.weight > self.threshold:
            self.bank.append(hidden_states.detach().clone())
            self.styles.append(hooks.style)
        elif hooks.mode == _READ and self.bank:
            style = sum(self.styles) / len(self.styles)
            joined = torch.cat([hidden_states, *(b.to(hidden_states.dtype) for b in self.bank)], dim=1)
            self.bank, self.styles = [], []
            out = self.original(attn, hidden_states, joined, attention_mask, temb, **kwargs)
            uncond = hooks.uncond_rows
            if uncond is None or not bool(uncond.any()) or style <= 1e-5:
                return out
            plain = out.clone()
            plain[uncond] = self.original(attn, hidden_states[uncond], None, attention_mask, temb, **kwargs)
            return style * plain + (1.0 - style) * out
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


class _AdaIN:
    """A forward hook on a block: in the reference pass it keeps the output's per-channel mean and
    variance, in the main call it gives the output those statistics."""

    EPS = 1e-6

    def __init__(self, hooks: "ReferenceHooks", threshold: float):
        self.hooks, self.threshold = hooks, threshold
        self.means: list[torch.Tensor] = []
        self.variances: list[torch.Tensor] = []
        self.styles: list[float] = []

    def __call__(self, module, args, output):
        hooks = self.hooks
        x = output[0] if isinstance(output, tuple) else output
        if hooks.mode == _WRITE and hooks.weight > self.threshold:
            var, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
            self.means.append(mean)
            self.variances.append(var)
            self.styles.append(hooks.style)
            return None
        if hooks.mode != _READ or not self.means:
            return None
        style = sum(self.styles) / len(self.styles)
        mean_ref = sum(self.means) / len(self.means)
        std_ref = (sum(self.variances) / len(self.variances)).clamp_min(self.EPS).sqrt()
        self.means, self.variances, self.styles = [], [], []
        xf = x.float()
        var, mean = torch.var_mean(xf, dim=(2, 3), keepdim=True, correction=0)
        y = (xf - mean) / var.clamp_min(self.EPS).sqrt() * std_ref + mean_ref
        uncond = hooks.uncond_rows
        if uncond is not None and bool(uncond.any()) and style > 1e-5:
            plain = y.clone()
            plain[uncond] = xf[uncond]
            y = style * plain + (1.0 - style) * y
        y = y.to(x.dtype)
        return (y, *output[1:]) if isinstance(output, tuple) else y


class ReferenceHooks:
    """One pass's reference units on one UNet. ``run(x, t, cond, units)`` before a model call runs
    each acting unit's reference pass and leaves the layers reading for the call; they come off when
    the call ends (or ``remove``)."""

    def __init__(self, model, hires: bool = False):
        self.model = model
        self.unet = model.unet
        self.sdxl = model.spec.family == "sdxl"
        self.hires = hires
        self.mode = _IDLE
        self.weight = 0.0
        self.style = 0.0
        self.uncond_rows: torch.Tensor | None = None
        self.generator = torch.Generator().manual_seed(NOISE_SEED)
        self._latents: dict[int, torch.Tensor] = {}
        self._alphas: torch.Tensor | None = None
        self._undo: list = []

    def latents(self, index: int, hint: torch.Tensor) -> torch.Tensor:
        """The unit's fitted map (1, 3, H, W) in [0, 1] through the VAE (once per pass)."""
        if index not in self._latents:
            from . import model_ops  # here: it loads the model stack, which this module need not

            self._latents[index] = model_ops.encode_pixels(self.model, hint[:, :3].float() * 2 - 1)
        return self._latents[index]

    def alphas_cumprod(self) -> torch.Tensor:
        if self._alphas is None:
            from .sigma_schedules import TrainingSigmas

            self._alphas = TrainingSigmas.from_config(
                rescale_betas_zero_snr=bool(self.model.spec.zero_terminal_snr)).alphas_cumprod
        return self._alphas

    def noised(self, latents: torch.Tensor, t: torch.Tensor, rows: int) -> torch.Tensor:
        """The reference latents at the call's timestep (q_sample), one row per row of the call."""
        alphas = self.alphas_cumprod()
        steps = torch.round(t.detach().float().cpu()).long().clamp(0, len(alphas) - 1).reshape(-1)
        a = alphas[steps].view(-1, 1, 1, 1) if steps.numel() > 1 else alphas[steps[0]].view(1, 1, 1, 1)
        start = latents.float().cpu().expand(rows, -1, -1, -1)
        noise = torch.randn(start.shape, generator=self.generator)
        return a.sqrt() * start + (1 - a).sqrt() * noise

    def install(self, attention: bool, adain: bool) -> None:
        self.remove()
        if attention:
            for attn, threshold in self_attention_layers(self.unet):
                original = attn.processor
                attn.set_processor(_SelfAttention(self, original, threshold))
                self._undo.append(lambda a=attn, p=original: a.set_processor(p))
        if adain:
            for module, threshold in adain_blocks(self.unet, self.sdxl):
                self._undo.append(module.register_forward_hook(_AdaIN(self, threshold)).remove)

    def remove(self) -> None:
        """The UNet's own processors back, the hooks off."""
        self.mode = _IDLE
        undo, self._undo = self._undo, []
        for step in reversed(undo):
            step()

    @torch.no_grad()
    def run(self, x: torch.Tensor, t: torch.Tensor, cond: dict,
            units: list[tuple[int, Reference, float, str, torch.Tensor]]) -> None:
        """``units``: the acting reference units as (index, reference, weight, control mode, fitted map).
        Runs their reference passes and leaves the layers reading for the UNet's next call."""
        if not units:
            return
        self.install(any(u[1].attention for u in units), any(u[1].adain for u in units))
        unet, dtype, family = self.unet, self.model.policy.unet_dtype, self.model.family
        mark = cond.get("control_mark")
        self.uncond_rows = None if mark is None else (mark == 0).to(x.device)
        try:
            for index, reference, weight, mode, hint in units:
                ref_x = self.noised(self.latents(index, hint), t, x.shape[0]).to(x.device)
                if unet.config.in_channels == 9:  # an inpainting UNet: empty mask, the reference as picture
                    picture = self.latents(index, hint).to(x.device).expand(x.shape[0], -1, -1, -1)
                    ref_x = torch.cat([ref_x, torch.zeros_like(ref_x[:, :1]), picture.to(ref_x.dtype)], dim=1)
                self.mode, self.weight = _WRITE, float(weight)
                self.style = fidelity(reference, mode, self.sdxl, self.hires)
                unet(ref_x.to(dtype), t, encoder_hidden_states=cond["context"].to(dtype),
                     added_cond_kwargs=family.added_cond(cond, dtype))
            self.mode = _READ
        except BaseException:
            self.remove()
            raise
        hook = unet.register_forward_hook(lambda *_: self.remove(), always_call=True)
        self._undo.insert(0, hook.remove)
