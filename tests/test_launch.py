"""sweep.py --launcher slurm through real submitit, with Slurm's commands faked on PATH (this machine has no
cluster): the sbatch array it builds, a task run as Slurm runs it, stopped by Slurm's warning signal, requeued
and resumed; and sweep.py --status."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import one_line
import guard
import launch
import runs
import sweep

pytest.importorskip("submitit")
SMALL = ["--batch-size", "16", "--latent-dim", "4", "--hidden", "32", "--log-interval", "1000"]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch (keeps the script it is given, answers job 4242), srun (runs its command in its own process, whose
    pid it writes down, as Slurm's task), scontrol (records its arguments)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    scripts = {"sbatch": 'cp "$1" "$FAKE_SLURM/submitted.sh"; echo "Submitted batch job 4242"',
               "srun": 'while [ $# -gt 0 ]; do case "$1" in --unbuffered) shift;; --output|--error) shift 2;; '
                       '*) break;; esac; done\necho $$ > "$FAKE_SLURM/task.pid"\nexec "$@"',
               "scontrol": 'echo "$@" >> "$FAKE_SLURM/scontrol.txt"'}
    for name, body in scripts.items():
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(tmp_path))
    return tmp_path


def test_a_slurm_sweep_is_one_job_array_with_the_options_given(fake_slurm, tiny_data, tmp_path, capsys):
    out = str(tmp_path / "sw")
    argv = ["--launcher", "slurm", "--partition", "gpu", "--time", "30", "--gpus-per-task", "1",
            "--cpus-per-task", "8", "--array-parallelism", "4", "--sbatch", "account=lab", "--seeds", "1,2,3",
            "--vary", "beta=1,4", "--out", out, "--", "--data-root", tiny_data, *SMALL, "--epochs", "2"]
    assert sweep.main(argv) == 0
    assert "Submitted 6 run(s) as Slurm job array 4242" in capsys.readouterr().out
    script = (fake_slurm / "submitted.sh").read_text()
    for line in ["#SBATCH --array=0-5%4", "#SBATCH --partition=gpu", "#SBATCH --time=30",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --account=lab",
                 "#SBATCH --signal=USR2@90", "#SBATCH --job-name=sw", f"export PYTHONPATH={launch.HERE}"]:
        assert line in script, (line, script)
    ids = json.load(open(os.path.join(out, "slurm.json")))
    assert ids == {f"beta{b}-seed{s}": f"4242_{i}" for i, (b, s) in
                   enumerate((b, s) for b in (1, 4) for s in (1, 2, 3))}
    rows = launch.status(out)
    assert [what for _, what, _ in rows] == ["pending"] * 6 and rows[0][2] == "Slurm job 4242_0"


@pytest.mark.e2e
def test_a_task_stopped_by_slurms_signal_is_requeued_and_resumes(fake_slurm, tiny_data, tmp_path):
    out = str(tmp_path / "sw")
    assert sweep.main(["--launcher", "slurm", "--seeds", "1,2", "--out", out, "--", "--data-root", tiny_data,
                       *SMALL, "--epochs", "40"]) == 0
    # the array's first task, as Slurm starts it on a node: the batch script sbatch was given, run by bash
    env = dict(os.environ, SLURM_JOB_ID="4243", SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID="0",
               SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
               SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="node1")
    task = ["bash", str(fake_slurm / "submitted.sh")]
    proc = subprocess.Popen(task, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = os.path.join(out, "seed1")
    deadline = time.time() + 120
    while not os.path.isfile(os.path.join(run, "checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.2)
    assert launch.status(out)[0][1] == "running"
    # --signal=USR2@90: the time limit (or a preemption) is near; Slurm signals the task, not the batch shell
    os.kill(int((fake_slurm / "task.pid").read_text()), signal.SIGUSR2)
    proc.wait(timeout=120)
    assert (fake_slurm / "scontrol.txt").read_text().split() == ["requeue", "4242_0"]
    ckpt = sweep.runs.load_checkpoint(os.path.join(run, "checkpoint.pt"))
    mid = ckpt["mid_epoch"]  # SIGINT stops inside an epoch, or at its end
    saved = f"epoch {ckpt['epoch'] + 1} saved at step {mid['step']}" if mid else f"epoch {ckpt['epoch']} saved"
    assert sweep.state(run) == "unfinished" and 1 <= ckpt["epoch"] + bool(mid) < 40
    assert "stopped by SIGINT" in open(os.path.join(out, "seed1.log")).read()
    assert launch.status(out)[0][1:] == ("pending", f"Slurm job 4242_0, {saved}, resumes")
    assert subprocess.run(task, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    assert sweep.state(run) == "finished"  # the requeued task resumed the run
    assert "Resuming" in open(os.path.join(out, "seed1.log")).read()
    assert launch.status(out)[0][1:] == ("done", "40 epochs")


def test_status_says_done_running_failed_with_its_last_line_and_pending(tiny_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sw"
    assert sweep.main(["--seeds", "1", "--out", str(out), "--", "--data-root", tiny_data, *SMALL,
                       "--epochs", "1"]) == 0
    manifest = json.load(open(out / "sweep.json"))
    manifest["runs"] += ["seed2", "seed3", "seed4"]
    json.dump(manifest, open(out / "sweep.json", "w"))
    lock = guard.lock(str(out / "seed2"), fresh=False)  # a train.py writing it
    (out / "seed3.log").write_text("Run folder: x\ntrain.py: error: --data-root holds no MNIST\n\n"
                                   f"{launch.EXIT}2\n")
    capsys.readouterr()
    loads, load = [], runs.load_checkpoint
    monkeypatch.setattr(runs, "load_checkpoint", lambda path: loads.append(path) or load(path))
    try:
        assert sweep.main(["--status", str(out)]) == 1  # one failed
    finally:
        guard.unlock(lock, str(out / "seed2"))
    assert loads == [str(out / "seed1" / "checkpoint.pt")]  # the one checkpoint there, read once
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[:4]] == [["seed1", "done"], ["seed2", "running"],
                                                        ["seed3", "failed"], ["seed4", "pending"]]
    assert lines[2].endswith("exit 2: train.py: error: --data-root holds no MNIST")
    assert lines[4] == "1 done, 1 running, 1 failed, 1 pending"
    assert "sweep.py: train.py exited with 0" in (out / "seed1.log").read_text()


@pytest.mark.parametrize("argv, words", [
    (["--partition", "gpu"], ["--partition", "--launcher slurm"]),
    (["--launcher", "slurm", "--jobs", "2"], ["--jobs", "--array-parallelism"]),
    (["--launcher", "slurm", "--time", "0"], ["--time", ">= 1"]),
    (["--launcher", "slurm", "--sbatch", "account"], ["KEY=VALUE"]),
    (["--launcher", "slurm", "--sbatch", "cpus_per_task=2"], ["sweep.py sets that one", "--cpus-per-task"]),
    (["--status", "nowhere"], ["no sweep.json"])])
def test_bad_launcher_flags_are_refused_in_one_line(fake_slurm, tmp_path, capsys, argv, words):
    assert sweep.main([*argv, "--out", str(tmp_path / "sw"), "--", "--epochs", "1"]) == 2
    one_line(capsys.readouterr().err, *words)
    assert not (tmp_path / "sw").exists()


def test_without_slurm_the_launcher_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    assert sweep.main(["--launcher", "slurm", "--out", str(tmp_path / "sw"), "--", "--epochs", "1"]) == 2
    one_line(capsys.readouterr().err, "needs submitit", "sbatch")


def test_submitting_again_leaves_queued_runs_alone_and_status_names_those_slurm_dropped(
        fake_slurm, tiny_data, tmp_path, capsys):
    out = str(tmp_path / "sw")
    argv = ["--launcher", "slurm", "--seeds", "1,2,3", "--out", out, "--", "--data-root", tiny_data, *SMALL,
            "--epochs", "2"]
    assert sweep.main(argv) == 0
    squeue = fake_slurm / "bin" / "squeue"  # Slurm still has tasks 0 and 1; task 2 has gone (cancelled)
    squeue.write_text("#!/bin/sh\necho 4242_0; echo 4242_1\n")
    squeue.chmod(0o755)
    rows = launch.status(out)
    assert rows[0][2] == "Slurm job 4242_0" and "not queued any more" in rows[2][2]
    capsys.readouterr()
    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert "left alone, still queued or running: seed1, seed2" in printed and "Submitted 1 run(s)" in printed
    assert json.load(open(os.path.join(out, "slurm.json")))["seed3"] == "4242"  # a single run: a plain job


def test_the_readmes_slurm_sweep_submits_the_script_it_shows(fake_slurm, tiny_data, tmp_path, monkeypatch):
    readme = open(os.path.join(launch.HERE, "README.md")).read()
    command = readme[readme.index("python sweep.py --launcher slurm"):]
    command = command[:command.index("\npython sweep.py --status")].replace("\\\n", " ")
    shown = readme[readme.index("The script it submits"):]
    shown = [line for line in shown[:shown.index("srun")].splitlines() if line.startswith("#SBATCH")]
    monkeypatch.chdir(tmp_path)  # its --out is relative
    assert sweep.main([*command.split()[2:], "--data-root", tiny_data]) == 0  # the data, fetched here first
    script = (fake_slurm / "submitted.sh").read_text().splitlines()
    assert len(shown) == 8 and all(line in script for line in shown), (shown, script)
    assert "python -u -m submitit.core._submit" in script[-1] and script[-1].endswith("runs/beta/slurm")
