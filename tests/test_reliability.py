"""Interruption and exact resume, checkpoints that survive SIGKILL and refuse pickled code, one writer per
run folder, and per-process random generators (bad numbers and bad machines: test_failures.py)."""
import csv
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import ae
import cvae
import evaluate
import guard
import runs
import train
import vae
import vaegan
from conftest import write_mnist

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FAMILIES = {  # model: (flags exercising its random parts, the method called once per step)
    "vae": (["--dropout", "0.2", "--augment", "--noise", "gaussian:0.3"], vae.VAE, "loss"),
    "ae": (["--model", "ae", "--contractive", "0.1", "--noise", "mask:0.2"], ae.AE, "loss"),
    "vaegan": (["--model", "vaegan", "--equilibrium", "0.68", "--scheduler", "step",
                "--step-size", "1"], vaegan.VAEGAN, "loss"),
    "cvae": (["--model", "cvae", "--dropout", "0.2", "--augment"], cvae.CVAE, "loss"),
}


def rows(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def signal_at_step(monkeypatch, cls, method, at, sig=signal.SIGTERM):
    """Send `sig` to this process during training step number `at` (counted over epochs)."""
    real, calls = getattr(cls, method), {"n": 0}

    def patched(self, *args, **kwargs):
        if self.training:
            calls["n"] += 1
            if calls["n"] == at:
                os.kill(os.getpid(), sig)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(cls, method, patched)


def same_checkpoints(a_dir, b_dir):
    a = torch.load(os.path.join(a_dir, "checkpoint.pt"), weights_only=True)
    b = torch.load(os.path.join(b_dir, "checkpoint.pt"), weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for name, opt in a["optimizer"].items():
        for pid, state in opt["state"].items():
            for key, value in state.items():
                assert torch.equal(value, b["optimizer"][name]["state"][pid][key]), (name, key)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("at,sig,where", [(6, signal.SIGTERM, "epoch 2, step 2"),
                                          (4, signal.SIGINT, "the end of epoch 1")])
def test_a_signal_saves_and_resume_ends_bit_for_bit_equal(tiny_data, tmp_path, capsys,
                                                          monkeypatch, family, at, sig, where):
    extra, cls, method = FAMILIES[family]
    args = ["--data-root", tiny_data, "--batch-size", "16", "--latent-dim", "4", "--hidden", "32",
            "--epochs", "3", "--log-interval", "1000", *extra]  # 60 images: 4 steps per epoch
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    assert train.main(args + ["--out", straight]) == 0
    with monkeypatch.context() as m:
        signal_at_step(m, cls, method, at, sig)
        code = train.main(args + ["--out", split])
    err = capsys.readouterr().err
    assert code == 128 + sig and f"at {where}" in err and f"--resume {split}" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back
    ckpt = torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)
    assert ckpt["epoch"] == 1 and (ckpt["mid_epoch"] is None) == (at == 4)
    assert train.main(["--resume", split]) == 0
    assert rows(split) == rows(straight)
    same_checkpoints(straight, split)


def test_sigint_from_the_shell_saves_and_says_how_to_resume(tmp_path):
    root = str(tmp_path / "data")
    write_mnist(root, n_train=2000, n_test=24)
    out = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "train.py", "--data-root", root, "--epochs", "200",
                             "--batch-size", "16", "--out", out, "--log-interval", "10"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("Train Epoch: 2"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped by SIGINT at epoch 2, step" in err and f"--resume {out}" in err
    ckpt = runs.load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert ckpt["epoch"] == 1 and ckpt["mid_epoch"]["step"] >= 10


def keep_writing(path, start):
    """Child process: write checkpoints 0, 1, 2, ... as fast as it can, each self-checking."""
    i = start
    while True:
        runs.save_checkpoint({"format": runs.FORMAT, "i": i,
                              "weights": torch.full((30_000,), float(i))}, path)
        i += 1


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    for i in (-1, 0):  # a checkpoint and its backup, as after two epochs
        runs.save_checkpoint({"format": runs.FORMAT, "i": i,
                              "weights": torch.full((30_000,), float(i))}, path)
    ctx, rng, seen = multiprocessing.get_context("fork"), random.Random(0), []
    for _ in range(12):
        start = runs.load_checkpoint(path)["i"] + 1  # each writer carries on the count
        child = ctx.Process(target=keep_writing, args=(path, start))
        child.start()
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        for file in (path, runs.backup_of(path)):
            ckpt = runs.load_checkpoint(file)  # whole, never half-written
            assert torch.equal(ckpt["weights"], torch.full((30_000,), float(ckpt["i"])))
        seen.append(runs.load_checkpoint(path)["i"])
        assert runs.load_checkpoint(runs.backup_of(path))["i"] in (seen[-1] - 1, seen[-1])
    assert seen == sorted(seen) and seen[-1] > seen[0] > 0  # killed mid-stream, while writing


class Payload:
    def __reduce__(self):  # unpickling this would run a shell command
        return (os.system, (f"touch {MARKER}",))


MARKER = None


def test_each_process_resumes_its_own_generators_and_a_new_count_never_shares_one():
    """The checkpoint's "rng" as written for 2 processes on GPUs: each resumes its own CPU
    and GPU state; with 3 processes only rank 0 takes a saved one."""
    states = [{"torch": torch.Generator().manual_seed(r).get_state(),
               "cuda": torch.full((4,), 10 + r, dtype=torch.uint8)} for r in range(2)]
    model = torch.nn.Linear(1, 1)
    rng = runs.checkpoint(model, {}, {}, 1, {}, [], 0.0, rng=states)["rng"]
    for r in range(2):
        cpu, cuda = runs.saved_rng(rng, r, 2)
        assert torch.equal(cpu, states[r]["torch"]) and torch.equal(cuda, states[r]["cuda"])
    assert [runs.saved_rng(rng, r, 3)[0] is None for r in range(3)] == [False, True, True]
    assert torch.equal(runs.saved_rng(rng, 0, 3)[1], states[0]["cuda"])
    alone = runs.checkpoint(model, {}, {}, 1, {}, [], 0.0)["rng"]  # this CPU process
    assert alone["cuda"] == [] and "ranks" not in alone
    assert torch.equal(runs.saved_rng(alone, 0, 1)[0], torch.get_rng_state())
    assert runs.saved_rng(alone, 1, 2) == (None, None)
    before = torch.get_rng_state()  # a process with no saved state is seeded afresh
    runs.restore_rng(rng, 2, 3, torch.device("cpu"), fresh_seed=123)
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(123).get_state())
    runs.restore_rng(rng, 1, 2, torch.device("cpu"), fresh_seed=123)
    assert torch.equal(torch.get_rng_state(), states[1]["torch"])
    torch.set_rng_state(before)


def test_a_pickled_payload_is_refused_and_never_runs(tiny_data, tmp_path, capsys):
    global MARKER
    MARKER = str(tmp_path / "payload-ran")
    run = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--out", run]) == 0
    ckpt = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)
    ckpt["extra"] = Payload()
    torch.save(ckpt, os.path.join(run, "checkpoint.pt"))
    capsys.readouterr()
    assert train.main(["--resume", run, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "checkpoint.pt" in err and len(err.strip().splitlines()) == 1
    assert evaluate.main([run]) == 2
    assert "refused" in capsys.readouterr().err
    assert not os.path.exists(MARKER)


def test_a_truncated_checkpoint_names_the_backup_and_the_backup_resumes(tiny_data, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert train.main(["--data-root", tiny_data, "--epochs", "2", "--out", run]) == 0
    path = os.path.join(run, "checkpoint.pt")
    assert runs.load_checkpoint(runs.backup_of(path))["epoch"] == 1
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    capsys.readouterr()
    assert train.main(["--resume", run, "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupted" in err and "checkpoint.prev.pt" in err
    shutil.copyfile(runs.backup_of(path), path)
    assert train.main(["--resume", run, "--epochs", "3"]) == 0
    assert [r["epoch"] for r in rows(run)] == ["1", "2", "3"]


def test_resume_writes_into_the_folder_given_even_when_it_was_moved(tiny_data, tmp_path):
    original, copy = str(tmp_path / "original"), str(tmp_path / "copy")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--out", original]) == 0
    shutil.copytree(original, copy)
    before = sorted(os.listdir(original))
    assert train.main(["--resume", copy, "--epochs", "2"]) == 0
    assert [r["epoch"] for r in rows(copy)] == ["1", "2"]
    assert sorted(os.listdir(original)) == before and len(rows(original)) == 1
    shutil.rmtree(original)  # the copy does not need it any more
    assert train.main(["--resume", copy, "--epochs", "3"]) == 0


def test_one_writer_per_run_folder_the_second_is_refused_and_the_first_unharmed(tmp_path, capsys):
    root = str(tmp_path / "data")
    write_mnist(root, n_train=2000, n_test=24)
    out = str(tmp_path / "run")
    first = subprocess.Popen([sys.executable, "train.py", "--data-root", root, "--epochs", "200",
                              "--batch-size", "16", "--out", out, "--log-interval", "10"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in first.stdout:  # in epoch 2: it holds the folder, and epoch 1 is saved
        if line.startswith("Train Epoch: 2"):
            break
    for argv, message in ((["--resume", out], f"is being written by another train.py (pid "
                                              f"{first.pid})"),
                          (["--out", out], "already exists; use --resume")):
        code = train.main(argv + ["--data-root", root, "--epochs", "200"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130 and "stopped by SIGINT" in err, err  # unharmed
    saved = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["epoch"]  # the refusals wait 2 s
    assert train.main(["--resume", out, "--epochs", str(saved + 1)]) == 0  # the lock went with it
    assert [r["epoch"] for r in rows(out)] == [str(e) for e in range(1, saved + 2)]


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    run = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import guard, sys, time; "
                               f"f = guard.lock({run!r}, fresh=True); print('locked', flush=True); "
                               "time.sleep(120)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError, match=f"pid {holder.pid}"):
        guard.lock(run, fresh=True)
    # a second new run with the same --out, started at the same time, is refused before work
    assert train.main(["--out", run, "--data-root", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists() and os.listdir(run) == [".lock"]
    holder.kill()
    holder.wait()
    guard.lock(run, fresh=True).close()  # the system released it with the process


@pytest.mark.parametrize("swap", ["best.pt", "another run", "a cut config"])
def test_a_checkpoint_that_is_not_this_runs_is_refused_in_one_line(tiny_data, tmp_path, capsys,
                                                                    swap):
    run, other = str(tmp_path / "run"), str(tmp_path / "other")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--val-split", "10", "--out", run]) == 0
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--val-split", "10", "--seed", "2",
                       "--out", other]) == 0
    path = os.path.join(run, "checkpoint.pt")
    if swap == "best.pt":
        shutil.copyfile(os.path.join(run, "best.pt"), path)
        message = "is not a training checkpoint (it has no optimizer"
    elif swap == "another run":  # same shapes, another seed
        shutil.copyfile(os.path.join(other, "checkpoint.pt"), path)
        message = "describe different runs (seed: 2 in the checkpoint, 1 in config.json)"
    else:
        open(os.path.join(run, "config.json"), "w").write('{"model": "vae", "format": 2}')
        message = "is not a complete train.py config"
    capsys.readouterr()
    assert train.main(["--resume", run, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert len(rows(run)) == 1  # nothing was run
