"""evaluate.py on real run folders: the test loss it reproduces, its flags and one-line errors, best weights,
labels, damaged runs."""
import json
import math
import os

import pytest
import torch

import evaluate
import figures
import runs
import train
from test_figures import png_size


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
    assert evaluate.main([run, "--no-figures", "--out", str(tmp_path / "e"), "--seed", "5"]) == 0
    assert "skipped by default; --iw-samples 1000 adds it" in capsys.readouterr().out
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert "nll_iw" not in m and "test_loss" in m and "probe_accuracy" in m
    train_seed = json.load(open(os.path.join(run, "config.json")))["seed"]
    assert (m["eval_seed"], m["train_seed"]) == (5, train_seed) and "seed" not in m  # each named for what it seeds


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
