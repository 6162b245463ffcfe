"""IR-SDE sampler: the mean-reverting SDE of Luo et al. (ICML 2023), in the diffusers scheduler style.

Paper: Luo et al., "Image Restoration with Mean-Reverting Stochastic Differential Equations", ICML 2023
(Eq. 1: dx = theta_t (mu - x) dt + sigma_t dw, with sigma_t^2 / theta_t = 2 lambda^2; Eq. 2/3: the marginal
x_t ~ N(mu + (x_0 - mu) e^{-theta_bar_t}, lambda^2 (1 - e^{-2 theta_bar_t})); Eq. 6: the reverse SDE with
score = -eps / sigma_bar_t; Eq. 11-13: the optimal reverse "posterior" step). DA-CLIP (ICLR 2024) restores with it.
Original code: github.com/Algolzw/daclip-uir, ``universal-image-restoration/utils/sde_utils.py`` (class ``IRSDE``).
This is an independent re-implementation, checked step by step against a recorded reference run.

Notation: ``T`` steps indexed t = 1..T (index 0 is the clean state), ``thetas[t]`` the discrete schedule,
``thetas_cumsum[t] = sum_{1..t} thetas`` (``thetas[0]`` is subtracted as in the original), ``dt = -log(eps) /
thetas_cumsum[T]`` so that ``e^{-thetas_cumsum[T] dt} = eps`` (the state at T has forgotten x_0 up to eps),
``lambda = max_sigma / 255`` the stationary std, ``sigma_bars[t] = lambda sqrt(1 - e^{-2 thetas_cumsum[t] dt})``.

Deviation: :meth:`IRSDEScheduler.set_timesteps` with fewer steps than T strides the schedule; the posterior step
then uses the exact transition between the two visited timesteps (``e^{-(thetas_cumsum[t] - thetas_cumsum[s]) dt}``)
and the SDE step integrates theta over the interval. With all T steps both reduce to the original exactly.

Example::

    >>> import torch
    >>> s = IRSDEScheduler(max_sigma=50, T=100, schedule="cosine", eps=0.005)
    >>> mu = torch.rand(1, 3, 8, 8); x = s.noise_state(mu, torch.randn(1, 3, 8, 8))
    >>> for t in s.timesteps:
    ...     eps_hat = torch.zeros_like(x)   # a noise network's output
    ...     x = s.step(eps_hat, t, x, mu=mu, variance_noise=torch.zeros_like(x)).prev_sample
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("cosine", "linear", "constant")
MODES = ("posterior", "sde")


@dataclass
class IRSDESchedulerOutput:
    """Result of one reverse step.

    Attributes:
        prev_sample: ``x_{t_prev}`` (B, C, H, W).
        pred_original_sample: the clean-image estimate ``x0_hat`` from the noise prediction (B, C, H, W).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _theta_schedule(schedule: str, T: int) -> torch.Tensor:
    """``thetas`` of length T + 1 (float32, as the original computes them)."""
    if schedule == "cosine":
        # The improved-DDPM cosine schedule over T + 2 steps, truncated at both ends (betas are used as thetas).
        n = T + 2
        x = torch.linspace(0, n, n + 1, dtype=torch.float32)
        alphas_cumprod = torch.cos(((x / n) + 0.008) / (1 + 0.008) * math.pi * 0.5) ** 2
        alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
        return 1 - alphas_cumprod[1:-1]
    if schedule == "linear":
        n = T + 1
        scale = 1000 / n
        return torch.linspace(scale * 0.0001, scale * 0.02, n, dtype=torch.float32)
    if schedule == "constant":
        return torch.ones(T + 1, dtype=torch.float32)
    raise ValueError(f"schedule {schedule!r} is not one of {SCHEDULES}")


class IRSDEScheduler:
    """Reverse-time sampler of the IR-SDE for a noise-predicting network.

    Args:
        max_sigma: stationary noise level ``lambda`` in 0..255 units (50 -> 50/255); values < 1 are taken as
            already in [0, 1] units, as the original does.
        T: number of discrete training timesteps.
        schedule: theta schedule, one of ``"cosine"``, ``"linear"``, ``"constant"``.
        eps: residual weight of x_0 at t = T (sets ``dt``).
    """

    def __init__(self, max_sigma: float = 50, T: int = 100, schedule: str = "cosine", eps: float = 0.005):
        if not isinstance(T, int) or T < 1:
            raise ValueError(f"T must be a positive int, got {T!r}")
        if not max_sigma > 0:
            raise ValueError(f"max_sigma must be > 0, got {max_sigma!r}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps!r}")
        self.config = {"max_sigma": max_sigma, "T": T, "schedule": schedule, "eps": eps}
        self.T = T
        self.max_sigma = max_sigma / 255 if max_sigma >= 1 else max_sigma  # lambda
        thetas = _theta_schedule(schedule, T)
        self.thetas = thetas  # (T+1,)
        self.sigmas = torch.sqrt(self.max_sigma**2 * 2 * thetas)  # sigma_t, Eq. 1 with sigma_t^2 = 2 lambda^2 theta_t
        self.thetas_cumsum = torch.cumsum(thetas, dim=0) - thetas[0]  # (T+1,), thetas_cumsum[0] = 0
        self.dt = -1 / self.thetas_cumsum[-1] * math.log(eps)  # 0-dim tensor
        self.sigma_bars = torch.sqrt(self.max_sigma**2 * (1 - torch.exp(-2 * self.thetas_cumsum * self.dt)))
        self.set_timesteps(None)

    # ----------------------------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None) -> None:
        """Choose the reverse timesteps: all of T..1 (``None`` or T), or ``num_inference_steps`` of them evenly
        spaced from T down to 1 (always both ends, so the last step lands on the clean state)."""
        if num_inference_steps is None:
            num_inference_steps = self.T
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= self.T:
            raise ValueError(f"num_inference_steps must be an int in [1, {self.T}] or None, got {num_inference_steps!r}")
        self.num_inference_steps = num_inference_steps
        if num_inference_steps == self.T:
            ts = list(range(self.T, 0, -1))
        elif num_inference_steps == 1:
            ts = [self.T]
        else:
            ts = sorted({round(self.T - i * (self.T - 1) / (num_inference_steps - 1)) for i in range(num_inference_steps)},
                        reverse=True)
        self.timesteps = torch.tensor(ts, dtype=torch.long)
        self._prev = {t: (ts[i + 1] if i + 1 < len(ts) else 0) for i, t in enumerate(ts)}

    def previous_timestep(self, t: int | torch.Tensor) -> int:
        """The timestep the step from ``t`` lands on (0 after the last)."""
        t = int(t)
        if t not in self._prev:
            raise ValueError(f"timestep {t} is not in the current timesteps {self.timesteps.tolist()}")
        return self._prev[t]

    # ----------------------------------------------------------------------------------------------------------
    def _at(self, v: torch.Tensor, t: int, like: torch.Tensor) -> torch.Tensor:
        return v[t].to(device=like.device, dtype=like.dtype)

    def _dt(self, like: torch.Tensor) -> torch.Tensor:
        return self.dt.to(device=like.device, dtype=like.dtype)

    def noise_state(self, mu: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Initial state of the reverse process: ``x_T = mu + lambda * noise`` (the original ``noise_state``)."""
        return mu + noise * self.max_sigma

    def mu_bar(self, x0: torch.Tensor, t: int, mu: torch.Tensor) -> torch.Tensor:
        """Mean of the marginal at t (Eq. 3): ``mu + (x0 - mu) e^{-thetas_cumsum[t] dt}``."""
        return mu + (x0 - mu) * torch.exp(-self._at(self.thetas_cumsum, t, x0) * self._dt(x0))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor,
                  mu: torch.Tensor) -> torch.Tensor:
        """Forward marginal sample (training): ``x_t = mu_bar(x0, t) + sigma_bars[t] * noise``.

        ``t`` is an int or a tensor (B,) of per-sample timesteps in [0, T].
        """
        if torch.is_tensor(t) and t.ndim > 0:
            tt = t.long().cpu()
            shape = (-1,) + (1,) * (original_samples.ndim - 1)
            decay = torch.exp(-self.thetas_cumsum[tt] * self.dt).view(shape).to(original_samples)
            sb = self.sigma_bars[tt].view(shape).to(original_samples)
            return mu + (original_samples - mu) * decay + sb * noise
        t = int(t)
        return self.mu_bar(original_samples, t, mu) + self._at(self.sigma_bars, t, noise) * noise

    def pred_original_sample(self, model_output: torch.Tensor, t: int, sample: torch.Tensor,
                             mu: torch.Tensor) -> torch.Tensor:
        """``x0_hat = (x_t - mu - sigma_bars[t] eps) e^{thetas_cumsum[t] dt} + mu`` (inverse of Eq. 3)."""
        a = torch.exp(self._at(self.thetas_cumsum, t, sample) * self._dt(sample))
        return (sample - mu - self._at(self.sigma_bars, t, sample) * model_output) * a + mu

    def noise_from_sample(self, x0: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor,
                          mu: torch.Tensor) -> torch.Tensor:
        """The noise ``eps`` for which :meth:`pred_original_sample` gives ``x0`` (Eq. 3 solved for the noise):
        ``(x_t - mu - (x0 - mu) e^{-thetas_cumsum[t] dt}) / sigma_bars[t]``, for networks that predict the clean
        image. ``t`` is an int (t >= 1) or a tensor (B,) of per-sample timesteps."""
        if torch.is_tensor(t) and t.ndim > 0:
            tt = t.long().cpu()
            shape = (-1,) + (1,) * (sample.ndim - 1)
            decay = torch.exp(-self.thetas_cumsum[tt] * self.dt).view(shape).to(sample)
            sb = self.sigma_bars[tt].view(shape).to(sample)
        else:
            decay = torch.exp(-self._at(self.thetas_cumsum, int(t), sample) * self._dt(sample))
            sb = self._at(self.sigma_bars, int(t), sample)
        return (sample - mu - (x0 - mu) * decay) / sb

    def _theta_interval(self, t: int, s: int, like: torch.Tensor) -> torch.Tensor:
        """Integral of theta from s to t; exactly ``thetas[t]`` for consecutive steps (as the original)."""
        if s == t - 1:
            return self._at(self.thetas, t, like)
        return self._at(self.thetas_cumsum, t, like) - self._at(self.thetas_cumsum, s, like)

    def posterior_mean_std(self, sample: torch.Tensor, x0: torch.Tensor, t: int, s: int, mu: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of ``q(x_s | x_t, x_0)`` for the OU process (IR-SDE Eq. 11-13 for s = t - 1)."""
        dt = self._dt(sample)
        a = torch.exp(-self._theta_interval(t, s, sample) * dt)  # transition decay s -> t
        b = torch.exp(-self._at(self.thetas_cumsum, t, sample) * dt)  # 0 -> t
        c = torch.exp(-self._at(self.thetas_cumsum, s, sample) * dt)  # 0 -> s
        term1 = a * (1 - c**2) / (1 - b**2)
        term2 = c * (1 - a**2) / (1 - b**2)
        mean = term1 * (sample - mu) + term2 * (x0 - mu) + mu
        theta_int, cum_t, cum_s = self._theta_interval(t, s, sample), self._at(self.thetas_cumsum, t, sample), self._at(
            self.thetas_cumsum, s, sample)
        var = ((1 - torch.exp(-2 * theta_int * dt)) * (1 - torch.exp(-2 * cum_s * dt))
               / (1 - torch.exp(-2 * cum_t * dt)))  # in units of lambda^2
        # Clamped in log space as the original (var = 0 at s = 0).
        std = (0.5 * torch.log(torch.clamp(var, min=1e-20 * dt))).exp() * self.max_sigma
        return mean, std

    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        sample: torch.Tensor,
        *,
        mu: torch.Tensor,
        mode: str = "posterior",
        variance_noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> IRSDESchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from ``t`` to the previous timestep of :attr:`timesteps`.

        Args:
            model_output: predicted noise ``eps_hat`` (B, C, H, W).
            t: current timestep (an element of :attr:`timesteps`).
            sample: current state ``x_t`` (B, C, H, W).
            mu: the SDE mean, i.e. the degraded image (B, C, H, W).
            mode: ``"posterior"`` (x0_hat then the optimal posterior q(x_{t-1} | x_t, x0_hat) plus noise) or
                ``"sde"`` (Euler-Maruyama on the reverse SDE, Eq. 6, score = -eps_hat / sigma_bars[t]).
            variance_noise: the standard-normal draw (B, C, H, W); drawn from ``generator`` when None.
            generator: torch generator for the draw (its device is used; the result is moved to ``sample``'s).
            return_dict: return :class:`IRSDESchedulerOutput` (else a tuple ``(prev_sample, pred_original_sample)``).
        """
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        if model_output.shape != sample.shape or mu.shape != sample.shape:
            raise ValueError(
                f"model_output, sample and mu must share a shape, got {tuple(model_output.shape)}, "
                f"{tuple(sample.shape)}, {tuple(mu.shape)}"
            )
        t = int(t)
        s = self.previous_timestep(t)
        if variance_noise is None:
            gdev = generator.device if generator is not None else sample.device
            variance_noise = torch.randn(sample.shape, generator=generator, device=gdev, dtype=sample.dtype)
        variance_noise = variance_noise.to(device=sample.device, dtype=sample.dtype)
        x0 = self.pred_original_sample(model_output, t, sample, mu)
        if mode == "posterior":
            mean, std = self.posterior_mean_std(sample, x0, t, s, mu)
            prev = mean + std * variance_noise
        else:
            dt = self._dt(sample)
            theta = self._theta_interval(t, s, sample)  # theta_t (x interval length when strided)
            sigma = self._at(self.sigmas, t, sample) if s == t - 1 else torch.sqrt(2 * self.max_sigma**2 * theta)
            sigma2 = sigma**2  # sigma_t^2 = 2 lambda^2 theta_t
            score = -model_output / self._at(self.sigma_bars, t, sample)
            drift = (theta * (mu - sample) - sigma2 * score) * dt
            prev = sample - drift - sigma * (variance_noise * torch.sqrt(dt))
        if not return_dict:
            return prev, x0
        return IRSDESchedulerOutput(prev_sample=prev, pred_original_sample=x0)
