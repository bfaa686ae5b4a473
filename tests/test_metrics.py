"""metrics.py against closed forms: the importance-weighted bound on a linear Gaussian VAE, active units, PSNR and
bits/dim by hand, the linear probe."""
import math

import pytest
import torch
import torch.nn as nn

import losses
import metrics
from vae import VAE


class LinearGaussianVAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s2 I): log p(x) = log N(x; b, W W^T + s2 I).

    The exact posterior is N(A (x - b), S) with S = (I + W^T W / s2)^-1, A = S W^T / s2;
    W has orthogonal columns, so S is diagonal and a diagonal Gaussian q can equal the
    posterior; `shift` and `widen` move q away from it.
    """

    def __init__(self, pixels=6, latent=3, s2=0.3, shift=0.0, widen=0.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(pixels, latent, generator=g, dtype=torch.float64))
        self.W = q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)[:latent]
        self.b = torch.randn(pixels, generator=g, dtype=torch.float64)
        self.s2, self.shift, self.widen = s2, shift, widen
        self.S = torch.linalg.inv(torch.eye(latent, dtype=torch.float64) + self.W.T @ self.W / s2)
        self.A = self.S @ self.W.T / s2

    def encode(self, x, labels=None):
        mu = (x.flatten(1) - self.b) @ self.A.T + self.shift
        logvar = torch.log(torch.diagonal(self.S)).expand_as(mu) + self.widen  # S is diagonal
        return mu, logvar

    def decode(self, z, labels=None):
        return (z @ self.W.T + self.b).view(-1, 1, 1, self.W.shape[0])

    def nll(self, mean, x):
        d = x[0].numel()
        sq = losses.per_image((x - mean).pow(2), x)  # (B,), or (n, B) for n decodes of each x
        return sq / (2 * self.s2) + 0.5 * d * math.log(2 * math.pi * self.s2)

    def exact_nll(self, x):
        cov = self.W @ self.W.T + self.s2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return -torch.distributions.MultivariateNormal(self.b, cov).log_prob(x.flatten(1))


def data_of(model, n=200, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.W.shape[1], generator=g, dtype=torch.float64)
    noise = torch.randn(n, model.W.shape[0], generator=g, dtype=torch.float64) * math.sqrt(model.s2)
    return (z @ model.W.T + model.b + noise).view(n, 1, 1, -1)


def test_iw_bound_is_exact_when_q_is_the_true_posterior():
    model = LinearGaussianVAE()  # every importance weight equals p(x): no variance at all
    x = data_of(model)
    out = metrics.importance_sampled(model, x, x, 5)
    assert torch.allclose(out["nll_iw"], model.exact_nll(x), atol=1e-9)
    out = metrics.importance_sampled(model, x, x, 4000, chunk=100000)
    se = (out["recon_var"].sum() / 4000).sqrt() / x.shape[0]
    gap = (out["recon"] + out["kl"]).mean() - model.exact_nll(x).mean()  # the ELBO is tight too
    assert abs(gap) < 4 * se and se < 0.01


def test_iw_bound_converges_to_the_exact_likelihood_as_k_grows():
    torch.manual_seed(0)
    model = LinearGaussianVAE(shift=0.4, widen=0.7)  # a wrong q: the ELBO is loose
    x = data_of(model)
    exact = model.exact_nll(x).mean().item()
    gaps = {}
    for k in (1, 10, 100, 2000):
        out = metrics.importance_sampled(model, x, x, k, chunk=50000)
        gaps[k] = out["nll_iw"].mean().item() - exact
    nelbo = (out["recon"] + out["kl"]).mean().item() - exact
    assert nelbo > 0.5  # the ELBO is clearly loose here
    assert gaps[1] > gaps[10] > gaps[100] > gaps[2000] > -0.01
    assert gaps[2000] < 0.05 * nelbo


def test_iw_bound_never_above_the_nelbo_and_equal_at_k1_in_expectation():
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=4, hidden=(32,)).double().eval()
    x = torch.rand(64, 1, 28, 28, dtype=torch.float64)
    out = metrics.importance_sampled(model, x, x, 200, chunk=4096)  # the VAE's nll: bce
    nelbo = out["recon"] + out["kl"]
    assert (out["nll_iw"] <= nelbo + 1e-9).all()  # Jensen, per image, same samples
    repeats = x.repeat(400, 1, 1, 1)  # 400 independent K = 1 estimates of each image
    k1 = metrics.importance_sampled(model, repeats, repeats, 1)["nll_iw"].view(400, 64)
    se_k1 = k1.mean(1).std() / math.sqrt(400)  # the spread of the batch mean, over repeats
    se_nelbo = (out["recon_var"].sum() / 200).sqrt() / 64  # nelbo's own sampling error
    assert abs(k1.mean() - nelbo.mean()) < 4 * math.sqrt(se_k1 ** 2 + se_nelbo ** 2)
    assert k1.mean() > out["nll_iw"].mean() + 1  # K = 200 is clearly tighter than K = 1


def test_active_units_on_a_hand_made_case():
    mu = torch.zeros(1000, 5)
    mu[:, 1] = torch.linspace(-1, 1, 1000) * 0.1  # variance ~0.0033: inactive
    mu[:, 2] = torch.linspace(-1, 1, 1000) * 0.3  # ~0.030: active
    mu[:, 3] = torch.linspace(-1, 1, 1000) * 2.0  # ~1.33: active
    mu[:, 4] = 7.0  # constant, however large: inactive
    count, var = metrics.active_units(mu)
    assert count == 2
    assert var[2] == pytest.approx(0.09 / 3, rel=0.01) and var[4] == 0


def test_psnr_and_bits_per_dim_by_hand():
    x = torch.zeros(2, 1, 4, 4)
    assert metrics.psnr(x, x + 0.1).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    d = 3072
    assert metrics.bits_per_dim(d * math.log(2), "bce", 0.05, d) == pytest.approx(1.0)
    gauss = metrics.bits_per_dim(0.0, "gaussian", 0.05, d)  # only the constants remain
    assert gauss == pytest.approx((0.5 * math.log(2 * math.pi * 0.05) + math.log(255)) / math.log(2))
    assert metrics.bits_per_dim(0.0, "mse", 0.05, d, "tanh") == pytest.approx(
        (0.5 * math.log(math.pi) + math.log(127.5)) / math.log(2))


def test_linear_probe_reads_a_linear_label_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 8, generator=g) * 3
    y = torch.arange(600) % 10
    x = centres[y] + torch.randn(600, 8, generator=g) * 0.3
    assert metrics.linear_probe(x[:500], y[:500], x[500:], y[500:]) == 1.0
    noise = torch.randn(600, 8, generator=g)
    assert metrics.linear_probe(noise[:500], y[:500], noise[500:], y[500:]) < 0.3
