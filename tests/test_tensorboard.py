"""train.py --tensorboard: the event files in the run folder, read back with TensorBoard's own reader."""
import os

import pytest

import torch

from conftest import args_for, one_line
import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def events(run_dir):
    """The run folder's scalars {tag: [(epoch, value)]}, image tags and hparams plugin data."""
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    return scalars, {t: [e.step for e in acc.Images(t)] for t in tags["images"]}, acc.PluginTagToContent("hparams")


def test_tensorboard_logs_every_term_the_figures_and_the_settings(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert train.main(args_for(tiny_data, str(out), "--epochs", "2", "--tensorboard")) == 0
    scalars, images, hparams = events(out)
    history = torch.load(out / "checkpoint.pt", weights_only=True)["history"]
    for tag, key in [("train/loss", "train_loss"), ("train/kl", "train_kl"), ("test/recon", "test_recon"),
                     ("train/grad_norm", "train_grad_norm"), ("lr", "lr")]:
        assert [step for step, _ in scalars[tag]] == [1, 2]
        assert [v for _, v in scalars[tag]] == pytest.approx([row[key] for row in history], rel=1e-6)
    assert images == {"reconstructions": [1, 2], "samples": [1, 2]}
    assert hparams  # the session's settings, and the final test terms as its metrics
    assert scalars["final/loss"][0][1] == pytest.approx(history[-1]["test_loss"], rel=1e-6)


def test_a_resumed_run_continues_its_curves_and_logs_its_final_terms_at_each_end(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert train.main(args_for(tiny_data, str(out), "--epochs", "1", "--tensorboard")) == 0
    assert train.main(["--resume", str(out), "--epochs", "3"]) == 0  # the flag is kept with the run
    scalars, images, _ = events(out)
    assert [step for step, _ in scalars["test/loss"]] == [1, 2, 3]
    assert images["samples"] == [1, 2, 3]
    assert [step for step, _ in scalars["final/loss"]] == [1, 3]


def test_a_run_that_fails_in_its_first_epoch_leaves_no_event_file_and_starts_again(tiny_data, tmp_path,
                                                                                 monkeypatch):
    import vae
    real = vae.VAE.loss

    def broken(self, *args):
        out = real(self, *args)
        out["loss"] = out["loss"] * float("nan")
        return out
    monkeypatch.setattr(vae.VAE, "loss", broken)
    argv = args_for(tiny_data, str(tmp_path / "run"), "--epochs", "1", "--tensorboard")
    assert train.main(argv) == 1
    assert not [f for f in os.listdir(tmp_path / "run") if f.startswith("events.")]
    monkeypatch.setattr(vae.VAE, "loss", real)
    assert train.main(argv) == 0  # the same command, as the message says


def test_without_the_package_the_flag_is_refused_in_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert train.main(args_for(tiny_data, str(tmp_path / "run"), "--tensorboard")) == 2
    one_line(capsys.readouterr().err, "pip install tensorboard")
    assert not (tmp_path / "run").exists()
