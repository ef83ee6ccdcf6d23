"""The sampling algorithms of k-diffusion (and DPM-Solver-fast), as generators over sigmas.

Protocol (see :mod:`modules.core.ksampling`): ``denoised, x_seen = yield x, sigma`` asks for the
denoiser at ``(x, sigma)``; at a step's start the algorithm continues from ``x_seen`` (what the loop
really fed the model), at intermediate points from its own ``x``. ``noise(sigma, sigma_next)`` gives
unit-variance noise for the interval (a Brownian tree or fresh randn). The final latents are the
generator's return value. Defaults are A1111's: eta 1, s_noise 1, no churn. ``s_noise`` scales the
fresh noise; ``s_churn``/``s_tmin``/``s_tmax`` (Euler, Heun, DPM2) lift each step's sigma inside
[s_tmin, s_tmax] to sigma_hat = sigma * (1 + gamma) by adding noise first (Karras et al. 2022, Alg. 2).

The samplers that add noise take a ``space``: how latents at a sigma are made (:data:`VE`,
k-diffusion's ``x0 + sigma * noise``, or a flow model's ``(1 - sigma) * x0 + sigma * noise``,
:class:`modules.core.flow_matching.FlowSpace`). The ODE steps are the same in both (the derivative
``(x - denoised) / sigma`` is the flow's velocity); the noise follows the space: ancestral steps go
down and renoise the RF way, the SDE solvers run in the space's half log-SNR ``log(alpha / sigma)``
(ComfyUI's CONST sampling).
"""

from __future__ import annotations

import math

import torch


def _t(sigma):
    return -torch.as_tensor(sigma).log()


def _sigma(t):
    return torch.as_tensor(t).neg().exp()


class VarianceExploding:
    """k-diffusion's space: ``x = x0 + sigma * noise`` (alpha 1, half log-SNR ``-log sigma``)."""

    flow = False

    def alpha(self, sigma):
        return 1.0

    def half_log_snr(self, sigma):
        return _t(sigma)

    def sigma_of(self, half_log_snr):
        return _sigma(half_log_snr)

    def first(self, sigmas):
        """The sigmas an SDE solver runs on (here: as given)."""
        return sigmas

    def level(self, ve_sigma: float) -> float:
        """The sigma of this space with the signal-to-noise ratio of k-diffusion's ``ve_sigma``."""
        return ve_sigma

    def ancestral_down(self, sigma, sigma_next, eta: float):
        return ancestral_split(sigma, sigma_next, eta)[0]

    def lift(self, sigma_from, sigma_to):
        """(scale, noise size) that take latents at ``sigma_from`` to ``sigma_to`` >= it:
        ``scale * x + size * noise``."""
        return 1.0, max(sigma_to ** 2 - sigma_from ** 2, 0) ** 0.5


def _derivative(x, sigma, denoised):
    return (x - denoised) / sigma


def ancestral_split(sigma, sigma_next, eta: float = 1.0):
    """(sigma_down, sigma_up): deterministic target and fresh-noise size of an ancestral step."""
    if not eta:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - sigma_up ** 2) ** 0.5, sigma_up


VE = VarianceExploding()


def _churn(x, sigmas, i, noise, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float):
    """(x, sigma_hat) for step i: with churn, the latents lifted from sigma to sigma_hat by fresh
    noise. The noise is drawn at every step once churn is on (also where gamma is 0), as k-diffusion
    draws it, so the per-image generators advance the same way."""
    sigma = sigmas[i]
    if not s_churn:
        return x, sigma
    gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    eps = noise(sigma, sigmas[i + 1]) * s_noise
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (gamma + 1)
    return x + eps * (sigma_hat ** 2 - sigma ** 2) ** 0.5, sigma_hat


def euler(x, sigmas, noise, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
          s_noise: float = 1.0):
    for i in range(len(sigmas) - 1):
        x, sigma = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised, x = yield x, sigma
        x = x + _derivative(x, sigma, denoised) * (sigmas[i + 1] - sigma)
    return x


def _ancestral_steps(x, sigmas, noise, eta, step_down, noise_on_last: bool, s_noise: float = 1.0, space=VE):
    """The frame of the ancestral samplers: ``step_down`` from sigma to sigma_down (Euler when
    sigma_down is 0), then sigma_up of fresh noise (also on the last step, of size 0, where the
    k-diffusion sampler draws it there too). On a flow (ComfyUI's RF samplers) sigma_down is
    ``sigma_next * (1 + (sigma_next / sigma - 1) * eta)`` and the latents are rescaled from
    sigma_down to sigma_next as they are renoised (no noise drawn on the last step or with eta 0)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, x = yield x, sigma
        if space.flow:
            if sigma_next == 0:
                x = yield from _euler_to(x, sigma, sigma_next, denoised)
                continue
            down = space.ancestral_down(sigma, sigma_next, eta)
            x = yield from step_down(x, sigma, down, denoised)
            if eta > 0:
                scale, up = space.lift(down, sigma_next)
                x = scale * x + noise(sigma, sigma_next) * s_noise * up
            continue
        down, up = ancestral_split(sigma, sigma_next, eta)
        if down == 0:
            x = yield from _euler_to(x, sigma, down, denoised)
        else:
            x = yield from step_down(x, sigma, down, denoised)
        if noise_on_last or sigma_next > 0:
            x = x + noise(sigma, sigma_next) * s_noise * up
    return x


def _euler_to(x, sigma, target, denoised):
    """Euler's step: no model call, but a generator like the other step functions."""
    return x + _derivative(x, sigma, denoised) * (target - sigma)
    yield  # never reached; its presence makes this a generator


def euler_ancestral(x, sigmas, noise, eta: float = 1.0, space=VE):
    return (yield from _ancestral_steps(x, sigmas, noise, eta, _euler_to, noise_on_last=False, space=space))


def _heun_step(x, sigma, sigma_next):
    """Heun's step from sigma to sigma_next (Euler's when sigma_next is 0)."""
    denoised, x = yield x, sigma
    slope = _derivative(x, sigma, denoised)
    dt = sigma_next - sigma
    if sigma_next == 0:
        return x + slope * dt
    x_trial = x + slope * dt
    denoised_trial, _ = yield x_trial, sigma_next
    return x + (slope + _derivative(x_trial, sigma_next, denoised_trial)) / 2 * dt


def heun(x, sigmas, noise, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
         s_noise: float = 1.0):
    for i in range(len(sigmas) - 1):
        x, sigma = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        x = yield from _heun_step(x, sigma, sigmas[i + 1])
    return x


def _restart_plan(sigmas, space=VE) -> list[tuple]:
    """A1111's Restart recipe: the (sigma, sigma_next) pairs of its Heun steps. From 20 steps on,
    the main schedule is a Karras one with fewer steps, and at the sigma nearest 0.1 the sampler
    jumps back to the sigma nearest 2 and walks down a Karras segment again (9 steps once; from 36
    steps on steps // 4 steps, twice), so the number of steps stays the requested one. On a flow
    0.1 and 2 are the flow sigmas of the same signal-to-noise ratio (1/11 and 2/3)."""
    from .sigma_schedules import karras_range

    steps = len(sigmas) - 1
    restarts = {}
    if steps >= 20:
        length, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras_range(steps - length * times, float(sigmas[-2]), float(sigmas[0])).to(sigmas.device)
        restarts = {space.level(0.1): (length + 1, times, space.level(2.0))}
    at_index = {int(torch.argmin((sigmas - at).abs())): plan for at, plan in restarts.items()}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in at_index:
            length, times, top = at_index[i + 1]
            top_index = int(torch.argmin((sigmas - top).abs()))
            if top_index < i + 1:
                # from sigmas[top_index] down to sigmas[i + 1], without the appended 0
                segment = karras_range(length, float(sigmas[i + 1]), float(sigmas[top_index]))[:-1].to(sigmas.device)
                pairs.extend(list(zip(segment[:-1], segment[1:])) * times)
    return pairs


def restart(x, sigmas, noise, s_noise: float = 1.0, space=VE):
    """A1111's Restart sampler (Xu et al. 2023): Heun steps; before each jump back up, fresh noise
    lifts the latents from the current sigma to the higher one (on a flow also rescaling them)."""
    last = None
    for sigma, sigma_next in _restart_plan(sigmas, space):
        if last is not None and last < sigma:
            scale, up = space.lift(last, sigma)
            x = scale * x + noise(last, sigma) * s_noise * up
        x = yield from _heun_step(x, sigma, sigma_next)
        last = sigma_next
    return x


def _dpm_2_step(x, sigma, target, denoised):
    """DPM2's midpoint step from sigma to target (> 0): yields the midpoint call, returns x."""
    sigma_mid = sigma.log().lerp(torch.as_tensor(target).log(), 0.5).exp()
    x_mid = x + _derivative(x, sigma, denoised) * (sigma_mid - sigma)
    denoised_mid, _ = yield x_mid, sigma_mid
    return x + _derivative(x_mid, sigma_mid, denoised_mid) * (target - sigma)


def dpm_2(x, sigmas, noise, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
          s_noise: float = 1.0):
    for i in range(len(sigmas) - 1):
        x, sigma = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = sigmas[i + 1]
        denoised, x = yield x, sigma
        if sigma_next == 0:
            x = x + _derivative(x, sigma, denoised) * (sigma_next - sigma)
        else:
            x = yield from _dpm_2_step(x, sigma, sigma_next, denoised)
    return x


def dpm_2_ancestral(x, sigmas, noise, eta: float = 1.0, s_noise: float = 1.0, space=VE):
    return (yield from _ancestral_steps(x, sigmas, noise, eta, _dpm_2_step, noise_on_last=True, s_noise=s_noise,
                                        space=space))


def _lms_weight(order: int, s: list[float], i: int, j: int) -> float:
    """Integral over [s_i, s_{i+1}] of the Lagrange basis polynomial of s_{i-j} on s_i..s_{i-order+1}."""
    from scipy import integrate

    def basis(tau):
        value = 1.0
        for k in range(order):
            if k != j:
                value *= (tau - s[i - k]) / (s[i - j] - s[i - k])
        return value

    return integrate.quad(basis, s[i], s[i + 1], epsrel=1e-4)[0]


def lms(x, sigmas, noise, order: int = 4):
    s = [float(v) for v in sigmas]
    history = []
    for i in range(len(sigmas) - 1):
        denoised, x = yield x, sigmas[i]
        history = (history + [_derivative(x, sigmas[i], denoised)])[-order:]
        n = min(i + 1, order)
        x = x + sum(_lms_weight(n, s, i, j) * d for j, d in enumerate(reversed(history)))
    return x


def _dpmpp_2s_step(x, sigma, target, denoised):
    """DPM-Solver++(2S) from sigma to target through the midpoint in log sigma."""
    t, t_target = _t(sigma), _t(target)
    h = t_target - t
    s = t + h / 2
    x_mid = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
    denoised_mid, _ = yield x_mid, _sigma(s)
    return (_sigma(t_target) / _sigma(t)) * x - (-h).expm1() * denoised_mid


def _rf_2s_step(x, sigma, target, denoised, space):
    """ComfyUI's RF DPM++(2S) step from sigma to target: a midpoint half way in the flow's half
    log-SNR (0.9999 from sigma 1, where it is infinite), then Euler from sigma with the midpoint's
    prediction."""
    if sigma == 1:
        sigma_mid = torch.as_tensor(0.9999)
    else:
        lam, lam_target = space.half_log_snr(sigma), space.half_log_snr(target)
        sigma_mid = space.sigma_of(lam + (lam_target - lam) / 2)
    ratio = sigma_mid / sigma
    denoised_mid, _ = yield ratio * x + (1 - ratio) * denoised, sigma_mid
    ratio = target / sigma
    return ratio * x + (1 - ratio) * denoised_mid


def dpmpp_2s_ancestral(x, sigmas, noise, eta: float = 1.0, s_noise: float = 1.0, space=VE):
    step = _dpmpp_2s_step
    if space.flow:
        def step(x, sigma, target, denoised):
            return (yield from _rf_2s_step(x, sigma, target, denoised, space))
    return (yield from _ancestral_steps(x, sigmas, noise, eta, step, noise_on_last=False, s_noise=s_noise,
                                        space=space))


def dpmpp_2m(x, sigmas, noise):
    previous = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, x = yield x, sigma
        t, t_next = _t(sigma), _t(sigma_next)
        h = t_next - t
        if previous is None or sigma_next == 0:
            blend = denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            blend = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * blend
        previous = denoised
    return x


def dpmpp_sde(x, sigmas, noise, eta: float = 1.0, r: float = 0.5, s_noise: float = 1.0, space=VE):
    """DPM-Solver++ (stochastic) in the space's half log-SNR lambda: an ancestral step to lambda + r h,
    then the full step on a blend of both predictions (ComfyUI's form, alpha 1 in k-diffusion's space)."""
    sigmas = space.first(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, x = yield x, sigma
        if sigma_next == 0:
            x = x + _derivative(x, sigma, denoised) * (sigma_next - sigma)
            continue
        lam, lam_next = space.half_log_snr(sigma), space.half_log_snr(sigma_next)
        h = lam_next - lam
        lam_mid = lam + h * r
        sigma_mid = space.sigma_of(lam_mid)
        alpha, alpha_mid, alpha_next = space.alpha(sigma), space.alpha(sigma_mid), space.alpha(sigma_next)
        # to the intermediate lambda, with noise
        down, up = ancestral_split(_sigma(lam), _sigma(lam_mid), eta)
        h_down = _t(down) - lam
        x_mid = (alpha_mid / alpha) * (-h_down).exp() * x - alpha_mid * (-h_down).expm1() * denoised
        # (k-diffusion asks for the noise at the sigmas of its lambdas, ComfyUI's CONST solver at the
        # flow sigmas themselves)
        here = sigma if space.flow else _sigma(lam)
        x_mid = x_mid + alpha_mid * noise(here, sigma_mid) * s_noise * up
        denoised_mid, _ = yield x_mid, sigma_mid
        # the full step on a blend of both predictions
        down, up = ancestral_split(_sigma(lam), _sigma(lam_next), eta)
        h_down = _t(down) - lam
        weight = 1 / (2 * r)
        blend = (1 - weight) * denoised + weight * denoised_mid
        x = (alpha_next / alpha) * (-h_down).exp() * x - alpha_next * (-h_down).expm1() * blend
        x = x + alpha_next * noise(here, sigma_next if space.flow else _sigma(lam_next)) * s_noise * up
    return x


def dpmpp_2m_sde(x, sigmas, noise, eta: float = 1.0, solver: str = "midpoint", s_noise: float = 1.0, space=VE):
    if solver not in ("midpoint", "heun"):
        raise ValueError(f"solver must be 'midpoint' or 'heun', not {solver!r}")
    sigmas = space.first(sigmas)
    previous, h_previous = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, x = yield x, sigma
        if sigma_next == 0:
            x = denoised
            previous = denoised
            continue
        h = space.half_log_snr(sigma_next) - space.half_log_snr(sigma)
        alpha_next = space.alpha(sigma_next)
        decay = (-h - eta * h).expm1().neg()  # 1 - exp(-(1 + eta) h)
        x = sigma_next / sigma * (-eta * h).exp() * x + alpha_next * decay * denoised
        if previous is not None:
            correction = (denoised - previous) * (h / h_previous)
            if solver == "heun":
                x = x + alpha_next * (decay / (-h - eta * h) + 1) * correction
            else:
                x = x + 0.5 * alpha_next * decay * correction
        if eta:
            x = x + noise(sigma, sigma_next) * sigma_next * (-2 * eta * h).expm1().neg().sqrt() * s_noise
        previous, h_previous = denoised, h
    return x


def dpmpp_3m_sde(x, sigmas, noise, eta: float = 1.0, s_noise: float = 1.0, space=VE):
    sigmas = space.first(sigmas)
    d_1 = d_2 = None  # the last two predictions
    h_1 = h_2 = None  # and their step sizes
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, x = yield x, sigma
        h = None
        if sigma_next == 0:
            x = denoised
        else:
            h = space.half_log_snr(sigma_next) - space.half_log_snr(sigma)
            h_eta = h * (eta + 1)
            alpha_next = space.alpha(sigma_next)
            x = sigma_next / sigma * (-h * eta).exp() * x + alpha_next * (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                slope_0 = (denoised - d_1) / r0
                slope_1 = (d_1 - d_2) / r1
                first = slope_0 + (slope_0 - slope_1) * r0 / (r0 + r1)
                second = (slope_0 - slope_1) / (r0 + r1)
                x = x + alpha_next * (phi_2 * first - (phi_2 / h_eta - 0.5) * second)
            elif h_1 is not None:
                x = x + alpha_next * phi_2 * (denoised - d_1) / (h_1 / h)
            if eta:
                x = x + noise(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
    return x


def lcm(x, sigmas, noise, space=VE):
    """LCM's multistep sampling: each step jumps to the prediction and noises it afresh to the next
    sigma the space's way (ComfyUI's ``sample_lcm``)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, x = yield x, sigma
        x = denoised
        if sigma_next > 0:
            scale, up = space.lift(0.0, sigma_next)
            x = scale * denoised + up * noise(sigma, sigma_next)
    return x


def plms(x, sigmas, noise):
    """PLMS (Liu et al. 2022) as A1111's sampler steps, on the ODE's derivative instead of the noise
    prediction (on a flow DDIM's step is Euler's; a blend of noise predictions is undefined at sigma
    1 there, a blend of velocities is not: ComfyUI's iPNDM's form): the first step pseudo improved
    Euler (Heun through the next sigma), then Euler steps along PNDM's linear multistep blends of
    the last 2, 3, 4 derivatives."""
    history = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, x = yield x, sigma
        d = _derivative(x, sigma, denoised)
        if not history and sigma_next > 0:
            x_trial = x + d * (sigma_next - sigma)
            denoised_trial, _ = yield x_trial, sigma_next
            slope = (d + _derivative(x_trial, sigma_next, denoised_trial)) / 2
        elif len(history) == 1:
            slope = (3 * d - history[-1]) / 2
        elif len(history) == 2:
            slope = (23 * d - 16 * history[-1] + 5 * history[-2]) / 12
        elif len(history) == 3:
            slope = (55 * d - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        else:
            slope = d
        history = (history + [d])[-3:]
        x = x + slope * (sigma_next - sigma)
    return x


# ---- DPM-Solver-fast (Lu et al. 2022), fixed steps with orders 3, ..., 3, then 2/1 ---------------

def _ancestral_target(t, t_next, t_end, eta: float, space=VE):
    """An ancestral DPM-Solver step in log-SNR time: (where its deterministic part goes, the scale
    and the size of the fresh noise that take it to t_next); eta 0: (t_next, 1, 0)."""
    if not eta:
        return t_next, 1.0, 0.0
    down = space.ancestral_down(_sigma(t), _sigma(t_next), eta)
    target = torch.minimum(t_end, _t(down))
    scale, up = space.lift(_sigma(target), _sigma(t_next))
    return target, scale, up


def _dpm_solver_pair(x, t, t_next, order: int, eps):
    """DPM-Solver from t to t_next (log-SNR time, t = -log sigma) from the same model calls:
    (the lower-order solution, the order-``order`` one). ``eps`` is the noise prediction at (x, t);
    yields the extra model calls. Order 2 pairs first and second order (r1 = 1/2), order 3 second
    (r1 = 1/3) and third, as DPM-Solver-12 / 23 compare them."""
    h = t_next - t
    first = x - _sigma(t_next) * h.expm1() * eps
    if order == 1:
        return first, first
    r1 = 1 / 2 if order == 2 else 1 / 3
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    denoised_1, _ = yield u1, _sigma(s1)
    eps_1 = (u1 - denoised_1) / _sigma(s1)
    second = first - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_1 - eps)
    if order == 2:
        return first, second
    r2 = 2 / 3
    s2 = t + r2 * h
    u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
          - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_1 - eps))
    denoised_2, _ = yield u2, _sigma(s2)
    eps_2 = (u2 - denoised_2) / _sigma(s2)
    return second, first - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_2 - eps)


def dpm_fast(x, sigma_min: float, sigma_max: float, n: int, noise, eta: float = 1.0, s_noise: float = 1.0,
             space=VE):
    """k-diffusion's ``sample_dpm_fast``: ``n`` model calls between sigma_max and sigma_min (it ends
    at sigma_min, not 0); with eta > 0 each step is ancestral."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("DPM fast needs sigma_min and sigma_max > 0")
    t_start, t_end = _t(torch.tensor(sigma_max)), _t(torch.tensor(sigma_min))
    m = math.floor(n / 3) + 1
    times = torch.linspace(float(t_start), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        t, t_next = times[i], times[i + 1]
        t_target, scale, up = _ancestral_target(t, t_next, t_end, eta, space)
        denoised, x = yield x, _sigma(t)
        eps = (x - denoised) / _sigma(t)
        _, x = yield from _dpm_solver_pair(x, t, t_target, order, eps)
        x = scale * x + up * s_noise * noise(_sigma(t), _sigma(t_next))
    return x


class _StepSizeController:
    """A PID controller for an adaptive ODE step size in log-SNR time (k-diffusion's default gains:
    integral only). ``propose(error)`` says whether the step just tried is accepted and rescales
    ``h`` for the next try, with an arctan limiter on the factor."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float, eps: float = 1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose(self, error) -> bool:
        inv = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accepted = factor >= self.accept_safety
        if accepted:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accepted


def dpm_adaptive(x, sigma_min: float, sigma_max: float, n: int, noise, eta: float = 1.0, s_noise: float = 1.0,
                 order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                 pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81,
                 space=VE):
    """k-diffusion's ``sample_dpm_adaptive`` (DPM-Solver-12 / 23 with step-size control): each try
    takes a lower- and a higher-order step from the same model calls, compares them and accepts the
    higher one when the error is small enough; the step size follows. The number of model calls is
    not known before sampling ends (``n``, the step count, is ignored, as in A1111). A rejected try is
    retried from the same point (its first model call repeated, as k-diffusion does)."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("DPM adaptive needs sigma_min and sigma_max > 0")
    if order not in (2, 3):
        raise ValueError("DPM adaptive's order must be 2 or 3")
    t_start, t_end = _t(torch.tensor(sigma_max)), _t(torch.tensor(sigma_min))
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    controller = _StepSizeController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    s, x_prev = t_start, x
    while s < t_end - 1e-5:
        t = torch.minimum(t_end, s + controller.h)
        target, scale, up = _ancestral_target(s, t, t_end, eta, space)
        denoised, x = yield x, _sigma(s)
        eps = (x - denoised) / _sigma(s)
        low, high = yield from _dpm_solver_pair(x, s, target, order, eps)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(low.abs(), x_prev.abs()))
        error = torch.linalg.norm((low - high) / delta) / x.numel() ** 0.5
        if controller.propose(error):
            x_prev = low
            x = scale * high + up * s_noise * noise(_sigma(s), _sigma(t))
            s = t
    return x
