"""samplers.py: the GMM fitted to codes from a known mixture recovers it; the two-stage VAE learns a
density it can draw from; evaluate.py --sampler measures and draws each sampler, the AE's included."""
import json
import os

import pytest
import torch

import evaluate
import samplers
import train
from conftest import one_line

MEANS = torch.tensor([[-6.0, 0.0, 2.0], [0.0, 6.0, -2.0], [6.0, -3.0, 0.0]])


def mixture(n, generator):
    """n codes of a 3-component mixture in 3-d (weights 0.5, 0.3, 0.2; component k with scale 0.5 + 0.25 k)."""
    k = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, replacement=True, generator=generator)
    return MEANS[k] + (0.5 + 0.25 * k[:, None]) * torch.randn(n, 3, generator=generator), k


def test_the_gmm_sampler_recovers_a_known_mixture():
    codes, _ = mixture(6000, torch.Generator().manual_seed(0))
    draw = samplers.fit_gmm(codes, components=3, seed=0)
    drawn = draw(20000, torch.Generator().manual_seed(1))
    assert drawn.shape == (20000, 3) and drawn.dtype == torch.float32
    nearest = torch.cdist(drawn, MEANS).argmin(1)  # each draw's component, by the nearest true mean
    share = torch.bincount(nearest, minlength=3).float() / len(drawn)
    assert share.tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.02)
    for k in range(3):  # the means recovered, and each component's spread
        assert drawn[nearest == k].mean(0).tolist() == pytest.approx(MEANS[k].tolist(), abs=0.1)
        assert drawn[nearest == k].std(0).mean().item() == pytest.approx(0.5 + 0.25 * k, abs=0.06)
    again = draw(20000, torch.Generator().manual_seed(1))
    assert torch.equal(drawn, again)  # the generator makes the draws repeatable


def test_one_gaussian_cannot_draw_a_mixture_the_gmm_can():
    """What makes the GMM worth having: a single Gaussian (the prior's shape) puts mass between modes."""
    codes, _ = mixture(6000, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(2)
    far = lambda x: (torch.cdist(x, MEANS).min(1).values > 3).float().mean().item()  # noqa: E731
    assert far(samplers.fit_gmm(codes, 1)(5000, gen)) > 0.2 and far(samplers.fit_gmm(codes, 3)(5000, gen)) < 0.01


def test_the_two_stage_vae_learns_the_codes_density():
    codes, _ = mixture(3000, torch.Generator().manual_seed(0))
    rng = torch.get_rng_state()
    draw, loss = samplers.fit_two_stage(codes, epochs=300, seed=0, width=64)
    assert torch.equal(torch.get_rng_state(), rng)  # its training leaves the global generator alone
    drawn = draw(4000, torch.Generator().manual_seed(1))
    assert drawn.shape == (4000, 3) and loss < 2.0  # N(0, I) on the standardised codes would be 4.26
    near = (torch.cdist(drawn, MEANS).min(1).values < 2).float().mean().item()
    assert near > 0.7  # most draws land on a mode, not between them (of the codes themselves: 0.92)
    assert drawn.mean(0).tolist() == pytest.approx(codes.mean(0).tolist(), abs=0.6)


def test_the_two_stage_draws_spread_like_gaussian_codes():
    # codes already N(m, s^2): the second stage's posterior collapses, so its draws are p(u|v)'s noise,
    # which must keep the codes' spread rather than give their mean 4000 times
    codes = torch.randn(4000, 6, generator=torch.Generator().manual_seed(0)) * 0.7 + 0.3
    draw, _ = samplers.fit_two_stage(codes, epochs=5, seed=0, width=64)
    drawn = draw(4000, torch.Generator().manual_seed(1))
    assert drawn.std(0).tolist() == pytest.approx(codes.std(0).tolist(), rel=0.2)
    assert drawn.mean(0).tolist() == pytest.approx(codes.mean(0).tolist(), abs=0.1)


def test_evaluate_measures_and_draws_every_sampler(tiny_data, tmp_path, capsys):
    runs = {m: str(tmp_path / m) for m in ("vae", "ae")}
    for model, run in runs.items():
        assert train.main(["--model", model, "--data-root", tiny_data, "--epochs", "1", "--batch-size", "16",
                           "--latent-dim", "4", "--out", run]) == 0
    assert evaluate.main([*runs.values(), "--out", str(tmp_path / "cmp"), "--fid-samples", "30", "--sampler",
                          "prior,gmm,two-stage", "--gmm-components", "2", "--two-stage-epochs", "2"]) == 0
    out = capsys.readouterr().out
    vae, ae = (json.load(open(os.path.join(r, "metrics.json"))) for r in runs.values())
    for key in ("fid", "fid_gmm", "fid_two_stage", "kid_gmm", "precision_two_stage", "recall_gmm"):
        assert key in vae, key
    assert "fid" not in ae and "fid_gmm" in ae and "fid_two_stage" in ae  # an AE has codes, not a prior
    assert vae["fid_gmm"] != vae["fid"] and ae["features"]["domain"]["samplers"] == ["gmm", "two-stage"]
    assert "sampler gmm: fitted to 60 training codes (2 components)" in out
    for name in ("samples.png", "samples-gmm.png", "samples-two-stage.png"):
        assert os.path.exists(os.path.join(tmp_path / "cmp", "vae", name)), name
    assert not os.path.exists(os.path.join(tmp_path / "cmp", "ae", "samples.png"))
    assert os.path.exists(os.path.join(tmp_path / "cmp", "ae", "samples-gmm.png"))
    assert "FID gmm" in out


def test_a_bad_sampler_is_one_line_and_writes_nothing(tiny_data, tmp_path, capsys):
    run = str(tmp_path / "vae")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--out", run]) == 0
    capsys.readouterr()
    assert evaluate.main([run, "--sampler", "prior,gauss"]) == 2
    one_line(capsys.readouterr().err, "unknown --sampler 'gauss'", "prior, gmm, two-stage")
    assert evaluate.main([run, "--sampler", "gmm", "--gmm-components", "0"]) == 2
    one_line(capsys.readouterr().err, "--gmm-components must be in [1, 1000]")
    assert evaluate.main([run, "--sampler", "gmm", "--gmm-components", "100", "--no-figures"]) == 2
    one_line(capsys.readouterr().err, "more than the 60 training codes")
    assert not os.path.exists(os.path.join(run, "metrics.json"))
