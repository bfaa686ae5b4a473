"""train.py end to end: the run folder, the test loss, seeds, exact resume, stops on bad steps, the
progress lines and growing figures (its flags' refusals: test_flags.py)."""
import csv
import json
import os
import re

import pytest
import torch

import models
import progress
import runs
import train
import vae

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def run_train(args, capsys=None):
    code = train.main(args)
    out = capsys.readouterr() if capsys else None
    return code, out


def history(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("dataset,arch", [("mnist", "mlp"), ("fashion-mnist", "conv"),
                                          ("cifar10", "conv"), ("cifar10", "mlp")])
def test_end_to_end_run_writes_the_run_folder(tiny_data, tmp_path, capsys, dataset, arch):
    out = str(tmp_path / "run")
    code, printed = run_train(["--dataset", dataset, "--data-root", tiny_data, "--arch", arch,
                               "--epochs", "2", "--batch-size", "16", "--latent-dim", "4",
                               "--out", out, "--no-download"], capsys)
    assert code == 0, printed.err
    assert re.search(r"^====> Epoch: 2 Average loss: \d+\.\d{4} ", printed.out, re.M)
    assert re.search(r"^====> Test set loss: \d+\.\d{4} ", printed.out, re.M)
    files = set(os.listdir(out))
    assert {"config.json", "history.csv", "checkpoint.pt", "training_reconstructions.png",
            "training_samples.png"} <= files and "best.pt" not in files  # no --val-split: no best.pt
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert ckpt["epoch"] == 2 and cfg["dataset"] == dataset and cfg["command"].startswith("train.py")
    model = models.from_config(cfg)
    model.load_state_dict(ckpt["model"])  # the run folder alone rebuilds the model


def test_test_loss_is_the_negative_elbo_whatever_beta_and_penalties(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--beta", "4", "--l1", "1e-4",
                       "--batch-size", "16", "--out", out]) == 0
    row = {k: float(v) for k, v in history(out)[0].items()}
    assert row["test_loss"] == pytest.approx(row["test_recon"] + row["test_kl"])
    # the logged terms add up: the loss is recon + beta * kl; the L1 weight penalty is
    # logged beside it (l1), as Adam's weight decay is not in the loss either
    assert row["train_loss"] == pytest.approx(row["train_recon"] + 4 * row["train_kl"], rel=1e-5)
    assert row["train_l1"] > 0


def test_same_seed_same_losses(tiny_data, tmp_path):
    args = ["--data-root", tiny_data, "--epochs", "2", "--batch-size", "16", "--dropout", "0.2",
            "--augment", "--noise", "gaussian:0.3"]
    for name in ("a", "b"):
        assert train.main(args + ["--out", str(tmp_path / name)]) == 0
    assert history(tmp_path / "a") != [] and [
        {k: v for k, v in r.items() if k != "seconds"} for r in history(tmp_path / "a")] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in history(tmp_path / "b")]
    assert train.main(args + ["--out", str(tmp_path / "c"), "--seed", "2"]) == 0
    assert history(tmp_path / "c")[0]["train_loss"] != history(tmp_path / "a")[0]["train_loss"]


def test_resume_continues_exactly_where_the_run_stopped(tiny_data, tmp_path, capsys):
    args = ["--data-root", tiny_data, "--batch-size", "16", "--arch", "conv", "--dropout", "0.1",
            "--scheduler", "step", "--step-size", "1"]
    assert train.main(args + ["--epochs", "3", "--out", str(tmp_path / "straight")]) == 0
    assert train.main(args + ["--epochs", "1", "--out", str(tmp_path / "split")]) == 0
    capsys.readouterr()
    assert train.main(["--resume", str(tmp_path / "split"), "--epochs", "3"]) == 0
    assert "Resuming" in capsys.readouterr().out
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa
    assert strip(history(tmp_path / "split")) == strip(history(tmp_path / "straight"))
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["epoch"] == 3 and b["optimizer"]["model"]["param_groups"][0]["lr"] == pytest.approx(1e-3 / 8)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, capsys,
                                                                  monkeypatch):
    real_loss, calls = vae.VAE.loss, {"n": 0}

    def loss_that_breaks(self, input, target, labels=None):
        out = real_loss(self, input, target, labels)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:  # epoch 2 (4 steps of 16 per epoch: 60 images), step 2
                out["recon"] = out["recon"] * float("nan")
                out["loss"] = out["recon"] + out["kl"]
        return out
    monkeypatch.setattr(vae.VAE, "loss", loss_that_breaks)
    out = str(tmp_path / "run")
    code = train.main(["--data-root", tiny_data, "--epochs", "3", "--batch-size", "16",
                       "--out", out, "--log-interval", "1000"])
    err = capsys.readouterr().err
    assert code == 1
    assert "epoch 2, step 2" in err and "recon" in err
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("damage", ["config", "checkpoint"])
def test_a_run_folder_of_another_format_is_refused_in_one_line(tiny_data, tmp_path, capsys, damage):
    out = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--out", out]) == 0
    if damage == "config":
        cfg = json.load(open(os.path.join(out, "config.json")))
        del cfg["format"]  # as written before format 2
        json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
    else:
        ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
        ckpt["format"] = runs.FORMAT + 1  # as written by a newer train.py
        torch.save(ckpt, os.path.join(out, "checkpoint.pt"))
    capsys.readouterr()
    assert train.main(["--resume", out, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"reads format {runs.FORMAT} only" in err and len(err.strip().splitlines()) == 1
    assert ("no format number" if damage == "config" else f"format {runs.FORMAT + 1}") in err
    assert len(history(out)) == 1  # nothing was run


def test_progress_lines_print_the_running_loss_whatever_the_order_of_the_terms():
    tally = progress.Tally()
    for step, (recon, loss) in enumerate([(5.0, 7.0), (1.0, 3.0)], start=1):
        tally.add({"recon": torch.tensor(recon), "loss": torch.tensor(loss),
                   "skips_disc": torch.tensor(1.0)}, step, 2)
    assert tally.mean("loss") == pytest.approx(5.0) and tally.mean("recon") == pytest.approx(3.0)
    assert tally.means() == pytest.approx({"recon": 3.0, "loss": 5.0, "skips_disc": 2.0})


def test_the_epoch_line_names_the_weight_of_each_weighted_term(tiny_data, tmp_path, capsys):
    assert progress.epoch_line({"loss": 9.0, "recon": 2.0, "kl": 3.5, "l1": 5.0},
                            {"kl": 2.0}) == "recon 2.0000, 2 x kl 3.5000, l1 5.0000"
    assert train.main(["--model", "ae", "--data-root", tiny_data, "--epochs", "1", "--batch-size",
                       "16", "--sparsity", "0.1", "--code", "relu", "--out", str(tmp_path / "r")]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("====> Epoch"))
    loss, recon, sparsity = map(float, re.search(
        r"Average loss: ([\d.]+) \(recon ([\d.]+), 0.1 x sparsity ([\d.]+)", line).groups())
    assert loss == pytest.approx(recon + 0.1 * sparsity, abs=2e-4)  # the line adds up


def test_a_bad_last_step_is_caught_when_the_epochs_last_batch_is_skipped(tiny_data, tmp_path,
                                                                       capsys, monkeypatch):
    """60 images in batches of 59: the second batch, one image, is skipped (batch norm), so
    no progress line follows the first step; the end of the epoch must still check it."""
    real_loss = vae.VAE.loss

    def loss_that_breaks(self, input, target, labels=None):
        out = real_loss(self, input, target, labels)
        if self.training:
            out["recon"] = out["recon"] * float("nan")
        return out
    monkeypatch.setattr(vae.VAE, "loss", loss_that_breaks)
    out = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--batch-size", "59",
                       "--batchnorm", "--out", out, "--log-interval", "1000"]) == 1
    assert "non-finite recon at epoch 1, step 1" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "checkpoint.pt"))


def test_training_figures_grow_a_labelled_row_an_epoch_and_keep_growing_on_resume(tiny_data, tmp_path):
    from PIL import Image

    import progress
    out = str(tmp_path / "run")
    args = ["--data-root", tiny_data, "--batch-size", "16", "--latent-dim", "4", "--out", out,
            "--no-download", "--log-interval", "1000"]
    assert train.main([*args, "--epochs", "2"]) == 0
    path = os.path.join(out, "training_reconstructions.png")
    # 28-pixel images at 2x with 2-pixel gaps: the input row and one row per epoch, under a title
    row = lambda rows: 30 + 2 * (rows * 30 + 2) + 10  # noqa: E731
    assert Image.open(path).size[1] == row(1 + 2)
    assert train.main(["--resume", out, "--epochs", "3"]) == 0
    assert Image.open(path).size[1] == row(1 + 3)
    assert Image.open(os.path.join(out, "training_samples.png")).size[1] == row(3)
    saved = progress.load(out)
    assert sorted(saved["epochs"]["samples"]) == [1, 2, 3] and list(saved["fixed"]) == ["input"]
    import numpy as np
    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32))
    assert (pixels < 250).float().mean() > 0.3  # mostly images, not blank canvas
    assert progress.shown(list(range(1, 51))) == [1, 5, 10, 14, 19, 23, 28, 32, 37, 41, 46, 50]


def test_a_title_wider_than_the_images_widens_the_figure_and_is_drawn_whole(tmp_path):
    import numpy as np
    from PIL import Image

    import progress
    rows, path = [torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)], str(tmp_path / "f.png")
    progress.draw(rows, ["input"], "a title far wider than two small images side by side", path)
    title = np.asarray(Image.open(path).convert("L"))[:30]  # the band above the images
    ink = np.nonzero((title < 128).any(axis=0))[0]
    assert ink.min() >= 5 and ink.max() < title.shape[1] - 5  # white margin on both sides: nothing cut
    assert ink.max() - ink.min() > 8 * 2 * 8 + 20  # wider than the row of images it stands over


def test_the_first_lines_name_the_run_folder_and_progress_lines_give_speed_and_time_left(
        tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    code, printed = run_train(["--data-root", tiny_data, "--epochs", "1", "--batch-size", "16",
                               "--latent-dim", "4", "--out", out, "--no-download",
                               "--log-interval", "1"], capsys)
    assert code == 0
    lines = printed.out.splitlines()
    assert lines[0] == f"Run folder: {out} (its config.json keeps every setting)"
    assert lines[2] == "Training: vae on mnist, 1 epoch(s) of batch 16, Adam lr 0.001, seed 1"
    assert lines[3].startswith("Model: VAE (mlp 400, latent 4, bce), ")
    assert max(map(len, lines)) < 200  # no 1,000-character config line
    progress = [line for line in lines if line.startswith("Train Epoch: 1 [")]
    assert progress and all(re.search(r"\t\([\d,]+ images/s, \d+ s left in the epoch\)$", line)
                            for line in progress)
