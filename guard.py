"""How train.py ends: signals (Ctrl-C, a cluster's SIGTERM, a closed terminal), one writer
per run folder (a lock), output whose reader went away, a full disk, and the one-line
message and exit code of every way a run can end. train.py calls main() and hold().
"""
import errno
import io
import os
import signal
import sys
import threading

import torch

import data
import parallel
import runs

try:
    import fcntl  # POSIX: Linux, macOS
except ImportError:  # Windows: run folders are not locked
    fcntl = None


def main(argv, start):
    """start(argv, signals) -> exit code, with signals caught and stdout and stderr guarded
    (a closed output, train.py | head, stops the run as a signal does)."""
    with Signals() as signals:  # SIGINT, SIGTERM, SIGHUP: see Signals
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Output(out, signals.closed), Output(err, signals.closed)
        try:
            parallel.start()  # joins torchrun's process group; a no-op when run alone
            return start(argv, signals)
        except KeyboardInterrupt:  # in setup, before the run folder was taken, or a late second one
            print("\ntrain.py: interrupted" + (" before training started; nothing was written"
                                               if signals.phase == "setup" else ""), file=sys.stderr)
            return 128 + (signals.last or signal.SIGINT)
        finally:
            parallel.stop()
            sys.stdout, sys.stderr = out, err


def hold(cfg, ckpt, signals, run):
    """run(cfg, ckpt, signals) holding the run folder's lock (rank 0 alone writes it); the
    exit code of how it ended (finish)."""
    held, error = None, None
    if parallel.world()[0] == 0:
        try:
            held = lock(cfg["out"], fresh=ckpt is None)
        except ValueError as e:
            error = str(e)
    if parallel.share(error):
        if parallel.world()[0] == 0:
            print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    try:
        return finish(cfg, ckpt, signals, run)
    finally:
        if held:
            unlock(held, cfg["out"])


def finish(cfg, ckpt, signals, run):
    """run(), and the one-line message and exit code of each way it can end."""
    try:
        if run(cfg, ckpt, signals) is None:
            return 0  # nothing to do
    except (data.DataError, ValueError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        kept = saved_epoch(cfg)
        print(f"train.py: stopped: {e}; " + (
            f"{cfg['out']} keeps the checkpoint after epoch {kept}: --resume it, or start a "
            f"new run with a lower --lr or with --grad-clip" if kept is not None else
            "no epoch was saved: start again (the same --out will do) with a lower --lr or "
            "with --grad-clip"),
            file=sys.stderr)
        return 1
    except Stop as stop:
        rank, processes, _ = parallel.world()
        launch = (f"torchrun --nproc_per_node {processes} train.py" if parallel.active()
                  else "python train.py")
        why = {"SIGHUP": " (the terminal closed)", "SIGPIPE": " (its output was closed)"}
        name = signal.Signals(stop.signum).name
        if rank == 0:
            print(f"train.py: stopped by {name}{why.get(name, '')} at {stop.where}; "
                  f"saved {os.path.join(cfg['out'], 'checkpoint.pt')}. Resume with: {launch} "
                  f"--resume {cfg['out']}", file=sys.stderr)
        return 128 + stop.signum  # 130 for SIGINT, 143 for SIGTERM
    except KeyboardInterrupt:
        print("\ntrain.py: interrupted; " + (
            f"the last saved checkpoint is kept. Resume with: python train.py --resume "
            f"{cfg['out']}" if saved_epoch(cfg) is not None else
            "no epoch was saved, so there is nothing to resume: start again (the same "
            "command will do)"), file=sys.stderr)
        return 130
    except (runs.DiskFull, OSError) as e:
        if not runs.full_disk(e) and not isinstance(e, runs.DiskFull):
            raise
        kept = saved_epoch(cfg)
        what = e if isinstance(e, runs.DiskFull) else f"no space left on device while writing {e.filename}"
        print(f"train.py: stopped: {what}; the files in {cfg['out']} are whole" + (
            f" (checkpoint.pt keeps epoch {kept}): free some space, then resume with: "
            f"python train.py --resume {cfg['out']}" if kept is not None else
            ": free some space, then start again (the same command will do)"), file=sys.stderr)
        return 1
    except torch.OutOfMemoryError:
        print(f"train.py: stopped: out of memory on {cfg['device']} at --batch-size "
              f"{cfg['batch_size']}; start again with a smaller --batch-size (e.g. "
              f"{max(1, cfg['batch_size'] // 2)}); the last finished epoch is saved",
              file=sys.stderr)
        return 1
    print(f"Run folder: {cfg['out']}")
    return 0


def saved_epoch(cfg):
    """The epoch the run folder's checkpoint.pt keeps (0: stopped inside the first), or None."""
    path = os.path.join(cfg["out"], "checkpoint.pt")
    return runs.load_checkpoint(path)["epoch"] if os.path.isfile(path) else None


def lock(run_dir, fresh):
    """Make run_dir and hold an exclusive lock on it (flock on run_dir/.lock) for as long as
    the returned file stays open (unlock closes it): one writer per run folder. The system
    releases it when the process ends in any way, so a lock left by a dead process never
    blocks. fresh: the folder must hold no run once locked (two new runs started with the
    same --out). ValueError, in one line, when another process holds it or the folder
    cannot be made."""
    if not run_dir:
        raise ValueError("--out '' names no folder; give a folder name")
    created = not os.path.isdir(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied")
        f = open(os.path.join(run_dir, ".lock"), "a+")
    except OSError as e:
        why = "permission denied" if e.errno in (errno.EACCES, errno.EPERM) else (
            e.strerror or type(e).__name__)
        raise ValueError(f"cannot create the run folder {run_dir}: {why}; choose another --out"
                         if created else f"cannot write to the run folder {run_dir}: {why}; "
                         f"make it writable (chmod -R u+w), or copy it and use the copy") from None
    if fcntl is not None:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            f.close()
            raise ValueError(f"{run_dir} is being written by another train.py ({owner}); wait "
                             f"for it to end, or use another --out") from None
    if fresh and not runs.unstarted(run_dir):
        f.close()
        raise ValueError(f"--out {run_dir} already exists; use --resume {run_dir} or another --out")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    f.created = created
    return f


def unlock(f, run_dir):
    """Release lock()'s file; a folder it made that got nothing else is removed again, so a
    run refused before any work (say, for its data) leaves nothing behind."""
    f.close()
    if f.created and os.listdir(run_dir) == [".lock"]:
        os.remove(os.path.join(run_dir, ".lock"))
        os.rmdir(run_dir)


class Stop(Exception):
    """SIGINT or SIGTERM arrived; `mid_epoch` is where the epoch stopped (None: at its end)."""

    def __init__(self, signum, mid_epoch=None):
        super().__init__(signum)
        self.signum, self.mid_epoch = signum, mid_epoch


class Signals:
    """SIGINT (Ctrl-C), SIGTERM (a cluster's time limit) and SIGHUP (the terminal closed),
    for the whole of train.py's main, in three phases:
    - "setup" (before the first step): stop at once with KeyboardInterrupt (nothing to save);
    - "training": only set `received`; the loop finishes its step, saves, and stops. A second
      one stops at once; the files on disk are whole either way, since every write is atomic;
    - "done" (the last epoch is saved): say so and carry on; the run ends with its own code.
    `closed()` is called when the output went away (Output): the run stops as for a signal.
    """
    NAMES = {"SIGINT", "SIGTERM", "SIGHUP"}  # SIGHUP does not exist on Windows

    def __init__(self):  # not entered: catches nothing, and nothing is ever received
        self.received, self.saved, self.phase, self.last = None, {}, "setup", None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal() needs it
            for sig in signal.Signals:  # one ignored on purpose (nohup: SIGHUP) stays ignored
                if sig.name in self.NAMES and signal.getsignal(sig) is not signal.SIG_IGN:
                    self.saved[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        name, self.last = signal.Signals(signum).name, signum
        if self.phase == "done":
            print(f"\n{name}: the run has finished and is saved; ending normally",
                  file=sys.stderr, flush=True)
            return
        if self.phase == "setup" or self.received:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{name}: finishing this step, then saving (again to stop without saving)",
              file=sys.stderr, flush=True)

    def closed(self):
        if self.phase != "done" and not self.received:
            self.received = signal.SIGPIPE if hasattr(signal, "SIGPIPE") else signal.SIGTERM

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


class Output:
    """sys.stdout or sys.stderr surviving its reader going away (train.py | head -n 3, a
    closed terminal): the first failed write points the stream at os.devnull and calls
    on_close (Signals.closed), so the run saves and stops instead of dying of BrokenPipeError."""

    def __init__(self, stream, on_close):
        self.stream, self.on_close = stream, on_close

    def write(self, text):
        try:
            return self.stream.write(text)
        except OSError as e:
            self.gone(e)
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except OSError as e:
            self.gone(e)

    def gone(self, e):
        if not isinstance(e, BrokenPipeError) and e.errno != errno.EIO:  # EIO: terminal closed
            raise e
        # Point the file descriptor itself at /dev/null: the text still in the stream's buffer
        # then drains there, also when Python flushes it at exit (no "Exception ignored").
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            self.stream = open(os.devnull, "w")
        self.on_close()

    def __getattr__(self, name):
        return getattr(self.stream, name)
