"""The VQ-VAE's learned prior: causal, trained on a saved run's codes, sampled and evaluated end to end."""
import csv
import json
import math
import os

import pytest
import torch

import evaluate
import train
from prior import Prior


@pytest.fixture
def vq_run(tiny_data, tmp_path):
    run = str(tmp_path / "vq")
    assert train.main(["--model", "vqvae", "--data-root", tiny_data, "--epochs", "1", "--batch-size", "16",
                       "--latent-dim", "4", "--codebook", "8", "--width", "8", "--out", run,
                       "--log-interval", "1000"]) == 0
    return run


def test_each_code_s_logits_depend_only_on_the_codes_before_it(vq_run):
    torch.manual_seed(0)
    prior = Prior((1, 28, 28), prior_of=vq_run, layers=2, heads=2, width=16, dropout=0.0).eval()
    codes = torch.randint(0, 8, (3, 49))
    changed = codes.clone()
    changed[:, 20] = (codes[:, 20] + 1) % 8
    a, b = prior.logits(codes), prior.logits(changed)
    assert torch.allclose(a[:, :21], b[:, :21])  # position 20's own logits are read before code 20
    assert not torch.allclose(a[:, 21:], b[:, 21:])


def test_drawing_with_cached_keys_gives_the_full_passes_logits_and_draws(vq_run):
    torch.manual_seed(0)
    prior = Prior((1, 28, 28), prior_of=vq_run, layers=2, heads=2, width=16, dropout=0.0).eval()
    codes = torch.randint(0, 8, (3, 49))
    full, caches = prior.logits(codes), [[] for _ in prior.blocks]
    tokens = torch.cat([torch.full((3, 1), prior.size), codes], 1)  # code i is drawn after token i
    with torch.no_grad():
        steps = torch.stack([prior.next_logits(tokens[:, i:i + 1], i, caches) for i in range(49)], 1)
    assert torch.allclose(steps, full, atol=1e-5)
    # the draws of sample_codes: the same Gumbel noise, read off one full pass per code (no cache)
    drawn, generator = torch.empty(5, 0, dtype=torch.long), torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(49):
            logits = prior.logits(torch.cat([drawn, drawn.new_zeros(5, 1)], 1))[:, -1]
            u = torch.rand(5, 8, generator=generator).clamp_(1e-12, 1 - 1e-7)
            drawn = torch.cat([drawn, (logits - torch.log(-torch.log(u))).argmax(1, keepdim=True)], 1)
    assert torch.equal(prior.sample_codes(5, torch.Generator().manual_seed(1)), drawn)


def test_a_prior_run_learns_the_codes_and_samples_through_the_vqvae(vq_run, tiny_data, tmp_path):
    run = str(tmp_path / "prior")
    assert train.main(["--model", "prior", "--prior-of", vq_run, "--data-root", tiny_data, "--epochs", "3",
                       "--batch-size", "16", "--layers", "1", "--heads", "2", "--width", "16", "--lr", "3e-3",
                       "--out", run, "--log-interval", "1000"]) == 0
    assert evaluate.main([run, "--data-root", tiny_data, "--fid-samples", "0", "--no-figures"]) == 0
    m = json.load(open(os.path.join(run, "metrics.json")))
    rows = list(csv.DictReader(open(os.path.join(run, "history.csv"))))
    nll = float(rows[-1]["test_kl"])  # the codes' NLL on the test images, nats per image
    assert nll < 49 * math.log(8)  # below the uniform prior's grid log K: it learned the codes
    assert m["test_loss"] == pytest.approx(float(rows[-1]["test_recon"]) + nll, rel=1e-4)
    prior = Prior((1, 28, 28), prior_of=vq_run)  # the frozen vqvae is the run's, weights and all
    saved = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)["model"]
    assert torch.equal(saved["vqvae.codes.vectors"], prior.vqvae.codes.vectors)
    trained = {id(p) for ps in prior.parameter_groups().values() for p in ps}
    assert not any(id(p) in trained or p.requires_grad for p in prior.vqvae.parameters())  # frozen
    assert not prior.train().vqvae.training  # and kept in evaluation mode
    images = prior.sample(5, torch.Generator().manual_seed(0))
    assert images.shape == (5, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    again = prior.sample(5, torch.Generator().manual_seed(0))
    assert torch.equal(images, again)


def test_the_prior_refuses_a_run_that_is_not_a_vqvae_s_or_of_other_images(vq_run, tiny_data, tmp_path):
    with pytest.raises(ValueError, match="3, 32, 32"):
        Prior((3, 32, 32), prior_of=vq_run)
    with pytest.raises(ValueError, match="prior_of"):
        Prior((1, 28, 28))
