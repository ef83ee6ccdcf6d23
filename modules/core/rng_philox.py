"""NVIDIA's GPU random numbers on any machine: A1111's ``NV`` randn source.

``torch.randn(..., device="cuda")`` draws from cuRAND's Philox4x32-10 counter-based generator and
turns its 32-bit outputs into normals with the Box-Muller transform. A1111 (``rng_philox``)
computes the same numbers with numpy so that a seed gives NVIDIA's noise on a CPU, an AMD card or
a Mac; this module keeps that contract (same counters, same key, same float32 constants and the
same float64 arithmetic, so its values equal A1111's ``NV`` noise):

* the key is the 64-bit seed, split into its low and high 32-bit words;
* element ``i`` of a draw uses the counter ``(offset, 0, i, 0)``; the first two 32-bit outputs feed
  Box-Muller, whose first (sine) normal is the value; the other two outputs are unused;
* every draw moves ``offset`` on by one, whatever its size (an image's per-step noise continues
  from its initial noise that way).

Pure numpy: no torch, no global state.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Philox4x32 round multipliers and Weyl key increments (Salmon et al., "Random123", 2011)
_MUL_A, _MUL_B = 0xD2511F53, 0xCD9E8D57
_KEY_STEP_A, _KEY_STEP_B = 0x9E3779B9, 0xBB67AE85
_ROUNDS = 10
_MASK32 = 0xFFFFFFFF

# cuRAND's Box-Muller scale factors, as float32 (2**-32 and 2**-32 * 2 pi); the arithmetic on them
# is done in float64, as A1111's numpy code does, so the values match its NV noise to the bit
_TO_UNIT = np.float64(np.float32(2.3283064e-10))
_TO_ANGLE = np.float64(np.float32(2.3283064e-10 * 6.2831855))
_HALF_UNIT = np.float64(np.float32(2.3283064e-10) / np.float32(2))
_HALF_ANGLE = np.float64(np.float32(2.3283064e-10 * 6.2831855) / np.float32(2))


def _mulhilo(a: np.ndarray, multiplier: int) -> tuple[np.ndarray, np.ndarray]:
    product = a.astype(np.uint64) * np.uint64(multiplier)
    return (product >> np.uint64(32)).astype(np.uint32), (product & np.uint64(_MASK32)).astype(np.uint32)


def philox4x32(counter: Sequence[np.ndarray], key: tuple[int, int], rounds: int = _ROUNDS) -> list[np.ndarray]:
    """Philox4x32 on counters given as four uint32 arrays (words 0..3); ``key`` is (low, high)."""
    c0, c1, c2, c3 = (np.asarray(word, dtype=np.uint32) for word in counter)
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    for round_index in range(rounds):
        if round_index:
            k0, k1 = (k0 + _KEY_STEP_A) & _MASK32, (k1 + _KEY_STEP_B) & _MASK32
        hi_a, lo_a = _mulhilo(c0, _MUL_A)
        hi_b, lo_b = _mulhilo(c2, _MUL_B)
        c0, c1, c2, c3 = hi_b ^ c1 ^ np.uint32(k0), lo_b, hi_a ^ c3 ^ np.uint32(k1), lo_a
    return [c0, c1, c2, c3]


def box_muller_first(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The sine half of Box-Muller for uint32 pairs, as float32 (cuRAND's ``_curand_box_muller``)."""
    u = x.astype(np.float64) * _TO_UNIT + _HALF_UNIT  # in (0, 1]: the log never sees 0
    angle = y.astype(np.float64) * _TO_ANGLE + _HALF_ANGLE
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(angle)).astype(np.float32)


class PhiloxRandn:
    """Normal draws equal to ``torch.randn`` on a CUDA device for the same seed (first draw)."""

    def __init__(self, seed: int, offset: int = 0):
        seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.key = (seed & _MASK32, seed >> 32)
        self.offset = int(offset)

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        count = int(np.prod(shape, dtype=np.int64))
        if count > 2**32:
            raise ValueError(f"a draw of {count} values is more than Philox's 2**32 counters per offset")
        index = np.arange(count, dtype=np.uint64).astype(np.uint32)
        zeros = np.zeros(count, dtype=np.uint32)
        offset = np.full(count, self.offset & _MASK32, dtype=np.uint32)
        self.offset += 1
        out = philox4x32((offset, zeros, index, zeros), self.key)
        return box_muller_first(out[0], out[1]).reshape(shape)

    def skip(self, draws: int = 1) -> None:
        """Move on as if ``draws`` draws had been made (their size does not matter)."""
        self.offset += int(draws)
