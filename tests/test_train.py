import csv
import json
import os
import re
import subprocess
import sys

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


def test_resume_refuses_a_conflicting_flag(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--out", out]) == 0
    capsys.readouterr()
    assert train.main(["--resume", out, "--beta", "4"]) == 2
    err = capsys.readouterr().err
    assert "--beta" in err and len(err.strip().splitlines()) == 1


BAD_FLAGS = [
    ["--dropout", "1.5"], ["--beta", "-1"], ["--latent-dim", "0"], ["--dataset", "foo"],
    ["--noise", "gaussian:abc"], ["--output", "tanh", "--recon", "bce"], ["--lr", "0"],
    ["--epochs", "0"], ["--batch-size", "-3"], ["--hidden", "400,x"], ["--arch", "resnet"],
    ["--model", "gan"], ["--recon", "l2"], ["--device", "tpu"], ["--device", "cuda:7"],
    ["--arch", "conv", "--hidden", "300"], ["--act", "tanh"], ["--scheduler", "cosine"],
    ["--weight-decay", "-0.1"], ["--c", "0"], ["--latent-dim", "two"], ["--bogus"],
    ["--resume", "/nonexistent/run"], ["--lr-gamma", "0"], ["--gamma", "2"],
    ["--recon", "feature"], ["--model", "vaegan", "--gamma", "0"],
    ["--model", "vaegan", "--lr-disc", "-1"], ["--model", "vaegan", "--equilibrium", "0"],
    ["--model", "vaegan", "--margin", "0.3"], ["--model", "vaegan", "--feature-layer", "1"],
    ["--model", "vaegan", "--recon", "feature", "--feature-layer", "2"],
    ["--model", "vaegan", "--arch", "conv", "--recon", "feature", "--feature-layer", "0"],
    ["--grad-clip", "0"], ["--grad-clip", "-1"], ["--noise", "gaussian:-0.5"],
    ["--noise", "mask:1.5"], ["--noise", "blur:0.5"], ["--contractive", "0.1"],
    ["--model", "ae", "--sparsity-target", "0.05"], ["--dataset", "cifar100"],
    ["--batch-size", "1", "--arch", "conv"], ["--batch-size", "1", "--model", "vaegan"],
    ["--hidden", "0"], ["--seed", str(2**64)], ["--seed", "-1"], ["--latent-dim", "100000000"],
    ["--hidden", "100000000"],
]


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=lambda f: " ".join(f))
def test_bad_flags_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, flags):
    out = tmp_path / "run"
    code = train.main(flags + ["--out", str(out), "--data-root", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "error" in err
    assert not out.exists() and not (tmp_path / "none").exists()


def test_an_out_folder_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert train.main(["--out", str(tmp_path / "file" / "run"), "--data-root",
                       str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and not (tmp_path / "none").exists()


def test_existing_out_folder_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    assert train.main(["--out", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err


def test_cli_bad_flag_from_the_shell():
    proc = subprocess.run([sys.executable, "train.py", "--dropout", "1.5"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "train.py: error: --dropout 1.5 must be in [0, 1)"


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


def test_guide_documents_every_flag():
    guide = open(os.path.join(ROOT, "GUIDE.md")).read()
    table = guide.split("\n## Flags\n")[1].split("\n## ")[0]
    for action in train.build_parser()._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help"):
                assert f"`{flag}" in table, f"{flag} missing from GUIDE.md's flag table"


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


def test_model_options_are_recorded_resolved_and_foreign_ones_refused(tmp_path, capsys):
    cfg, _ = train.resolve(["--model", "vaegan", "--latent-dim", "5", "--out", str(tmp_path / "r")])
    assert cfg["hidden"] == [25] and cfg["batchnorm"] is True and cfg["recon"] == "bce"
    assert cfg["margin"] is None and cfg["feature_layer"] is None
    cfg, _ = train.resolve(["--model", "vae", "--arch", "conv", "--output", "tanh",
                            "--out", str(tmp_path / "r")])
    assert cfg["hidden"] is None and cfg["batchnorm"] is True and cfg["recon"] == "mse"
    assert "gamma" not in cfg  # another model's option has no place in this run's config
    cfg, _ = train.resolve(["--model", "cvae", "--out", str(tmp_path / "r")])
    assert cfg["latent_dim"] == 5 and cfg["num_classes"] == 10  # the CVAE's own default
    assert train.main(["--model", "ae", "--gamma", "2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "train.py: error: --gamma is not an option of --model ae; it belongs to vaegan, factorvae"


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


def test_resume_accepts_a_model_option_equal_to_the_saved_one_and_names_one_that_differs(
        tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--batch-size", "16",
                       "--out", out]) == 0
    assert train.main(["--resume", out, "--epochs", "2", "--hidden", "400",
                       "--latent-dim", "20"]) == 0  # typed, but as saved
    capsys.readouterr()
    for flag, value in (("--output", "tanh"), ("--arch", "conv"), ("--model", "cvae")):
        assert train.main(["--resume", out, "--epochs", "3", flag, value]) == 2
        err = capsys.readouterr().err
        assert f"{flag} differs from the saved run" in err and len(err.strip().splitlines()) == 1
    assert len(history(out)) == 2


def test_lr_disc_is_refused_for_a_model_without_a_discriminator(tmp_path, capsys):
    assert train.main(["--lr-disc", "1e-4", "--out", str(tmp_path / "r")]) == 2
    assert "the vae model has none" in capsys.readouterr().err


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


@pytest.mark.parametrize("out,message", [
    ("", "names no folder"),
    ("/proc/no-such-folder/run", "cannot create the run folder"),
    ("x" * 300, "cannot create the run folder"),
    ("dangling", "cannot create the run folder"),
])
def test_an_out_folder_that_cannot_be_made_is_refused_before_the_data_load(tmp_path, capsys,
                                                                         monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)
    os.symlink(str(tmp_path / "nowhere" / "run"), "dangling")
    code = train.main(["--out", out, "--data-root", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()  # refused before the data load


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
