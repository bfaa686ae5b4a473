"""metrics.py against closed forms, figures.py's files, and evaluate.py on real run folders."""
import json
import math
import os

import pytest
import torch
import torch.nn as nn
from PIL import Image

import evaluate
import figures
import losses
import metrics
import runs
import train
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


def png_size(path):
    assert os.path.getsize(path) > 0
    with Image.open(path) as im:
        return im.size


def test_each_figure_writes_a_png_of_the_expected_size(tmp_path):
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=2, hidden=(16,)).eval()
    x = torch.rand(4, 1, 28, 28)
    p = lambda name: str(tmp_path / name)  # noqa: E731
    cell = 2 * 30  # 28 pixels + 2 of padding, drawn at 2x
    grid_w = lambda n: 2 * (n * 30 + 2)  # noqa: E731
    # the left margin holds the longest row label, 8 pixels a character
    width = lambda n, longest: figures.RIGHT + 8 * longest + grid_w(n) + figures.RIGHT  # noqa: E731
    height = lambda rows, xlab=False: figures.TOP + rows * cell + 4 + figures.BOTTOM + 20 * xlab  # noqa: E731
    figures.reconstructions(x, {"run a": x, "run b": x}, p("rec.png"))
    assert png_size(p("rec.png")) == (width(4, len("original")), height(3)) == (328, 224)
    figures.denoising(x, x, x, p("den.png"))
    assert png_size(p("den.png")) == (width(4, len("noisy input")), height(3))
    figures.samples(model, 3, p("samples.png"), "samples", torch.Generator().manual_seed(0))
    assert png_size(p("samples.png")) == (width(3, 0), height(3))  # no row labels, no margin
    figures.manifold(model, 5, p("manifold.png"), "manifold")  # and "z1" under the columns
    assert png_size(p("manifold.png")) == (width(5, len("z2 = +1.6")), height(5, True) + 20)
    figures.interpolations(model, x[:2], x[2:], 6, p("interp.png"))  # the two images at the ends
    assert png_size(p("interp.png")) == (width(6 + 2, len("pair 1: spherical")), height(4, True))  # 2 pairs x (linear, slerp)
    figures.traversal(model, x, [1, 0], torch.zeros(2), torch.ones(2), 6, p("trav.png"), "t", ["a", "b"])
    # the image, then 7 values (6 made odd, so that 0 is among them), an axis label below
    assert png_size(p("trav.png")) == (width(1 + 7, 1), height(2, True) + 20)
    figures.latent_scatter(torch.randn(50, 5), torch.arange(50) % 10, p("latent.png"), "codes")
    assert png_size(p("latent.png")) == (640, 560)
    rows = [{"epoch": e, "train_loss": 10 - e, "test_loss": 11 - e, "train_kl": e, "test_kl": e,
             "train_recon": 9, "test_recon": 9, "train_skips_disc": 0} for e in (1, 2, 3)]
    figures.loss_curves({"a": rows, "b": rows[:2]}, p("curves.png"))
    # a skip count that stayed 0 has no panel; the legend below: 4 lines, two to a row
    assert png_size(p("curves.png")) == (1200, 300 + 2 * 14 + 10)
    rows[1]["train_skips_disc"] = 4
    figures.loss_curves({"a": rows}, p("curves.png"))
    assert png_size(p("curves.png")) == (800, 600 + 14 + 10)  # 4 panels: two rows of two
    figures.kl_bars({"a": torch.rand(6), "b": torch.rand(6)}, p("kl.png"))
    assert png_size(p("kl.png")) == (640, 460)


def test_loss_curves_have_whole_epochs_units_and_a_legend_outside_the_panels(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.append(fig))
    rows = [{"epoch": 1, "train_loss": 39.54, "test_loss": 39.61, "train_grad_norm": 3.0}]
    figures.loss_curves({"a": rows}, str(tmp_path / "c.png"))  # one epoch, nearly equal losses
    fig = drawn[0]
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_legend() is None  # one legend, the figure's
        low, high = ax.get_ylim()
        assert high - low >= 0.019 * max(abs(low), abs(high))  # noise is not blown up
    units = {ax.get_title(): ax.get_ylabel() for ax in fig.axes}
    assert units == {"loss": "nats per image", "grad_norm": "gradient norm (mean per step)"}
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == ["a train", "a test"]


def test_loss_curves_tell_apart_losses_of_different_kinds_and_keep_internals_apart(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.append(fig))
    rows = [{"epoch": e, "train_loss": 10 - e, "test_loss": 11 - e, "train_recon": 9,
             "train_grad_norm": 2.0, "train_acc_real": 0.5} for e in (1, 2)]
    main, internal = figures.split_terms(figures.history_terms({"a": rows}))
    assert main == ["loss", "recon"] and internal == ["grad_norm", "acc_real"]
    figures.loss_curves({"ae": rows, "vae": rows}, "c.png", main, kinds={"ae": "reconstruction term",
                                                                       "vae": "negative ELBO"})
    loss_panel = drawn[0].axes[0]
    assert "different quantities" in loss_panel.get_title()
    assert [t.get_text() for t in loss_panel.get_legend().get_texts()] == [
        "ae train [reconstruction term]", "ae test [reconstruction term]",
        "vae train [negative ELBO]", "vae test [negative ELBO]"]
    figures.loss_curves({"a": rows, "b": rows}, "c.png", main, kinds={"a": "negative ELBO", "b": "negative ELBO"})
    assert drawn[1].axes[0].get_title() == "loss" and drawn[1].axes[0].get_legend() is None


def test_kl_bars_are_sorted_numbered_from_1_on_one_scale(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.append(fig))
    figures.kl_bars({"a": torch.tensor([0.1, 3.0, 1.0]), "b": torch.tensor([0.5, 0.2, 0.0])}, "kl.png")
    a, b = drawn[0].axes
    assert [t.get_text() for t in a.get_xticklabels()] == ["2", "3", "1"]
    assert [round(p.get_height(), 2) for p in a.patches] == [3.0, 1.0, 0.1]
    assert a.get_ylim() == b.get_ylim()


def test_slerp_keeps_the_norm_between_vectors_of_equal_norm():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    z = figures.slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(z.norm(dim=1), torch.full((5,), 3.0))
    assert torch.allclose(z[0], a) and torch.allclose(z[-1], b, atol=1e-6)


def make_run(tiny_data, path, *extra, epochs="2"):
    args = ["--data-root", tiny_data, "--epochs", epochs, "--batch-size", "16", "--latent-dim", "2",
            "--hidden", "32", "--out", str(path), "--no-download", "--log-interval", "1000", *extra]
    assert train.main(args) == 0
    return str(path)


def last_row(run_dir):
    return runs.read_history(run_dir, None)[-1]


@pytest.mark.e2e
def test_evaluate_reproduces_the_printed_test_loss_of_each_model(tiny_data, tmp_path, capsys):
    vae_run = make_run(tiny_data, tmp_path / "vae")
    ae_run = make_run(tiny_data, tmp_path / "ae", "--model", "ae", "--noise", "gaussian:0.3")
    gan_run = make_run(tiny_data, tmp_path / "gan", "--model", "vaegan")
    out = str(tmp_path / "figs")
    assert evaluate.main([vae_run, ae_run, gan_run, "--iw-samples", "50", "--out", out, "--n", "4"]) == 0
    printed = capsys.readouterr().out
    got = {name: json.load(open(os.path.join(run, "metrics.json")))
           for name, run in (("vae", vae_run), ("ae", ae_run), ("gan", gan_run))}
    # The VAE's test loss is a one-sample estimate: equal within its sampling error.
    vae = got["vae"]
    single_se = vae["nelbo_se"] * math.sqrt(50)
    assert abs(vae["nelbo"] - float(last_row(vae_run)["test_loss"])) < 4 * single_se + 1e-3
    assert abs(vae["test_loss"] - float(last_row(vae_run)["test_loss"])) < 6 * single_se + 1e-3
    assert vae["nll_iw"] <= vae["nelbo"] and len(vae["kl_per_dim"]) == 2
    # The AE's and the VAE-GAN's (z = mu) test losses are deterministic: equal.
    for name, run in (("ae", ae_run), ("gan", gan_run)):
        assert got[name]["test_loss"] == pytest.approx(float(last_row(run)["test_loss"]), rel=1e-5)
    assert got["ae"]["psnr"] > got["ae"]["psnr_noisy"] - 30 and "nll_iw" not in got["ae"]
    assert {"acc_real", "acc_rec", "acc_prior", "nll_iw", "bits_per_dim"} <= set(got["gan"])
    for m in got.values():
        assert m["gap"] == pytest.approx(m["test_loss"] - m["train_loss"])
        assert 0 <= m["probe_accuracy"] <= 1 and m["units"]["nll_iw"].startswith("importance")
    # how long the likelihood will take, said before it is done
    assert printed.count("the likelihood with K = 50 importance samples: about ") == 2  # vae, gan
    # One markdown row per run, and the figures.
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0][2:] for r in rows] == ["run", "vae", "ae", "gan"]
    assert {"reconstructions.png", "loss_curves.png", "kl_per_dim.png", "table.md"} <= set(os.listdir(out))
    assert {"samples.png", "manifold.png", "traversal.png", "interpolation.png", "latent.png",
            "kl_per_dim.png"} <= set(os.listdir(os.path.join(out, "vae")))
    assert "denoising.png" in os.listdir(os.path.join(out, "ae"))
    assert "samples.png" not in os.listdir(os.path.join(out, "ae"))
    # the discriminator's numbers and the gradient norms go to a second figure
    assert {"loss_curves.png", "training_internals.png"} <= set(os.listdir(os.path.join(out, "gan")))
    assert "training_internals.png" in os.listdir(out)
    # side by side: a row of 2n samples for each run that can sample (the VAE, the VAE-GAN)
    cell, longest = 2 * 30, max(len("vae"), len("gan"))
    assert png_size(os.path.join(out, "samples.png")) == (
        figures.RIGHT + 8 * longest + 2 * (8 * 30 + 2) + figures.RIGHT, figures.TOP + 2 * cell + 4 + figures.BOTTOM)


def test_the_likelihood_is_skipped_by_default_and_says_which_flag_adds_it(tiny_data, tmp_path, capsys):
    run = make_run(tiny_data, tmp_path / "vae", epochs="1")
    assert evaluate.main([run, "--no-figures", "--out", str(tmp_path / "e")]) == 0
    assert "skipped by default; --iw-samples 1000 adds it" in capsys.readouterr().out
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert "nll_iw" not in m and "test_loss" in m and "probe_accuracy" in m


def test_a_folder_of_runs_and_a_glob_find_the_same_runs(tiny_data, tmp_path):
    make_run(tiny_data, tmp_path / "runs" / "a", epochs="1")
    make_run(tiny_data, tmp_path / "runs" / "b", epochs="1")
    folder = runs.find_runs([str(tmp_path / "runs")])
    assert folder == runs.find_runs([str(tmp_path / "runs" / "*")])
    assert [os.path.basename(r) for r in folder] == ["a", "b"]


def test_bad_runs_and_flags_give_one_line_errors(tiny_data, tmp_path, capsys):
    done = make_run(tiny_data, tmp_path / "done", epochs="1")
    unfinished = make_run(tiny_data, tmp_path / "unfinished", epochs="1")
    cfg = json.load(open(os.path.join(unfinished, "config.json")))
    cfg["epochs"] = 3  # as if interrupted after epoch 1 of 3
    open(os.path.join(unfinished, "config.json"), "w").write(json.dumps(cfg))
    other, empty = tmp_path / "other", tmp_path / "empty"
    other.mkdir()
    empty.mkdir()
    (other / "config.json").write_text(json.dumps({"model": "gan", "epochs": 1}))
    mixed = make_run(tiny_data, tmp_path / "mixed", epochs="1")
    cfg = json.load(open(os.path.join(mixed, "config.json")))
    cfg["latent_dim"] = 5
    open(os.path.join(mixed, "config.json"), "w").write(json.dumps(cfg))
    cases = [([str(tmp_path / "missing")], "no such run folder"),
             ([str(empty)], "not a run folder"),
             ([unfinished], "unfinished (1 of 3 epochs)"),
             ([str(other)], "not a train.py run"),
             ([mixed], "does not match config.json"),
             ([str(tmp_path / "nothing-*")], "no run folder matches"),
             ([done, "--iw-samples", "-1"], "--iw-samples must be in [0, 100000]"),
             ([done, "--n", "0"], "--n must be in [1, 100]"),
             ([done, "--n", "100000"], "--n must be in [1, 100]"),
             ([done, "--chunk", "100000000"], "--chunk must be in [1, 65536]"),
             ([done, "--weights", "first"], "unknown --weights"),
             ([done, "--device", "cuda:7"], "no such CUDA device")]
    for argv, message in cases:
        assert evaluate.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
        assert not os.path.exists(os.path.join(done, "metrics.json"))  # nothing was done
    assert evaluate.main([unfinished, "--partial", "--iw-samples", "0", "--no-figures"]) == 0
    assert json.load(open(os.path.join(unfinished, "metrics.json")))["epoch"] == 1


def test_best_weights_are_chosen_on_validation_and_evaluated_with_their_own_epoch(tiny_data,
                                                                                 tmp_path, capsys):
    run = make_run(tiny_data, tmp_path / "run", "--val-split", "0.2", "--lr", "0.02", epochs="4")
    assert evaluate.main([run, "--weights", "best", "--iw-samples", "0", "--no-figures"]) == 0
    m = json.load(open(os.path.join(run, "metrics_best.json")))
    best = torch.load(os.path.join(run, "best.pt"), weights_only=True)
    rows = runs.read_history(run, None)
    by_val = min(rows, key=lambda r: float(r["val_loss"]))
    assert best["epoch"] == int(by_val["epoch"]) and best["val_loss"] == pytest.approx(
        float(by_val["val_loss"]))
    assert m["epoch"] == best["epoch"] and m["weights"] == "best"
    assert m["history_test_loss"] == pytest.approx(float(by_val["test_loss"]))
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["val_split"] == 0.2
    plain = make_run(tiny_data, tmp_path / "plain")  # no validation split: no best.pt at all
    capsys.readouterr()
    assert not os.path.exists(os.path.join(plain, "best.pt"))
    assert evaluate.main([plain, "--weights", "best", "--no-figures"]) == 2
    assert "no validation split" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(run, "metrics.json"))  # the last epoch's stays apart


def test_guide_documents_every_evaluate_flag():
    guide = open(os.path.join(os.path.dirname(__file__), "..", "GUIDE.md")).read()
    section = guide.split("\n## Evaluation\n")[1].split("\n## ")[0]
    for action in evaluate.build_parser()._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help"):
                assert f"`{flag}`" in section, f"{flag} missing from GUIDE.md's evaluate flags"


def test_a_conditional_vae_run_is_evaluated_with_its_labels_and_one_sample_row_per_class(
        tiny_data, tmp_path, capsys):
    run = make_run(tiny_data, tmp_path / "cvae", "--model", "cvae")
    out = str(tmp_path / "figs")
    assert evaluate.main([run, "--iw-samples", "20", "--out", out, "--n", "4"]) == 0
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert m["model"] == "cvae" and m["nll_iw"] <= m["nelbo"] + 4 * m["nelbo_se"] * math.sqrt(20)
    assert m["test_loss"] == pytest.approx(float(last_row(run)["test_loss"]), rel=0.05)
    width = figures.RIGHT + 8 * 1 + 2 * (4 * 30 + 2) + figures.RIGHT  # row labels "0".."9"
    height = figures.TOP + 10 * 60 + 4 + figures.BOTTOM  # 10 classes, one row each
    assert png_size(os.path.join(out, "samples.png")) == (width, height)
    assert "manifold.png" not in os.listdir(out)  # a 2-D code, but one manifold per class


def test_a_damaged_history_or_a_run_stopped_in_its_first_epoch_gives_no_traceback(
        tiny_data, tmp_path, capsys):
    run = make_run(tiny_data, tmp_path / "run", epochs="1")
    for damage in (b"\xff\xfe not utf-8", b"epoch,train_loss\n", b"foo,bar\n1,2\n"):
        open(os.path.join(run, "history.csv"), "wb").write(damage)
        assert evaluate.main([run, "--iw-samples", "0", "--out", str(tmp_path / "f")]) == 0
        assert "history.csv is damaged" in capsys.readouterr().out
    ckpt = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)
    ckpt["epoch"], ckpt["history"] = 0, []  # as when stopped by a signal inside epoch 1
    torch.save(ckpt, os.path.join(run, "checkpoint.pt"))
    assert evaluate.main([run, "--partial", "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "stopped inside its first epoch" in err and err.count("\n") == 1
