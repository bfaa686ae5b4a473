"""How train.py ends: signals (Ctrl-C, SIGTERM, a closed terminal), one writer per run folder (a lock), output
whose reader went away, a full disk, and each ending's one-line message and exit code."""
import errno
import io
import os
import signal
import sys
import time
import threading

import torch

import data
import parallel
import runs

try:
    import fcntl  # POSIX: Linux, macOS
except ImportError:  # Windows: run folders are not locked
    fcntl = None


def say(text):
    """One line on stderr, as train.py's."""
    print(f"train.py: {text}", file=sys.stderr)


def main(argv, start):
    """start(argv, signals) -> exit code, signals caught, stdout and stderr guarded (see Output)."""
    with Signals() as signals:
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
    """finish(cfg, ckpt, signals, run) holding the run folder's lock (rank 0 alone writes it)."""
    held, error, rank = None, None, parallel.world()[0]
    if rank == 0:
        try:
            held = lock(cfg["out"], fresh=ckpt is None)
        except ValueError as e:
            error = str(e)
    if parallel.share(error):
        if rank == 0:
            say(f"error: {error}")
        return 2
    try:
        return finish(cfg, ckpt, signals, run)
    finally:
        if held:
            unlock(held, cfg["out"])


def finish(cfg, ckpt, signals, run):
    """run(), and the one-line message and exit code of each way it can end."""
    out = cfg["out"]
    try:
        if run(cfg, ckpt, signals) is None:
            return 0  # nothing to do
    except (data.DataError, ValueError) as e:
        say(f"error: {e}")
        return 2
    except FloatingPointError as e:
        kept = saved_epoch(cfg)
        say(f"stopped: {e}; " + (
            f"{out} keeps the checkpoint after epoch {kept}: --resume it, or start a new run with "
            f"a lower --lr or with --grad-clip" if kept is not None else "no epoch was saved: start "
            "again (the same --out will do) with a lower --lr or with --grad-clip"))
        return 1
    except Stop as stop:
        rank, processes, _ = parallel.world()
        launch = f"torchrun --nproc_per_node {processes} train.py" if parallel.active() else "python train.py"
        name = signal.Signals(stop.signum).name
        why = {"SIGHUP": " (the terminal closed)", "SIGPIPE": " (its output was closed)"}.get(name, "")
        if rank == 0:
            say(f"stopped by {name}{why} at {stop.where}; saved {os.path.join(out, 'checkpoint.pt')}. "
                f"Resume with: {launch} --resume {out}")
        return 128 + stop.signum  # 130 for SIGINT, 143 for SIGTERM
    except KeyboardInterrupt:
        print("\ntrain.py: interrupted; " + (
            f"the last saved checkpoint is kept. Resume with: python train.py --resume {out}"
            if saved_epoch(cfg) is not None else "no epoch was saved, so there is nothing to "
            "resume: start again (the same command will do)"), file=sys.stderr)
        return 130
    except (runs.DiskFull, OSError) as e:
        if not runs.full_disk(e) and not isinstance(e, runs.DiskFull):
            raise
        kept = saved_epoch(cfg)
        what = e if isinstance(e, runs.DiskFull) else f"no space left on device while writing {e.filename}"
        say(f"stopped: {what}; the files in {out} are whole" + (
            f" (checkpoint.pt keeps epoch {kept}): free some space, then resume with: python "
            f"train.py --resume {out}" if kept is not None else
            ": free some space, then start again (the same command will do)"))
        return 1
    except torch.OutOfMemoryError:
        say(f"stopped: out of memory on {cfg['device']} at --batch-size {cfg['batch_size']}; start "
            f"again with a smaller --batch-size (e.g. {max(1, cfg['batch_size'] // 2)}); the last "
            f"finished epoch is saved")
        return 1
    print(f"Run folder: {out}")
    return 0


def saved_epoch(cfg):
    """The epoch the run folder's checkpoint.pt keeps (0: stopped inside the first), or None."""
    path = os.path.join(cfg["out"], "checkpoint.pt")
    return runs.load_checkpoint(path)["epoch"] if os.path.isfile(path) else None


def lock(run_dir, fresh):
    """Make run_dir and flock run_dir/.lock while the returned file is open: one writer per folder.
    The system releases it when the process ends in any way, so a dead process's lock never blocks.
    fresh: the folder must hold no run once locked (two new runs with one --out). ValueError if not."""
    if not run_dir:
        raise ValueError("--out '' names no folder; give a folder name")
    created = not os.path.isdir(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied")
        f = open(os.path.join(run_dir, ".lock"), "a+")
    except OSError as e:
        why = "permission denied" if e.errno in (errno.EACCES, errno.EPERM) else e.strerror or type(e).__name__
        raise ValueError(f"cannot create the run folder {run_dir}: {why}; choose another --out"
                         if created else f"cannot write to the run folder {run_dir}: {why}; "
                         f"make it writable (chmod -R u+w), or copy it and use the copy") from None
    if fcntl is not None:
        try:
            for attempt in range(20):  # 2 s: a reader such as sweep.py --status holds it for an instant
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if attempt == 19:
                        raise
                    time.sleep(0.1)
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


def held(run_dir):
    """Whether a process holds run_dir's lock (a train.py writing it), asked without blocking it: lock()
    waits out the instant this takes."""
    if fcntl is None:
        return False
    try:
        with open(os.path.join(run_dir, ".lock")) as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except FileNotFoundError:
        return False
    except OSError:
        return True


def unlock(f, run_dir):
    """Release lock()'s file; a folder it made is removed if it got nothing else (a refused run leaves none)."""
    f.close()
    if f.created and os.listdir(run_dir) == [".lock"]:
        os.remove(os.path.join(run_dir, ".lock"))
        os.rmdir(run_dir)


class Stop(Exception):
    """A signal arrived; `mid_epoch` is where the epoch stopped (None: at its end)."""

    def __init__(self, signum, mid_epoch=None):
        super().__init__(signum)
        self.signum, self.mid_epoch = signum, mid_epoch


class Signals:
    """SIGINT (Ctrl-C), SIGTERM (a time limit), SIGHUP (terminal closed) over train.py's main, by phase:
    "setup" (before the first step): KeyboardInterrupt at once, nothing to save; "training": only
    set `received`, so the loop finishes its step, saves and stops, and a second one stops at once
    (every write is atomic, the files stay whole); "done" (last epoch saved): say so, carry on.
    closed(): the output went away (Output), the run stops as for a signal."""
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
            print(f"\n{name}: the run has finished and is saved; ending normally", file=sys.stderr, flush=True)
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
    """sys.stdout or sys.stderr surviving its reader going away (| head, a closed terminal): the first
    failed write calls on_close (Signals.closed), so the run saves and stops, not dies of BrokenPipeError."""

    def __init__(self, stream, on_close):
        self.stream, self.on_close = stream, on_close

    def write(self, text):
        return self.call("write", text) or len(text)

    def flush(self):
        self.call("flush")

    def call(self, method, *args):
        try:
            return getattr(self.stream, method)(*args)
        except OSError as e:
            if not isinstance(e, BrokenPipeError) and e.errno != errno.EIO:  # EIO: terminal closed
                raise
        # Point the file descriptor itself at /dev/null: the text still in the stream's buffer
        # then drains there, also when Python flushes it at exit (no "Exception ignored").
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            self.stream = open(os.devnull, "w")
        self.on_close()

    def __getattr__(self, name):
        return getattr(self.stream, name)
