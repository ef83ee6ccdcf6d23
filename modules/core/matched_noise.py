"""Noise that looks like a picture's known part, to fill an area before it is inpainted
(the idea of A1111's "Outpainting mk2", after g-diffuser: the new area starts from noise whose
frequency spectrum and colours follow the old picture, so the sampler has something plausible
to work from instead of black or smeared edges).

:func:`matched_noise` works on float RGB arrays in 0..1:

1. the known pixels (mask 0) are kept, the unknown ones replaced by the known pixels' mean, and
   the spectrum's magnitude of that picture is measured per channel;
2. white noise (from a fixed seed: the result depends only on its inputs) is mixed from a grey
   and a coloured part by ``color_variation`` (0: grey noise, 1: fully coloured);
3. the noise's spectrum is reshaped to the picture's magnitude raised to ``falloff``: lower
   exponents flatten the spectrum, keeping more fine detail; higher ones keep only the broad shapes;
4. per channel, the shaped noise's values are mapped onto the known pixels' distribution
   (histogram matching by ranks), so the fill has the picture's colours and contrast;
5. the result is the known pixels where the mask is 0, the matched noise where it is 1, a blend
   between.
"""

from __future__ import annotations

import numpy as np

__all__ = ["matched_noise"]


def _match_histogram(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``values`` (1-D) remapped so their ranks take the quantiles of ``reference`` (1-D)."""
    order = np.argsort(values, kind="stable")
    quantiles = (np.arange(values.size) + 0.5) / values.size
    ref_sorted = np.sort(reference)
    ref_quantiles = (np.arange(ref_sorted.size) + 0.5) / ref_sorted.size
    matched = np.empty_like(values)
    matched[order] = np.interp(quantiles, ref_quantiles, ref_sorted)
    return matched


def matched_noise(image: np.ndarray, mask: np.ndarray, falloff: float = 1.0, color_variation: float = 0.05,
                  seed: int = 0) -> np.ndarray:
    """``image``: H x W x 3 floats in 0..1; ``mask``: H x W floats in 0..1 (1: to be filled).
    Returns the filled H x W x 3 image, clipped to 0..1."""
    if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
        raise ValueError(f"need an H x W x 3 image and an H x W mask, got {image.shape} and {mask.shape}")
    if not 0.0 <= color_variation <= 1.0:
        raise ValueError(f"color_variation must be in 0..1, got {color_variation}")
    if falloff < 0:
        raise ValueError(f"falloff must not be negative, got {falloff}")
    mask = np.clip(mask.astype(np.float64), 0.0, 1.0)
    image = image.astype(np.float64)
    known = mask < 1e-3
    unknown = mask > 1e-6
    if not known.any() or not unknown.any():
        return image.copy()

    # 1. the known picture's spectrum (unknown pixels set to its mean colour)
    mean_colour = image[known].mean(axis=0)
    reference = np.where(unknown[..., None], mean_colour, image)
    magnitude = np.abs(np.fft.fft2(reference, axes=(0, 1)))

    # 2. grey + coloured white noise
    rng = np.random.default_rng(seed)
    colour_noise = rng.random(image.shape)
    grey_noise = colour_noise.mean(axis=2, keepdims=True)
    noise = color_variation * colour_noise + (1.0 - color_variation) * grey_noise

    # 3. the noise's phases with the picture's magnitudes ** falloff
    phases = np.exp(1j * np.angle(np.fft.fft2(noise, axes=(0, 1))))
    shaped = np.real(np.fft.ifft2(phases * magnitude ** falloff, axes=(0, 1)))

    # 4. per channel, onto the known pixels' values
    filled = image.copy()
    for c in range(3):
        filled[unknown, c] = _match_histogram(shaped[unknown, c], image[known, c])

    # 5. old where known, noise where unknown
    return np.clip(image * (1.0 - mask[..., None]) + filled * mask[..., None], 0.0, 1.0)
