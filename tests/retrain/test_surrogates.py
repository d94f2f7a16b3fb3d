"""The per-neuron error model and the baselines against Monte Carlo (T8, T9 of docs/REFERENCES.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dse.multipliers.core import exact_table
from dse.retrain.statistics import NeuronStatsAccumulator, neuron_stats
from dse.retrain.surrogates import (
    AwgnNoise,
    GaussianNoise,
    MultiplicativeWeightNoise,
    PerNeuronErrorModel,
    relative_error_moments,
)

N = 40_000  # Monte-Carlo samples per neuron
SHAPE = (3, 2, 2)  # a conv-like [C, H, W] per-sample output


def _targets(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu_y = torch.randn(SHAPE, generator=g) * 2
    sd_y = torch.rand(SHAPE, generator=g) * 2 + 0.5
    mu_e = torch.randn(SHAPE, generator=g)
    sd_e = torch.rand(SHAPE, generator=g) + 0.2
    rho = torch.rand(SHAPE, generator=g) * 1.8 - 0.9  # in (-0.9, 0.9)
    return mu_y, sd_y, mu_e, sd_e, rho


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).mean(0) / (a.std(0, unbiased=False) * b.std(0, unbiased=False))


def _generator_on_batch_stats(y: torch.Tensor, mu_eps: float, sigma_eps: float, rho: float):
    """P2's generator with the calibration moments μ_y, σ_y taken from the batch y itself (axis 0)."""
    mean_y, std_y = y.detach().mean(0), y.detach().std(0)
    return PerNeuronErrorModel(
        mean_y,
        std_y,
        torch.full_like(mean_y, mu_eps),
        torch.full_like(mean_y, sigma_eps),
        torch.full_like(mean_y, rho),
    )


def test_t8_p2_generator():
    torch.manual_seed(8)
    y = torch.randn(200_000, 1) * 3 + 1
    for rho in (0.0, 0.6, -0.8):
        xi = _generator_on_batch_stats(y, 0.7, 2.0, rho)(y)
        assert float(xi.mean()) == pytest.approx(0.7, abs=0.02)
        assert float(xi.std()) == pytest.approx(2.0, rel=0.01)
        c = float(torch.corrcoef(torch.stack([xi[:, 0], y[:, 0]]))[0, 1])
        assert c == pytest.approx(rho, abs=0.01)
    xi = _generator_on_batch_stats(y, 0.7, 2.0, -1.0)(y)
    fit = np.polyfit(y[:, 0].numpy(), xi[:, 0].numpy(), 1)
    assert np.abs(np.polyval(fit, y[:, 0].numpy()) - xi[:, 0].numpy()).max() < 1e-4  # affine in y
    yg = (torch.randn(1000, 3) * torch.tensor([1.0, 2.0, 5.0])).requires_grad_()
    xi = _generator_on_batch_stats(yg, 0.0, 2.0, 0.5)(yg)
    xi.sum().backward()
    expected = 2.0 * 0.5 / yg.detach().std(dim=0)
    assert torch.allclose(yg.grad, expected.expand_as(yg), rtol=1e-5)


@pytest.mark.parametrize("reuse_noise", [True, False])
def test_t8_generator_reproduces_mean_std_and_correlation(reuse_noise):
    torch.manual_seed(1)
    mu_y, sd_y, mu_e, sd_e, rho = _targets()
    # y deliberately non-Gaussian (exponential, shifted and scaled to mu_y, sd_y)
    y = (torch.empty((N, *SHAPE)).exponential_() - 1.0) * sd_y + mu_y
    gen = PerNeuronErrorModel(mu_y, sd_y, mu_e, sd_e, rho, reuse_noise=reuse_noise)
    xi = gen(y)
    assert torch.allclose(xi.mean(0), mu_e, atol=0.03 * sd_e.max().item())
    assert torch.allclose(xi.std(0), sd_e, rtol=0.03)
    assert torch.allclose(_corr(xi, y), rho, atol=0.03)


def test_t8_generator_from_measured_stats_matches_a_real_error():
    """Round trip: measure (y, ỹ) from a truncating 'multiplier', then ξ has the measured moments."""
    torch.manual_seed(2)
    y = torch.rand((N, 5)) * torch.tensor([10.0, 50, 100, 300, 1000])
    y_approx = torch.floor(y / 8) * 8 + torch.rand_like(y)  # biased, y-dependent error
    stats = neuron_stats(y, y_approx)
    err = y_approx - y
    assert torch.allclose(stats.mean_err, err.mean(0), atol=1e-4)
    assert torch.allclose(stats.std_err, err.std(0, unbiased=False), rtol=1e-4)
    assert torch.allclose(stats.corr, _corr(err, y), atol=1e-4)
    xi = PerNeuronErrorModel.from_stats(stats)(y)
    assert torch.allclose(xi.mean(0), err.mean(0), atol=0.05)
    assert torch.allclose(xi.std(0), err.std(0), rtol=0.03)
    assert torch.allclose(_corr(xi, y), stats.corr, atol=0.03)


def test_t8_noise_is_fresh_from_one_training_step_to_the_next():
    """Small batches, many calls (as in training): over the calls ξ still has μ_ε, σ_ε per neuron, and
    the noise of one call is uncorrelated with that of the next at the same neuron."""
    torch.manual_seed(8)
    mu_y, sd_y, mu_e, sd_e, _ = _targets(4)
    gen = PerNeuronErrorModel(mu_y, sd_y, mu_e, sd_e, torch.zeros(SHAPE))
    y = mu_y.expand(16, *SHAPE)  # s₁ = 0: ξ is all noise
    xi = torch.cat([gen(y) for _ in range(1500)])  # 24,000 samples from 1,500 calls
    assert torch.allclose(xi.mean(0), mu_e, atol=0.03 * sd_e.max().item())
    assert torch.allclose(xi.std(0), sd_e, rtol=0.03)
    steps = xi.view(1500, 16, *SHAPE)
    assert _corr(steps[:-1].reshape(-1, *SHAPE), steps[1:].reshape(-1, *SHAPE)).abs().max() < 0.04


def test_t8_rho_zero_is_independent_of_y():
    torch.manual_seed(3)
    mu_y, sd_y, mu_e, sd_e, _ = _targets(1)
    y = torch.randn((N, *SHAPE)) * sd_y + mu_y
    gen = PerNeuronErrorModel(mu_y, sd_y, mu_e, sd_e, torch.zeros(SHAPE))
    y.requires_grad_(True)
    xi = gen(y)
    xi.sum().backward()
    assert torch.count_nonzero(y.grad) == 0
    xi, y = xi.detach(), y.detach()
    assert _corr(xi, y).abs().max() < 0.03
    assert _corr(xi, y**2).abs().max() < 0.03
    high = y > mu_y
    mean_high = (xi * high).sum(0) / high.sum(0)
    mean_low = (xi * ~high).sum(0) / (~high).sum(0)
    assert torch.allclose(mean_high, mean_low, atol=0.06 * sd_e.max().item())


@pytest.mark.parametrize("rho", [1.0, -1.0])
def test_t8_full_correlation_is_affine_in_y(rho):
    mu_y, sd_y, mu_e, sd_e, _ = _targets(2)
    y = torch.randn((64, *SHAPE)) * sd_y + mu_y
    gen = PerNeuronErrorModel(mu_y, sd_y, mu_e, sd_e, torch.full(SHAPE, rho))
    expected = mu_e + rho * sd_e * (y - mu_y) / sd_y
    assert torch.allclose(gen(y), expected, atol=1e-5)
    assert torch.allclose(gen(y), gen(y), atol=1e-5)  # no randomness left


def test_t8_gradient_is_sigma_rho_over_sigma_y():
    mu_y, sd_y, mu_e, sd_e, rho = _targets(3)
    y = (torch.randn((16, *SHAPE)) * sd_y + mu_y).requires_grad_(True)
    gen = PerNeuronErrorModel(mu_y, sd_y, mu_e, sd_e, rho)
    gen(y).sum().backward()
    expected = (sd_e * rho / sd_y).expand_as(y)
    assert torch.allclose(y.grad, expected, rtol=1e-5)
    # and the layer output ỹ = y + ξ gets 1 + σ_ε ρ / σ_y
    y.grad = None
    (y + gen(y)).sum().backward()
    assert torch.allclose(y.grad, 1 + expected, rtol=1e-5)


def test_constant_neuron_gets_no_correlated_part():
    y = torch.ones((100, 2))
    y[:, 1] = torch.arange(100.0)
    y_approx = y + torch.randn_like(y)
    stats = neuron_stats(y, y_approx)
    assert stats.corr[0] == 0 and stats.std_y[0] == 0
    gen = PerNeuronErrorModel.from_stats(stats)
    yy = y.clone().requires_grad_(True)
    xi = gen(yy)
    assert torch.isfinite(xi).all()
    xi.sum().backward()
    assert yy.grad[:, 0].abs().max() == 0


def test_streaming_accumulator_equals_one_batch():
    torch.manual_seed(4)
    y = torch.randn((300, 7)) * 5 + 2
    ya = y + torch.randn_like(y) * 0.3 + 0.1 * y
    whole = neuron_stats(y, ya)
    acc = NeuronStatsAccumulator()
    for i in range(0, 300, 64):
        acc.add(y[i : i + 64], ya[i : i + 64])
    parts = acc.finish()
    assert parts.samples == whole.samples == 300
    for name in ("mean_y", "std_y", "mean_err", "std_err", "corr"):
        assert torch.allclose(getattr(parts, name), getattr(whole, name), atol=1e-5)
    assert parts.snr_db == pytest.approx(whole.snr_db, rel=1e-9)


@pytest.mark.parametrize("snr_db", [0.0, 7.5, 20.0, 35.0])
def test_t9_awgn_hits_its_snr(snr_db):
    torch.manual_seed(5)
    y = torch.randn((2000, 16, 4, 4)) * 3 + 1.5  # non-zero mean: power is E[y²], not the variance
    n = AwgnNoise(snr_db)(y)
    measured = 10 * math.log10(float(y.pow(2).mean() / n.pow(2).mean()))
    assert abs(measured - snr_db) <= 0.1
    assert abs(float(n.mean())) < 0.01 * math.sqrt(float(n.pow(2).mean())) + 1e-6


def test_t9_awgn_from_measured_snr_matches_error_power():
    torch.manual_seed(6)
    y = torch.rand((4000, 32)) * 100
    ya = torch.floor(y / 4) * 4
    stats = neuron_stats(y, ya)
    direct = 10 * math.log10(float(y.pow(2).mean() / (ya - y).pow(2).mean()))
    assert stats.snr_db == pytest.approx(direct, abs=1e-6)
    n = AwgnNoise(stats.snr_db)(y)
    assert float(n.pow(2).mean()) == pytest.approx(float((ya - y).pow(2).mean()), rel=0.02)


def test_gaussian_and_multiplicative_noise_moments():
    torch.manual_seed(7)
    n = GaussianNoise(sigma=2.0, mean=-0.5)(torch.zeros(200_000))
    assert float(n.std()) == pytest.approx(2.0, rel=0.01)
    assert float(n.mean()) == pytest.approx(-0.5, abs=0.02)
    w = torch.randn(200_000) + 3
    noisy = MultiplicativeWeightNoise(rel_mean=-0.04, rel_std=0.1)(w)
    rel = noisy / w - 1
    assert float(rel.mean()) == pytest.approx(-0.04, abs=0.002)
    assert float(rel.std()) == pytest.approx(0.1, rel=0.02)


def test_relative_error_moments_of_known_tables():
    for signed in (False, True):
        assert relative_error_moments(exact_table(signed), signed) == (0.0, 0.0)
    exact = exact_table(False).astype(np.int64)
    scaled = exact * 9 // 10  # always ≈ −10 % (floor)
    mean, std = relative_error_moments(scaled, False)
    assert -0.11 < mean < -0.099 and std < 0.01
    # sign-magnitude weights: only |w| ≤ 127 counts
    bad_high = exact.copy()
    bad_high[:, 128:] = 0
    assert relative_error_moments(bad_high, False, weight_magnitude_only=True) == (0.0, 0.0)
    assert relative_error_moments(bad_high, False)[0] < -0.4
