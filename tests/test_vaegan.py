"""vaegan.py: which network each loss moves (through train.py's one step for every model),
the loss formulas, the architectures, and train.py's VAE-GAN runs (history columns,
gating counts, exact resume)."""
import copy
import csv
import math
import os

import pytest
import torch
import torch.nn as nn

import losses
import train
from vaegan import VAEGAN

NETS = ("encoder", "decoder", "discriminator")


def params(net):
    return [p.detach().clone() for p in net.parameters()]


def sgd(model, lrs):
    return {n: torch.optim.SGD(p, lr=lrs.get(n, 0.0)) for n, p in model.parameter_groups().items()}


def step(model, x, opt):
    """train.py's step, with no L1 and no clipping."""
    return train.train_step(model, model.loss, opt, model.parameter_groups(), x, x, None)


def own_losses(model, x, seed):
    """Each network's loss from the same forward pass as train_step's (same seed)."""
    torch.manual_seed(seed)
    out = model.loss(x, x)
    return {"encoder": out["encoder"], "decoder": out["decoder"], "discriminator": out["disc"],
            "decoder_without_adv": model.gamma * out["recon"]}


CASES = [dict(arch="mlp"), dict(arch="mlp", batchnorm=False),
         dict(arch="conv", recon="feature", feature_layer=2),
         dict(image_shape=(3, 32, 32), arch="conv", output="tanh", recon="mse")]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(map(str, kw.values())))
@pytest.mark.parametrize("name", NETS)
def test_each_networks_step_moves_only_it_by_the_gradient_of_its_own_loss(kw, name):
    torch.manual_seed(0)
    model = VAEGAN(latent_dim=4, **kw)
    x = torch.rand(6, *model.image_shape) * (2 if model.output == "tanh" else 1)
    x = x - (1 if model.output == "tanh" else 0)
    expected = copy.deepcopy(model)
    loss = own_losses(expected, x, seed=1)[name]
    net = getattr(expected, name)
    grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    before = {n: params(getattr(model, n)) for n in NETS}
    torch.manual_seed(1)
    step(model, x, sgd(model, {name: 0.1}))
    for n in NETS:
        after = params(getattr(model, n))
        if n != name:  # the other two optimizers have lr 0: their weights must not move
            assert all(torch.equal(a, b) for a, b in zip(after, before[n])), n
            continue
        moved = [not torch.equal(a, b) for a, b in zip(after, before[n])]
        assert sum(moved) > len(moved) // 2
        for a, b, g in zip(after, before[n], grads):
            want = b if g is None else b - 0.1 * g
            torch.testing.assert_close(a, want, rtol=1e-5, atol=1e-6)


def test_the_encoder_gets_no_adversarial_gradient_and_the_discriminator_no_recon():
    torch.manual_seed(0)
    model = VAEGAN(latent_dim=3, gamma=0.5)
    x = torch.rand(5, 1, 28, 28)
    torch.manual_seed(1)
    out = model.loss(x, x)
    enc = list(model.encoder.parameters())
    g_enc = torch.autograd.grad(out["encoder"], enc, retain_graph=True)
    g_adv = torch.autograd.grad(out["adv"], enc, retain_graph=True)
    assert max(g.abs().max() for g in g_adv) > 0  # adv does depend on the encoder...
    g_rec_kl = torch.autograd.grad(out["recon"] + out["kl"], enc, retain_graph=True)
    for a, b in zip(g_enc, g_rec_kl):  # ...but the encoder's loss leaves it out
        torch.testing.assert_close(a, b)
    disc = list(model.discriminator.parameters())
    g_disc = torch.autograd.grad(out["disc"], disc, retain_graph=True)
    g_parts = torch.autograd.grad(out["disc_real"] + 2 * out["disc_fake"], disc)
    for a, b in zip(g_disc, g_parts):
        torch.testing.assert_close(a, b)
    assert out["decoder"].item() == pytest.approx(0.5 * out["recon"].item() + out["adv"].item())


def test_gan_terms_on_hand_made_logits():
    logits = torch.tensor([0.0, 2.0, -3.0, 40.0])
    d = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(3)), 1.0]
    want_real = [-math.log(p) for p in d[:3]] + [0.0]
    want_fake = [-math.log(1 - p) for p in d[:3]] + [40.0]  # stays finite where D rounds to 1
    torch.testing.assert_close(losses.gan_real(logits), torch.tensor(want_real), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(losses.gan_fake(logits), torch.tensor(want_fake), atol=1e-6, rtol=1e-6)


def test_disc_and_adversarial_terms_equal_their_formulas_on_one_batch():
    torch.manual_seed(0)
    model = VAEGAN(latent_dim=3).eval()  # eval: batch norm uses fixed statistics
    x = torch.rand(4, 1, 28, 28)
    torch.manual_seed(2)
    out = model.loss(x, x)
    torch.manual_seed(2)
    mu, logvar = model.encode(x)
    rec = torch.sigmoid(model.decode(mu + torch.randn_like(mu) * (0.5 * logvar).exp()))
    prior = torch.sigmoid(model.decode(torch.randn_like(mu)))
    d = [torch.sigmoid(model.discriminate(t)[0]) for t in (x, rec, prior)]
    disc = -(d[0].log() + (1 - d[1]).log() + (1 - d[2]).log()).mean()
    adv = -(d[1].log() + d[2].log()).mean()
    bce = -(x * rec.log() + (1 - x) * (1 - rec).log()).flatten(1).sum(1).mean()
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)).mean()
    for name, want in (("disc", disc), ("adv", adv), ("recon", bce), ("kl", kl)):
        assert out[name].item() == pytest.approx(want.item(), rel=1e-4), name
    assert out["acc_real"].item() == (d[0] > 0.5).float().mean().item()


def test_feature_loss_uses_the_named_layer_only():
    torch.manual_seed(0)
    model = VAEGAN(latent_dim=4, arch="conv", recon="feature", feature_layer=2).eval()
    x = torch.rand(3, 1, 28, 28)

    def recon():
        torch.manual_seed(5)
        return model.loss(x, x)["recon"].item()

    base = recon()
    torch.manual_seed(5)
    mu, logvar = model.encode(x)
    rec = torch.sigmoid(model.decode(mu + torch.randn_like(mu) * (0.5 * logvar).exp()))
    blocks = model.discriminator.blocks
    f_real, f_rec = blocks[1](blocks[0](x)), blocks[1](blocks[0](rec))
    assert base == pytest.approx(0.5 * (f_rec - f_real).pow(2).flatten(1).sum(1).mean().item(),
                                 rel=1e-4)
    with torch.no_grad():  # a block after the named one does not enter the loss...
        for p in list(blocks[2].parameters()) + list(model.discriminator.head.parameters()):
            p.add_(1.0)
    assert recon() == pytest.approx(base, rel=1e-6)
    with torch.no_grad():  # ...the named one does
        blocks[1][0].weight.mul_(2.0)
    assert recon() != pytest.approx(base, rel=1e-3)
    with pytest.raises(ValueError, match="feature_layer=2 must be in 1..1"):
        VAEGAN(arch="mlp", recon="feature", feature_layer=2)


def test_backpropagating_the_reported_loss_alone_is_refused():
    """A plain one-optimizer loop on out["loss"] would train a plain VAE: it must fail loudly."""
    model = VAEGAN(latent_dim=3)
    x = torch.rand(4, 1, 28, 28)
    out = model.loss(x, x)
    torch.testing.assert_close(out["loss"], out["encoder"])  # the number reported is the encoder's
    with pytest.raises(RuntimeError, match="Train each network on its own loss"):
        out["loss"].backward()
    out = model.loss(x, x)
    steps = model.objectives(out)
    assert set(steps) == set(NETS) and steps["encoder"] is out["encoder"]
    steps["encoder"].backward()  # the loop's way is fine


def gated(model, disc_real, disc_fake):
    """Make model.loss report the given discriminator losses to the gate."""
    loss = model.loss

    def fixed(input, target, labels=None):
        out = loss(input, target, labels)
        out["disc_real"], out["disc_fake"] = torch.tensor(disc_real), torch.tensor(disc_fake)
        return out
    model.loss = fixed
    return model


@pytest.mark.parametrize("real,fake,skip_disc,skip_adv", [
    (0.1, 0.6, True, False),    # too good: the discriminator is not updated
    (0.6, 1.2, False, True),    # too bad: the decoder drops its adversarial term
    (0.1, 1.2, False, False),   # both at once: neither is skipped
    (0.6, 0.7, False, False)])
def test_equilibrium_gating_skips_the_right_update(real, fake, skip_disc, skip_adv):
    torch.manual_seed(0)
    model = VAEGAN(latent_dim=3, equilibrium=0.68, margin=0.35)
    x = torch.rand(6, 1, 28, 28)
    expected = copy.deepcopy(model)
    d_before = params(model.discriminator)
    torch.manual_seed(1)
    out = step(gated(model, real, fake), x, sgd(model, {n: 0.1 for n in NETS}))
    assert out["skips_disc"].item() == skip_disc and out["skips_adv"].item() == skip_adv
    d_moved = any(not torch.equal(a, b) for a, b in zip(params(model.discriminator), d_before))
    assert d_moved != skip_disc
    loss = own_losses(expected, x, seed=1)["decoder_without_adv" if skip_adv else "decoder"]
    grads = torch.autograd.grad(loss, list(expected.decoder.parameters()))
    for a, b, g in zip(params(model.decoder), params(expected.decoder), grads):
        torch.testing.assert_close(a, b - 0.1 * g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("batchnorm", [True, False])
def test_shapes_and_batchnorm_switch(shape, arch, batchnorm):
    model = VAEGAN(shape, latent_dim=5, arch=arch, batchnorm=batchnorm)
    has_bn = [any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in getattr(model, n).modules())
              for n in NETS]
    assert has_bn == [batchnorm] * 3
    x = torch.rand(4, *shape)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (4, 5)
    assert model.decode(mu).shape == (4, *shape)
    logit, features = model.discriminator(x, 1)
    assert logit.shape == (4,) and features.shape[0] == 4
    assert model.sample(3).shape == (3, *shape)
    if arch == "mlp":
        assert model.encoder[1].out_features == 25 and features.shape == (4, 256)  # d^2; 256


def test_test_loss_decodes_the_mean_and_reports_the_sampled_elbo_too():
    torch.manual_seed(0)
    model = VAEGAN(latent_dim=3).eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        out = model.test_loss(x, x)
        mu, logvar = model.encode(x)
        want = losses.bce_logits(model.decode(mu), x) + losses.kl_normal(mu, logvar)
    assert out["loss"].item() == pytest.approx(want.mean().item(), rel=1e-5)
    assert out["nelbo"].item() != pytest.approx(out["loss"].item(), rel=1e-4)


def test_test_accuracies_use_batch_statistics_as_in_training_and_change_no_state():
    torch.manual_seed(0)
    model = VAEGAN(latent_dim=3, arch="conv")
    x = torch.rand(16, 1, 28, 28)
    torch.manual_seed(1)
    step(model, x, sgd(model, {n: 0.1 for n in NETS}))
    model.eval()
    bn = model.discriminator.blocks[1][1]
    bn.running_mean += 5.0  # running averages far from any batch's statistics
    with torch.no_grad():
        d = copy.deepcopy(model.discriminator).train()  # a copy: its running stats may move
        want = (d(x, 3)[0] > 0).float().mean().item()
    seen = []
    bn.register_forward_hook(lambda m, inp, out: seen.append(out.mean((0, 2, 3))))
    state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        out = model.test_loss(x, x)
    assert len(seen) == 3  # real, reconstructed, sampled: each normalized by its own mean
    for mean in seen:
        torch.testing.assert_close(mean, bn.bias.detach(), atol=1e-4, rtol=0)
    assert out["acc_real"].item() == want
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())


def history(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def test_vaegan_run_logs_every_network_and_resumes_all_three_optimizers(tiny_data, tmp_path):
    common = ["--model", "vaegan", "--data-root", tiny_data, "--batch-size", "16",
              "--latent-dim", "4", "--arch", "conv", "--recon", "feature", "--gamma", "0.1",
              "--lr-disc", "3e-4", "--equilibrium", "0.68", "--scheduler", "step",
              "--step-size", "1"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    assert train.main(common + ["--epochs", "2", "--out", straight]) == 0
    assert train.main(common + ["--epochs", "1", "--out", split]) == 0
    assert train.main(["--resume", split, "--epochs", "2"]) == 0
    rows = history(straight)
    for col in ("train_decoder", "train_disc", "train_acc_real", "train_acc_rec",
                "train_acc_prior", "train_skips_disc", "train_skips_adv", "test_nelbo",
                "test_acc_real"):
        assert col in rows[0], col
    skips = float(rows[0]["train_skips_disc"]) + float(rows[0]["train_skips_adv"])
    assert skips == int(skips) and 0 <= skips <= 2 * 4  # counts of the 4 steps per epoch
    assert os.path.exists(os.path.join(straight, "training_samples.png"))
    a = torch.load(os.path.join(straight, "checkpoint.pt"), weights_only=True)
    b = torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)
    assert set(a["optimizer"]) == set(NETS)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["optimizer"]["discriminator"]["param_groups"][0]["lr"] == pytest.approx(3e-4 * 0.25)
    assert history(split) == [{**r, "seconds": s["seconds"]} for r, s in zip(rows, history(split))]
