"""Signals (SIGINT, SIGTERM, SIGHUP) and a closed output: the run stops at once, saves what it
can, prints one line with the resume command and no traceback, and resumes exactly."""
import os
import signal
import subprocess
import sys
import time

import pytest

import data
import guard
import runs
import train
import vae
from conftest import args_for, epoch_of, one_line, write_mnist

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_a_signal_before_training_stops_at_once_and_leaves_no_folder(tiny_data, tmp_path, capsys,
                                                                     monkeypatch):
    real = data.load
    monkeypatch.setattr(data, "load", lambda *a, **k: (os.kill(os.getpid(), signal.SIGINT),
                                                       real(*a, **k))[1])
    out = str(tmp_path / "run")
    assert train.main(args_for(tiny_data, out)) == 130
    one_line(capsys.readouterr().err, "no epoch was saved", "nothing to resume")
    assert not os.path.exists(out)  # the advice "start again" works: nothing is in the way


def test_a_signal_after_the_last_epoch_ends_the_run_normally(tiny_data, tmp_path, capsys,
                                                             monkeypatch):
    real = train.run
    monkeypatch.setattr(train, "run", lambda *a: (real(*a), os.kill(os.getpid(), signal.SIGTERM))[0])
    out = str(tmp_path / "run")
    assert train.main(args_for(tiny_data, out, "--epochs", "1")) == 0
    one_line(capsys.readouterr().err, "SIGTERM", "has finished")
    assert epoch_of(out) == 1


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on Windows")
def test_sighup_saves_and_stops_and_the_run_resumes(tiny_data, tmp_path, capsys, monkeypatch):
    real, calls = vae.VAE.loss, []

    def loss(self, *a, **k):
        calls.append(self.training)
        if sum(calls) == 6 and self.training:  # epoch 2, step 2
            os.kill(os.getpid(), signal.SIGHUP)
        return real(self, *a, **k)
    out = str(tmp_path / "run")
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # under nohup it is ignored, on purpose
    try:
        with monkeypatch.context() as m:
            m.setattr(vae.VAE, "loss", loss)
            assert train.main(args_for(tiny_data, out, "--epochs", "2")) == 128 + signal.SIGHUP
    finally:
        signal.signal(signal.SIGHUP, previous)
    err = capsys.readouterr().err
    assert "stopped by SIGHUP (the terminal closed) at epoch 2, step 2" in err
    assert train.main(["--resume", out]) == 0 and epoch_of(out) == 2


def shell(args, **kw):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_closed_output_saves_and_stops_without_a_traceback(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "run")
    write_mnist(root)
    p = shell(args_for(root, out, "--epochs", "1000"))
    p.stdout.readline(), p.stdout.readline()
    p.stdout.close()  # as `train.py | head -n 2` does
    _, err = p.communicate(timeout=120)
    assert p.returncode == 141, err
    assert "Traceback" not in err and "stopped by SIGPIPE (its output was closed)" in err
    assert f"Resume with: python train.py --resume {out}" in err
    runs.load_checkpoint(os.path.join(out, "checkpoint.pt"))


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="watches /proc/PID/maps")
def test_ctrl_c_while_torch_loads_prints_no_traceback(tmp_path):
    p = shell(["--help"])
    maps, t0 = f"/proc/{p.pid}/maps", time.time()
    while p.poll() is None and time.time() - t0 < 60:  # until torch's library is being loaded
        with open(maps) as f:
            if "libtorch" in f.read():
                break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode in (0, 130) and "Traceback" not in err, err  # 0: --help had ended


def test_a_signal_ignored_on_purpose_stays_ignored(tiny_data, tmp_path, monkeypatch):
    seen = {}
    real = guard.Signals.__enter__

    def enter(self):
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as nohup does for SIGHUP
        try:
            real(self)
            seen["handler"] = signal.getsignal(signal.SIGTERM)
        finally:
            signal.signal(signal.SIGTERM, previous)
        return self
    monkeypatch.setattr(guard.Signals, "__enter__", enter)
    with guard.Signals():
        pass
    assert seen["handler"] is signal.SIG_IGN
