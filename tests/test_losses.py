import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

import losses
from vae import VAE


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    q, p = Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros(5, 7), torch.ones(5, 7))
    expected = kl_divergence(q, p)  # (5, 7)
    torch.testing.assert_close(losses.kl_normal(mu, logvar, per_dim=True), expected)
    torch.testing.assert_close(losses.kl_normal(mu, logvar), expected.sum(1))
    assert losses.kl_normal(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0


def test_bce_from_logits_matches_bce_on_sigmoid_outputs():
    torch.manual_seed(0)
    logits = torch.randn(6, 1, 4, 4, dtype=torch.float64) * 3  # float64: the sigmoid path rounds
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    expected = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(losses.bce_logits(logits, x), expected)


def test_bce_from_logits_stays_finite_where_sigmoid_saturates():
    logits = torch.tensor([[200.0, -200.0]])
    x = torch.tensor([[0.0, 1.0]])
    # exact value: -log sigmoid(-200) - log sigmoid(-200) = 2 * 200 (up to e^-200)
    assert losses.bce_logits(logits, x).item() == pytest.approx(400.0)


def test_bce_refuses_data_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        losses.bce_logits(torch.zeros(2, 3), torch.tensor([[-1.0, 0.0, 1.0]] * 2))
    with pytest.raises(ValueError, match=r"got values in \[0, 2\]"):
        losses.bce_logits(torch.zeros(2, 3), torch.tensor([[0.0, 2.0, 1.0]] * 2))
    assert losses.bce_logits(torch.zeros(1, 2), torch.tensor([[0.0, 1.0]])).shape == (1,)


@pytest.mark.parametrize("recon,output", [("bce", "sigmoid"), ("mse", "tanh"), ("gaussian", "sigmoid")])
def test_several_decodes_of_each_image_score_as_the_repeated_images_would(recon, output):
    """logits (n, B, ...) against targets (B, ...) (the importance-sampled bound's K decodes
    of each image) give (n, B), each entry what that decode scores against its own image;
    BCE there takes another formula (softplus(l) - x l), so large logits are included."""
    torch.manual_seed(0)
    n, b = 5, 3
    logits = torch.randn(n, b, 1, 4, 4, dtype=torch.float64) * 30
    x = torch.rand(b, 1, 4, 4, dtype=torch.float64) * (1 if output == "sigmoid" else 2)
    x = x - (0 if output == "sigmoid" else 1)
    repeated = losses.reconstruction(recon, logits.flatten(0, 1), x.repeat(n, 1, 1, 1), output)
    together = losses.reconstruction(recon, logits, x, output)
    assert together.shape == (n, b)
    torch.testing.assert_close(together, repeated.view(n, b))
    wrong = torch.rand(n, b, 1, 4, 4, dtype=torch.float64) - 1  # still checked, once
    with pytest.raises(ValueError, match=r"\[0, 1\]") if recon == "bce" else nullcontext():
        losses.reconstruction(recon, logits, wrong[0], output)


def test_mse_and_gaussian_on_a_hand_made_example():
    x_hat, x = torch.tensor([[0.0, 1.0, 0.5]]), torch.tensor([[1.0, 1.0, 0.0]])
    assert losses.mse(x_hat, x).item() == pytest.approx(1.25)
    assert losses.gaussian(x_hat, x, c=0.05).item() == pytest.approx(1.25 / 0.1)
    assert losses.gaussian_const(784, 0.05) == pytest.approx(392 * math.log(2 * math.pi * 0.05))


def test_l1_penalty_is_sum_of_absolute_weights():
    params = [torch.tensor([1.0, -2.0]), torch.tensor([[-0.5]])]
    assert losses.l1_penalty(params).item() == pytest.approx(3.5)


@pytest.mark.parametrize("recon", ["bce", "mse", "gaussian"])
def test_per_image_loss_does_not_depend_on_batch_size(recon, monkeypatch):
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=4, recon=recon).eval()
    monkeypatch.setattr(model, "reparameterize", lambda mu, logvar: mu)  # no sampling noise
    x = torch.rand(8, 1, 28, 28)
    whole = model.loss(x, x)
    halves = [model.loss(x[:4], x[:4]), model.loss(x[4:], x[4:])]
    for term in ("loss", "recon", "kl"):
        torch.testing.assert_close(whole[term], (halves[0][term] + halves[1][term]) / 2)


def test_loss_is_recon_plus_beta_kl():
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=4, beta=4.0)
    x = torch.rand(3, 1, 28, 28)
    torch.manual_seed(1)
    out = model.loss(x, x)
    torch.testing.assert_close(out["loss"], out["recon"] + 4.0 * out["kl"])
    torch.manual_seed(1)
    test = model.test_loss(x, x)  # the negative ELBO: beta = 1, the same draws
    torch.testing.assert_close(test["loss"], out["recon"] + out["kl"])
    assert model.term_weights == {"kl": 4.0}
