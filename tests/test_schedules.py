"""The KL term's schedules (losses.py, the VAE's kl_terms), posterior collapse reported by
train.py, and the beta-TCVAE's decomposition of the KL (btcvae.py)."""
import csv
import math
import os

import pytest
import torch

import btcvae
import losses
import metrics
import models
import train


def test_each_schedule_gives_the_weight_it_promises_at_given_steps():
    assert [losses.warmup_weight(4.0, t, 2) for t in (0, 0.5, 1, 2, 7)] == [0, 1, 2, 4, 4]
    assert [losses.cyclical_weight(1.0, t, 4) for t in (0, 1, 2, 3, 4, 5, 9)] == [0, 0.5, 1, 1, 0, 0.5, 0.5]
    assert [losses.capacity_target(25.0, t, 10) for t in (0, 2, 10, 20)] == [0, 5, 25, 25]
    assert losses.capacity_target(25.0, 0, 0) == 25  # no ramp: C_max from the start
    kl = torch.tensor([[0.1, 2.0, 0.0], [0.3, 4.0, 0.0]])  # (B, D): batch means 0.2, 3, 0
    assert losses.free_bits_kl(kl, 0.5).item() == pytest.approx(0.5 + 3 + 0.5)
    assert losses.capacity_kl(torch.tensor(3.0), 5.0).item() == 2


def vae(**options):
    torch.manual_seed(0)
    return models.build("vae", (1, 8, 8), None, {"hidden": (16,), "latent_dim": 3, **options})


def terms_at(model, progress):
    model.progress = progress
    torch.manual_seed(1)
    x = torch.rand(6, 1, 8, 8)
    return model.loss(x, x)


def test_the_vae_loss_follows_its_schedule_and_its_terms_add_up():
    plain = terms_at(vae(beta=4.0), 0.3)
    assert set(plain) == {"loss", "recon", "kl"}  # no schedule: the terms as before
    warm = terms_at(vae(beta=4.0, kl_warmup=2.0), 0.5)
    assert warm["kl_term"].item() == pytest.approx(1.0 * warm["kl"].item())  # beta 4 x 0.5 / 2
    assert warm["loss"].item() == pytest.approx(warm["recon"].item() + warm["kl_term"].item())
    assert terms_at(vae(beta=4.0, kl_warmup=2.0), None)["kl_term"].item() == pytest.approx(
        4 * plain["kl"].item())  # outside training: the schedule's end
    cyc = terms_at(vae(kl_cycle=2.0), 2.5)  # half way up the ramp of the second cycle
    assert cyc["kl_term"].item() == pytest.approx(0.5 * cyc["kl"].item())
    cap = terms_at(vae(beta=100.0, capacity=10.0, capacity_epochs=4.0), 2.0)
    assert cap["capacity_c"].item() == 5
    assert cap["kl_term"].item() == pytest.approx(100 * abs(cap["kl"].item() - 5))
    free = terms_at(vae(free_bits=50.0), 0.0)  # far above every dimension's KL: the floor
    assert free["kl_term"].item() == pytest.approx(3 * 50.0)
    for model, out in ((vae(kl_warmup=2.0), warm), (vae(capacity=10.0), cap)):
        weights = model.term_weights
        total = out["recon"] + sum(w * out[k] for k, w in weights.items() if w)
        assert total.item() == pytest.approx(out["loss"].item())


def test_free_bits_stop_the_gradient_of_a_dimension_below_the_floor():
    model = vae(free_bits=50.0)
    model.progress = 0.0
    x = torch.rand(6, 1, 8, 8)
    mu, logvar = model.encode(x)
    _, term = model.kl_terms(mu, logvar)
    assert torch.autograd.grad(term, mu)[0].abs().max() == 0


def test_the_test_loss_is_the_elbo_whatever_the_schedule():
    model = vae(beta=4.0, kl_warmup=2.0)
    model.progress = 0.1
    x = torch.rand(6, 1, 8, 8)
    torch.manual_seed(2)
    out = model.test_loss(x, x)
    assert set(out) == {"loss", "recon", "kl"}
    assert out["loss"].item() == pytest.approx(out["recon"].item() + out["kl"].item())


@pytest.mark.parametrize("flags,words", [
    (["--kl-warmup", "1", "--kl-cycle", "2"], "choose one schedule of beta"),
    (["--capacity", "5", "--free-bits", "0.5"], "give it alone"),
    (["--capacity-epochs", "3"], "give capacity too"),
    (["--kl-warmup", "-1"], "must be a number >= 0"),
    (["--model", "btcvae", "--free-bits", "1"], "--free-bits"),
    (["--model", "ae", "--kl-warmup", "1"], "--kl-warmup")])
def test_bad_schedules_are_refused_before_any_work(tiny_data, tmp_path, capsys, flags, words):
    out = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--out", out, *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and not os.path.exists(out)


def history(run):
    with open(os.path.join(run, "history.csv")) as f:
        return list(csv.DictReader(f))


def test_a_warm_up_run_logs_its_kl_term_and_the_active_units(tiny_data, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "2", "--batch-size", "16",
                       "--kl-warmup", "4", "--beta", "2", "--out", run]) == 0
    rows = history(run)
    for row in rows:  # the mean of beta_t * KL over the epoch's steps: beta_t below 2 x e / 4
        ratio = float(row["train_kl_term"]) / float(row["train_kl"])
        assert 0 < ratio < 2 * int(row["epoch"]) / 4
        assert float(row["test_loss"]) == pytest.approx(float(row["test_recon"]) + float(row["test_kl"]), abs=1e-3)
        assert 0 <= int(row["test_active_units"]) <= 20
    assert f"; active units {rows[-1]['test_active_units']} of 20" in capsys.readouterr().out


def test_posterior_collapse_is_named(tiny_data, tmp_path, capsys, monkeypatch):
    run = str(tmp_path / "run")
    monkeypatch.setattr(metrics, "count_active", lambda *a, **k: 3)  # 3 of 20, below a quarter
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--out", run]) == 0
    assert "warning: posterior collapse: 3 of 20 latent units are active" in capsys.readouterr().out


def test_active_units_count_the_codes_that_vary(tiny_data):
    model = vae()
    model.encoder[-1].weight.data[:3] = 0  # mu = the bias alone: no unit varies
    model.encoder[-1].bias.data[:3] = 0.5
    cfg = {"output": "sigmoid"}
    images = (torch.rand(40, 1, 8, 8) * 255).to(torch.uint8)
    assert metrics.count_active(model, (images, torch.zeros(40, dtype=torch.long)), cfg["output"], None) == 0
    model.encoder[-1].weight.data[0] = 5.0  # unit 1 now moves with the image
    assert metrics.count_active(model, (images, torch.zeros(40, dtype=torch.long)), cfg["output"], None) == 1
    assert metrics.count_active(models.build("ae", (1, 8, 8), None, {"hidden": (16,)}), (images, torch.zeros(40, dtype=torch.long)), cfg["output"], None) is None


def test_the_kl_decomposition_adds_up_and_vanishes_for_one_posterior():
    torch.manual_seed(0)
    mu, logvar = torch.randn(32, 4), torch.randn(32, 4) * 0.3
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    mi, tc, dim_kl = btcvae.kl_decomposition(z, mu, logvar)
    log_q = btcvae.log_normal(z, mu, logvar).sum(1)
    log_p = btcvae.log_normal(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    assert (mi + tc + dim_kl).item() == pytest.approx((log_q - log_p).mean().item(), rel=1e-5)
    same = mu[:1].expand(32, 4), logvar[:1].expand(32, 4)  # every image the same posterior
    z = same[0] + torch.randn(32, 4) * (0.5 * same[1]).exp()
    mi, tc, _ = btcvae.kl_decomposition(z, *same)
    assert abs(mi.item()) < 1e-5 and abs(tc.item()) < 1e-5  # q(z) = q(z|x), a product


def test_the_total_correlation_sees_dependent_units():
    torch.manual_seed(0)
    a = torch.randn(256, 1) * 2
    independent = torch.cat([a, torch.randn(256, 1) * 2], 1)
    tied = torch.cat([a, a], 1)  # both units carry the same number
    logvar = torch.full((256, 2), -4.0)
    tcs = [btcvae.kl_decomposition(m + 0.1 * torch.randn_like(m), m, logvar)[1].item()
           for m in (independent, tied)]
    assert tcs[1] > tcs[0] + 1


def test_the_beta_tcvae_weighs_its_three_terms_and_trains(tiny_data, tmp_path):
    model = models.build("btcvae", (1, 8, 8), None, {"hidden": (16,), "latent_dim": 3, "beta": 6.0,
                                                     "mi_weight": 0.5})
    torch.manual_seed(0)
    x = torch.rand(8, 1, 8, 8)
    out = model.loss(x, x)
    expected = out["recon"] + 0.5 * out["mi"] + 6 * out["tc"] + out["dim_kl"]
    assert out["loss"].item() == pytest.approx(expected.item())
    total = out["recon"] + sum(w * out[k] for k, w in model.term_weights.items() if w)
    assert total.item() == pytest.approx(out["loss"].item())
    test = model.test_loss(x, x)
    assert test["loss"].item() == pytest.approx((test["recon"] + test["kl"]).item())
    run = str(tmp_path / "run")
    assert train.main(["--model", "btcvae", "--data-root", tiny_data, "--epochs", "2", "--beta", "4",
                       "--kl-warmup", "1", "--out", run]) == 0
    rows = history(run)
    assert all(math.isfinite(float(r["train_tc"])) for r in rows) and "train_tc_term" in rows[0]
