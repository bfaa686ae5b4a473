"""vqvae.py: the straight-through gradient, the codebook's updates (loss term, moving averages,
restarts) on tiny cases, and a run trained and evaluated through train.py and evaluate.py."""
import csv
import json
import math
import os

import pytest

import torch

import evaluate
import train
from vqvae import VQVAE, Codebook, straight_through


def test_the_straight_through_estimator_passes_the_gradient_unchanged():
    z_e, z_q = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4)
    out = straight_through(z_e, z_q)
    torch.testing.assert_close(out, z_q)  # the values are the codes' (to rounding)
    weights = torch.randn_like(z_q)
    (out * weights).sum().backward()
    assert torch.equal(z_e.grad, weights)  # the gradient is the identity


def test_the_encoder_learns_from_the_reconstruction_through_the_quantisation():
    """With no commitment term and EMA codes, the reconstruction is the encoder's only teacher: its
    gradient crosses the argmin by the straight-through estimator, and equals the decoder input's."""
    torch.manual_seed(0)
    model, x = VQVAE((1, 8, 8), latent_dim=3, codebook=4, width=8, commitment=0.0, ema=True), torch.rand(4, 1, 8, 8)
    grads = {}

    def keep(name, t):  # the gradient reaching tensor t, as grads[name]
        t.register_hook(lambda g: grads.setdefault(name, g))
    model.decoder[0].register_forward_hook(lambda m, i, o: keep("dec", i[0]) and None)
    model.encoder[-1].register_forward_hook(lambda m, i, o: keep("enc", o) and None)
    out = model.loss(x, x)
    assert set(model.term_weights) == {"commitment"} and torch.equal(out["loss"], out["recon"])
    out["loss"].backward()
    assert torch.equal(grads["enc"], grads["dec"]) and grads["enc"].abs().sum() > 0
    assert all(p.grad is not None for p in model.encoder.parameters()) and model.encoder[-1].weight.grad.abs().sum() > 0


def test_the_codebook_term_pulls_each_used_code_to_its_vectors_only():
    torch.manual_seed(0)
    model, x = VQVAE((1, 8, 8), latent_dim=3, codebook=16, width=8, restart=0.0), torch.rand(4, 1, 8, 8)
    model.train()
    z_e = model.encoder(x).detach()
    index, _ = model.quantize(z_e)
    used = torch.zeros(16, dtype=torch.bool)
    used[index.unique()] = True
    before = model.codes.vectors.detach().clone()
    out = model.loss(x, x)
    grad, = torch.autograd.grad(out["codebook"], model.codes.vectors)
    assert torch.all(grad[~used] == 0) and torch.all(grad[used].abs().sum(1) > 0)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    for k in index.unique():  # minus the gradient points from code k to the mean of its vectors
        target = flat[index.flatten() == k].mean(0)
        moved = before[k] - 0.01 * grad[k]
        assert (moved - target).norm() < (before[k] - target).norm()


def test_the_moving_averages_move_the_codes_as_the_formula_says():
    book = Codebook(2, 2, ema=True, decay=0.5, restart=0.0)
    book.vectors.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    flat = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    index = book.assign(flat)
    assert index.tolist() == [0, 0, 1]
    book.update(flat, index)
    assert book.usage.tolist() == [1.0, 0.5]  # 0.5 * 0 + 0.5 * counts
    torch.testing.assert_close(book.sums, torch.tensor([[0.5, 0.5], [4.5, 4.5]]))
    # each vector: its sum over its (Laplace-smoothed) count, here the mean of its vectors
    torch.testing.assert_close(book.vectors, torch.tensor([[0.5, 0.5], [9.0, 9.0]]), atol=1e-4, rtol=0)


def test_a_dead_code_restarts_at_an_encoder_output():
    torch.manual_seed(0)
    book = Codebook(3, 2, restart=1.0)
    book.usage.fill_(5.0)
    with torch.no_grad():
        book.vectors.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]))
    flat = torch.tensor([[0.1, 0.0], [0.9, 1.0]] * 4)
    for _ in range(200):  # code 2 is never picked: its moving count decays below 1
        book.update(flat, book.assign(flat))
    assert book.vectors[2].tolist() in flat.tolist()  # moved onto one of the batch's vectors
    assert book.usage[2] > 1.0  # and given a batch's average use, not restarted at once again


def test_a_vqvae_run_trains_and_is_evaluated(tiny_data, tmp_path):
    run = str(tmp_path / "vq")
    assert train.main(["--model", "vqvae", "--data-root", tiny_data, "--epochs", "2", "--batch-size", "16",
                       "--latent-dim", "4", "--codebook", "8", "--width", "8", "--out", run,
                       "--log-interval", "1000"]) == 0
    assert evaluate.main([run, "--data-root", tiny_data, "--fid-samples", "0", "--no-figures"]) == 0
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert 0 < m["mse"] < 1 and m["test_loss"] > m["mse"]
    rows = list(csv.DictReader(open(os.path.join(run, "history.csv"))))
    assert {"train_perplexity", "train_used_codes", "test_kl"} <= set(rows[0])
    assert float(rows[-1]["test_kl"]) == pytest.approx(7 * 7 * math.log(8), rel=1e-5)  # uniform over 8 codes
