import csv
import math
import os

import pytest
import torch
from torch.autograd.functional import jacobian

import data
import losses
import metrics
import models
import runs
import train
import ae
from ae import AE
from conftest import images_for

VARIANTS = {
    "plain mlp": dict(),
    "plain conv": dict(arch="conv"),
    "overcomplete": dict(latent_dim=1024),
    "sparse L1": dict(sparsity=1e-2, code="relu"),
    "sparse KL": dict(sparsity=1.0, sparsity_target=0.05),
    "contractive mlp": dict(contractive=0.1),
    "contractive deep mlp": dict(contractive=0.1, hidden=(64, 32)),
    "contractive conv": dict(contractive=0.1, arch="conv"),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_trains_and_its_loss_falls(name):
    torch.manual_seed(0)
    kw = {"latent_dim": 8, **({} if "conv" in name else {"hidden": (64,)}), **VARIANTS[name]}
    model = AE((1, 28, 28), **kw)
    x = torch.from_numpy(images_for(32, (1, 28, 28), 0)).float() / 255
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)  # denoising: corrupted in, clean out
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(25):
        out = model.loss(noisy, x)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < 0.9 * first
    penalty = {"sparsity", "contractive"} & set(kw)
    assert set(out) == {"loss", "recon"} | penalty


def brute_force_jacobian_norm2(model, x):
    """Per image, the full Jacobian of the code by torch.autograd.functional.jacobian."""
    norms = []
    for xi in x:
        J = jacobian(lambda v: model.encode(v.unsqueeze(0)).squeeze(0), xi)  # (D, C, H, W)
        norms.append(J.pow(2).sum())
    return torch.stack(norms)


@pytest.mark.parametrize("kw", [
    dict(hidden=(16,)),                          # closed form, ReLU
    dict(hidden=(16,), act="elu"),               # closed form, ELU
    dict(hidden=(16, 8)),                        # autograd, deeper MLP
    dict(hidden=(16,), sparsity=1.0, sparsity_target=0.1),  # autograd, sigmoid code
    dict(hidden=(16,), code="relu"),             # autograd, relu code
    dict(arch="conv", batchnorm=False),          # autograd, conv
    dict(arch="conv", batchnorm=True, dropout=0.2),  # autograd, conv, evaluation mode
], ids=["relu-closed", "elu-closed", "deep", "sigmoid-code", "relu-code", "conv", "conv-bn-eval"])
def test_contractive_penalty_equals_the_brute_force_jacobian(kw):
    torch.manual_seed(0)
    model = AE((1, 28, 28), latent_dim=5, contractive=1.0, **kw).double().eval()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    got = model.jacobian_norm2(x, model.encode(x))
    torch.testing.assert_close(got, brute_force_jacobian_norm2(model, x.detach()))


def test_closed_form_is_used_for_the_one_layer_mlp(monkeypatch):
    model = AE((1, 28, 28), latent_dim=5, hidden=(16,), contractive=1.0)

    def no_autograd(*args, **kwargs):
        raise AssertionError("took the autograd path")
    monkeypatch.setattr(torch.autograd, "grad", no_autograd)
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    assert model.jacobian_norm2(x, model.encode(x)).shape == (3,)


def test_contractive_gradient_reaches_the_weights():
    model = AE((1, 28, 28), latent_dim=5, hidden=(16, 8), contractive=1.0)
    out = model.loss(torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28))
    grad = torch.autograd.grad(out["contractive"], model.encoder[1].weight)[0]
    assert grad.abs().sum() > 0


def test_sparse_kl_on_a_hand_computed_example():
    h = torch.tensor([[0.1, 0.5], [0.3, 0.5]])  # rho_hat = (0.2, 0.5)
    rho = 0.1
    expected = (0.1 * math.log(0.1 / 0.2) + 0.9 * math.log(0.9 / 0.8)
                + 0.1 * math.log(0.1 / 0.5) + 0.9 * math.log(0.9 / 0.5))
    assert losses.kl_sparsity(h, rho).item() == pytest.approx(expected, rel=1e-6)
    assert losses.kl_sparsity(torch.full((3, 4), 0.1), 0.1).item() == pytest.approx(0, abs=1e-6)
    assert losses.l1_activity(torch.tensor([[1.0, -2.0], [0.0, 0.5]])).tolist() == [3.0, 0.5]


def read_history(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def test_ae_run_logs_penalties_and_tests_on_the_reconstruction(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    assert train.main(["--model", "ae", "--data-root", tiny_data, "--epochs", "2",
                       "--batch-size", "16", "--latent-dim", "8", "--contractive", "0.01",
                       "--sparsity", "1e-3", "--out", out]) == 0
    rows = read_history(out)
    assert {"train_recon", "train_sparsity", "train_contractive", "test_recon"} <= set(rows[0])
    assert all(r["test_loss"] == r["test_recon"] for r in rows)  # same units as the VAE's recon
    assert "test_kl" not in rows[0]
    assert os.path.exists(os.path.join(out, "training_reconstructions.png"))
    assert not os.path.exists(os.path.join(out, "training_samples.png"))  # no prior to sample


def test_denoising_test_corruption_is_the_same_across_runs(tiny_data, tmp_path):
    args = ["--model", "ae", "--data-root", tiny_data, "--epochs", "1", "--batch-size", "16",
            "--noise", "mask:0.3"]
    for name in ("a", "b"):
        assert train.main(args + ["--out", str(tmp_path / name)]) == 0
    assert read_history(tmp_path / "a")[0]["test_loss"] == read_history(tmp_path / "b")[0]["test_loss"]
    cfg = runs.load_config(str(tmp_path / "a"))
    model = models.from_config(cfg)
    model.load_state_dict(torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"])
    # the clean-target loss differs from what a noise-free test split would give
    splits = data.load("mnist", tiny_data, "cpu", download=False)
    noisy = metrics.test_loss(model, splits["test"], cfg["output"], data.parse_noise("mask:0.3"))
    clean = metrics.test_loss(model, splits["test"], cfg["output"], None)
    assert noisy["loss"] == pytest.approx(float(read_history(tmp_path / "a")[0]["test_loss"]))
    assert noisy["loss"] != clean["loss"]


@pytest.mark.parametrize("flags", [
    ["--contractive", "0.1"], ["--sparsity", "0.1"],                       # with --model vae
    ["--model", "ae", "--sparsity-target", "0.05"],                        # needs --sparsity
    ["--model", "ae", "--sparsity", "1", "--sparsity-target", "1.5"],
    ["--model", "ae", "--contractive", "-1"], ["--model", "ae", "--beta", "4"],
    ["--code", "relu"], ["--model", "ae", "--code", "tanh"],
    ["--model", "ae", "--sparsity", "1", "--sparsity-target", "0.05", "--code", "relu"],
])
def test_bad_ae_flags_exit_2(tmp_path, capsys, flags):
    assert train.main(flags + ["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_code_activation():
    x = torch.rand(6, 1, 28, 28)
    assert (AE(code="relu").encode(x) >= 0).all()
    h = AE(code="sigmoid").encode(x)
    assert ((h > 0) & (h < 1)).all()
    assert AE(sparsity=1.0, sparsity_target=0.05).code == "sigmoid"  # the KL form needs (0, 1)
    assert (AE().encode(x) < 0).any()  # linear by default


def test_contractive_penalty_with_batch_norm_in_training_is_each_images_own_jacobian():
    """With batch statistics the images are coupled: the penalty must be the per-image
    Jacobian of the encoder with this batch's statistics held constant, not the sum over
    the batch of every image's code by this image's pixels."""
    torch.manual_seed(0)
    model = AE((1, 28, 28), latent_dim=5, arch="conv", contractive=1.0).double().train()
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    got = model.loss(x, x)["contractive"]
    layers = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = []
    hooks = [m.register_forward_hook(lambda m, i, o: stats.append(ae.batch_moments(i[0])))
             for m in layers]
    with torch.no_grad():
        h_train = model.encode(x)  # training mode: normalized by the batch's own statistics
    for hook in hooks:
        hook.remove()
    with ae.frozen_statistics(layers, stats):
        with torch.no_grad():  # the frozen network is the same function on this batch...
            torch.testing.assert_close(model.encode(x), h_train)
        want = brute_force_jacobian_norm2(model, x).mean()  # ...each image on its own
    torch.testing.assert_close(got, want)
    xg = x.clone().requires_grad_(True)
    coupled = model.jacobian_norm2(xg, model.encode(xg)).mean()  # the old, coupled number
    assert abs(coupled - want) / want > 0.01
