"""IRSDEScheduler: schedule parity and every state of the recorded 100-step reference runs."""

from pathlib import Path

import pytest
import torch

from vlmir.schedulers.irsde import IRSDEScheduler

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "daclip_reference"


@pytest.fixture(scope="module")
def io():
    if not (FIXTURE / "tiny_a_io.safetensors").is_file():
        pytest.skip(f"reference fixture not found at {FIXTURE}")
    from safetensors.torch import load_file

    return load_file(str(FIXTURE / "tiny_a_io.safetensors"))


def test_schedule_matches_reference(io):
    s = IRSDEScheduler(max_sigma=50, T=100, schedule="cosine", eps=0.005)
    assert s.max_sigma == pytest.approx(50 / 255)
    for k in ("thetas", "thetas_cumsum", "sigma_bars"):
        ref = io[f"schedule.{k}"]
        ours = getattr(s, k)
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() <= 1e-6, k
    assert float(s.dt) == pytest.approx(float(io["schedule.dt"]), rel=1e-6)
    assert s.timesteps.tolist() == list(range(100, 0, -1))


@pytest.mark.parametrize("mode", ["posterior", "sde"])
def test_every_state_of_100_step_run(io, mode):
    s = IRSDEScheduler(max_sigma=50, T=100, schedule="cosine", eps=0.005)
    lq, states = io[f"{mode}.lq"], io[f"{mode}.states"]
    x = io[f"{mode}.x_T"]
    assert torch.equal(states[0], x)
    worst = 0.0
    for i, t in enumerate(s.timesteps):
        worst = max(worst, (x - states[i]).abs().max().item())
        out = s.step(io[f"{mode}.noise_estimates"][i], t, x, mu=lq, mode=mode, variance_noise=io[f"{mode}.draws"][i])
        x = out.prev_sample
    assert worst <= 1e-4
    assert (x - io[f"{mode}.x_0"]).abs().max().item() <= 1e-4
    # the run really restores: the result is far closer to gt than the start
    gt = io[f"{mode}.gt"]
    assert (x - gt).abs().mean() < 0.2 * (io[f"{mode}.x_T"] - gt).abs().mean()


def test_noise_state_and_add_noise(io):
    s = IRSDEScheduler()
    mu, n = io["posterior.lq"], torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s.noise_state(mu, n), mu + n * (50 / 255), atol=1e-6)
    x0 = io["posterior.gt"]
    # at T the marginal mean has forgotten x0 up to eps = 0.005
    xt = s.add_noise(x0, torch.zeros_like(x0), 100, mu)
    assert torch.allclose(xt, mu + (x0 - mu) * 0.005, atol=1e-6)
    # batched timesteps agree with scalar ones; x0_hat inverts add_noise
    xb = s.add_noise(x0.repeat(2, 1, 1, 1), n.repeat(2, 1, 1, 1), torch.tensor([10, 60]), mu)
    assert torch.allclose(xb[1:], s.add_noise(x0, n, 60, mu), atol=1e-6)
    assert torch.allclose(s.pred_original_sample(n, 60, xb[1:], mu), x0, atol=1e-4)


def test_generator_reproducible_and_tuple_return():
    s = IRSDEScheduler()
    x = torch.rand(1, 3, 8, 8)
    eps = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = s.step(eps, 50, x, mu=x * 0.5, generator=torch.Generator().manual_seed(3)).prev_sample
    b = s.step(eps, 50, x, mu=x * 0.5, generator=torch.Generator().manual_seed(3)).prev_sample
    c = s.step(eps, 50, x, mu=x * 0.5, generator=torch.Generator().manual_seed(4)).prev_sample
    assert torch.equal(a, b) and not torch.equal(a, c)
    prev, x0 = s.step(eps, 50, x, mu=x * 0.5, mode="sde", variance_noise=torch.zeros_like(x), return_dict=False)
    assert prev.shape == x0.shape == x.shape


def test_strided_posterior_ends_on_clean_estimate_and_is_exact_for_perfect_noise(io):
    s = IRSDEScheduler()
    s.set_timesteps(20)
    ts = s.timesteps.tolist()
    assert len(ts) == 20 and ts[0] == 100 and ts[-1] == 1 and ts == sorted(ts, reverse=True)
    # With the true noise the posterior collapses to x0 at every stride: x_0 = gt exactly (up to float).
    g = torch.Generator().manual_seed(0)
    gt, mu = io["posterior.gt"], io["posterior.lq"]
    x = s.add_noise(gt, torch.randn(gt.shape, generator=g), 100, mu)
    for t in s.timesteps:
        # true noise of the current state given gt
        eps = (x - s.mu_bar(gt, int(t), mu)) / s.sigma_bars[int(t)]
        x = s.step(eps, t, x, mu=mu, generator=g).prev_sample
    assert (x - gt).abs().max().item() <= 1e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        IRSDEScheduler(schedule="quadratic")
    s = IRSDEScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(101)
    s.set_timesteps(10)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="timestep 99"):
        s.step(x, 99, x, mu=x)
    with pytest.raises(ValueError, match="mode"):
        s.step(x, 100, x, mu=x, mode="ode")
    for sched in ("linear", "constant"):
        assert IRSDEScheduler(schedule=sched).thetas.shape == (101,)
