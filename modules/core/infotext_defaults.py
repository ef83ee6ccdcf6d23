"""A1111's reading of an infotext, defaults included (``parse_generation_parameters``).

`infotext.parse_infotext` reads only what the text says. A1111's reader also fills in what a
missing key means (no ``Clip skip`` = 1, no ``RNG`` = GPU, no ``Hires sampler`` = "Use same
sampler", ...) and splits an old combined sampler name ("DPM++ 2M Karras") into sampler and
schedule type. `parse_generation_parameters` here gives that dict, as png-info and the
``infotext_utils`` shim answer it; the value types follow A1111 (strings from the text, the
filled defaults as A1111 writes them).
"""

from __future__ import annotations

from . import samplers
from .infotext import parse_infotext
from .prompt_parser import parse_prompt_attention

# (key, what its absence means), in A1111's order
_DEFAULTS: tuple[tuple[str, object], ...] = (
    ("Clip skip", "1"),
    ("Hires resize-1", 0),
    ("Hires resize-2", 0),
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
    ("Refiner switch by sampling steps", False),
)


# The infotext keys a paste reads into controls or settings (A1111's infotext_skip_pasting choices)
PASTE_KEYS = ("Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Distilled CFG Scale",
              "Seed", "Size-1", "Size-2", "Batch size", "Variation seed", "Variation seed strength",
              "Seed resize from-1", "Seed resize from-2", "Denoising strength", "Clip skip", "Tiling",
              "Hires upscale", "Hires steps", "Hires upscaler", "Hires resize-1", "Hires resize-2",
              "Hires checkpoint", "Hires sampler", "Hires schedule type", "Hires prompt", "Hires negative prompt",
              "Refiner", "Refiner switch at", "Hires refiner", "Image CFG scale", "Mask blur", "Mask mode",
              "Masked content", "Inpaint area", "Only masked padding", "Conditional mask weight", "ENSD",
              "Noise multiplier", "Extra noise", "RNG", "Emphasis", "Token merging ratio", "Token merging ratio hr",
              "Old prompt editing timelines", "VAE Encoder", "VAE Decoder", "Pad conds", "Pad conds v0")

# A1111's Compatibility options with an infotext key (OptionInfo(infotext=...)): a paste sets the option.
# (use_old_karras_scheduler_sigmas, use_old_hires_fix_width_height, hires_fix_use_firstpass_conds: A1111
# writes no key for them; the old hires size shows as "Size" = the first pass's and "Hires resize")
COMPATIBILITY_INFOTEXT_TO_OPTION = {"Old prompt editing timelines": "use_old_scheduling"}


def _uses_emphasis(text: str) -> bool:
    return any(weight != 1.0 and chunk != "BREAK" for chunk, weight in parse_prompt_attention(text or ""))


def parse_generation_parameters(text: str | None) -> dict:
    """The infotext as A1111's ``parse_generation_parameters`` returns it."""
    res: dict = parse_infotext(text or "")
    for key, default in _DEFAULTS:
        if key == "Hires resize-2":
            continue  # set together with Hires resize-1, as A1111 does
        if key not in res:
            res[key] = default
            if key == "Hires resize-1":
                res["Hires resize-2"] = 0
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in res and (_uses_emphasis(res["Prompt"]) or _uses_emphasis(res["Negative prompt"])):
        res["Emphasis"] = "Original"
    if res.get("Sampler"):  # "DPM++ 2M Karras" -> Sampler "DPM++ 2M", Schedule type "Karras"
        try:
            explicit = res["Schedule type"] if res["Schedule type"] != "Automatic" else None
            name = samplers.get_spec(res["Sampler"]).name
            res["Sampler"], res["Schedule type"] = samplers.resolve(name if explicit else res["Sampler"], explicit)
        except ValueError:
            pass  # a sampler Easel lacks stays as written, like A1111 keeps unknown names
    return res
