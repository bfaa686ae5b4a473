"""The run folder on disk: atomic writes, history.csv, what a checkpoint holds, safe
checkpoint loading, and stopping on a signal with everything saved.

Used by train.py (writing) and evaluate.py (reading). A checkpoint is a plain dict of
tensors and numbers, loaded with weights_only=True, so a shared file cannot run code.
"""
import csv
import errno
import io
import json
import os
import pickle
import re
import shutil
import signal
import sys
import threading

import torch

import parallel

try:
    import fcntl  # POSIX: Linux, macOS
except ImportError:  # Windows: run folders are not locked
    fcntl = None

# The layout of config.json and of the checkpoints. A run folder of another format is
# refused: this code reads its own format only.
FORMAT = 2


def check_format(obj, path):
    """ValueError unless obj (a loaded config or checkpoint) has this code's format."""
    found = obj.get("format") if isinstance(obj, dict) else None
    if found != FORMAT:
        written = f"format {found}" if found is not None else "no format number (before format 2)"
        raise ValueError(f"{path} has {written}; this train.py reads format {FORMAT} only: "
                         f"train again, or use the version of the project that wrote it")


def atomic_save(obj, path):
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    `obj` is text or bytes (written as they are) or anything torch.save takes. A full disk raises
    DiskFull, naming the file, with the old file intact and the temporary one removed.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    if os.path.lexists(tmp):  # left by a killed writer of the same pid
        os.remove(tmp)
    try:
        with open(tmp, "wb") as f:
            if isinstance(obj, (str, bytes)):
                f.write(obj.encode() if isinstance(obj, str) else obj)
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        if full_disk(e):
            raise DiskFull(f"no space left on device while writing {path}") from None
        if isinstance(e, PermissionError):
            raise ValueError(f"cannot write {path}: permission denied") from None
        raise
    os.replace(tmp, path)


class DiskFull(Exception):
    """A write failed for want of space (ENOSPC, or a disk quota)."""


def full_disk(e):
    """Whether e is a write that failed for want of space; torch.save reports it as a
    RuntimeError ('unexpected pos') whose context is the OSError."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        e = e.__cause__ or e.__context__
    return False


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
    if fresh and not unstarted(run_dir):
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


def unstarted(run_dir):
    """Whether run_dir holds no run's files, or only those of a run that stopped before it
    saved its first epoch (its config.json and lock): a new run may take it."""
    names = {n for n in os.listdir(run_dir) if not re.search(r"\.tmp\d+$", n)}
    return names <= {".lock", "config.json"}


def save_config(cfg, run_dir):
    atomic_save(json.dumps(cfg, indent=2) + "\n", os.path.join(run_dir, "config.json"))


def load_config(run_dir):
    """config.json as a dict; ValueError naming the file when it cannot be read."""
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except PermissionError:
        raise ValueError(f"{path}: permission denied") from None
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is unreadable ({first_line(e)}); pass a run folder written "
                         f"by train.py") from None


def write_history(rows, run_dir):
    """history.csv: one row per epoch, written atomically. The columns are every row's, in
    order of appearance: a run resumed by a newer train.py gains columns (left empty before)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_save(text.getvalue(), os.path.join(run_dir, "history.csv"))


def save_checkpoint(obj, path):
    """Write `path` atomically and keep the checkpoint it replaces as <name>.prev.pt.

    The old file is hard-linked (or copied) to the backup before the rename, so `path`
    itself is never missing: after a crash at any moment, both files are complete.
    """
    prev = backup_of(path)
    if os.path.exists(path) and not (os.path.exists(prev) and os.path.samefile(path, prev)):
        tmp = f"{prev}.tmp{os.getpid()}"
        if os.path.lexists(tmp):  # left by a killed writer; never write through its link
            os.remove(tmp)
        try:
            os.link(path, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, tmp)
        os.replace(tmp, prev)
    atomic_save(obj, path)


def catch_up(ckpt, run_dir):
    """Rewrite what a full disk may have left behind checkpoint.pt (which is written first):
    history.csv short of its epochs, and best.pt older than a best last epoch (validation)."""
    history, path = ckpt["history"], os.path.join(run_dir, "best.pt")
    if not history:
        return
    try:
        with open(os.path.join(run_dir, "history.csv"), encoding="utf-8") as f:
            rows = sum(1 for _ in csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        rows = -1
    if rows != len(history):
        write_history(history, run_dir)
    last = history[-1]
    if ckpt["mid_epoch"] is None and "val_loss" in last and last["val_loss"] <= ckpt["best_val_loss"]:
        try:
            best_epoch = torch.load(path, map_location="cpu", weights_only=True)["epoch"]
        except Exception:
            best_epoch = -1
        if best_epoch != last["epoch"]:
            atomic_save({"format": FORMAT, "model": ckpt["model"], "config": ckpt["config"],
                         "epoch": last["epoch"], "val_loss": last["val_loss"]}, path)


def remove_temporaries(run_dir):
    """Delete the half-written <file>.tmp<pid> files a killed writer leaves behind."""
    for name in os.listdir(run_dir):
        if re.search(r"\.tmp\d+$", name):
            os.remove(os.path.join(run_dir, name))


def backup_of(path):
    return path[:-3] + ".prev.pt" if path.endswith(".pt") else path + ".prev"


def load_checkpoint(path):
    """torch.load with weights_only=True: a file that is not a plain checkpoint is refused
    with one clear line, and nothing in it is executed."""
    backup = backup_of(path)
    hint = (f"; the previous checkpoint is {backup}: copy it over {path} to go back to it"
            if os.path.isfile(backup) else "")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} is missing{hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise ValueError(f"refused {path}: it holds Python objects, not only tensors and "
                             f"numbers, and loading it could run code (nothing was run); use "
                             f"checkpoints written by train.py{hint}") from None
        raise ValueError(f"cannot load checkpoint {path}: corrupted ({first_line(e)}){hint}") from None
    except Exception as e:
        raise ValueError(f"cannot load checkpoint {path}: truncated or corrupted "
                         f"({first_line(e)}){hint}") from None
    check_format(ckpt, path)
    return ckpt


def first_line(e):
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:140]}" if text else type(e).__name__


def checkpoint(model, opt, sched, epoch, cfg, history, best, mid_epoch=None, rng=None):
    """Everything needed to continue exactly: weights, optimizers, schedulers, the epochs
    done, the unfinished epoch's data order, step and sums (mid_epoch), and the random
    generators' states. Python's and numpy's generators are not used in training.
    rng: [rng_state() of each process] (parallel.gather); None: this process's alone."""
    rng = rng or [rng_state(next(model.parameters()).device)]
    return {"format": FORMAT, "model": model.state_dict(), "epoch": epoch, "mid_epoch": mid_epoch,
            "optimizer": {name: o.state_dict() for name, o in opt.items()},
            "scheduler": {name: s.state_dict() for name, s in sched.items()},
            "config": cfg, "history": history, "best_val_loss": best,
            "rng": {"torch": rng[0]["torch"],  # one CUDA state per process, [] on CPUs
                    "cuda": [r["cuda"] for r in rng if r["cuda"] is not None],
                    **({"ranks": [r["torch"] for r in rng]} if len(rng) > 1 else {})}}


def restore(ckpt, model, opt, sched, cfg, device):
    """Load a checkpoint into the model, optimizers and schedulers, and this process's random
    generators; returns (history, first epoch to run, best validation loss, mid_epoch or None)."""
    rank, processes, _ = parallel.world()
    model.load_state_dict(ckpt["model"])
    for name in opt:
        opt[name].load_state_dict(ckpt["optimizer"][name])
        if sched:
            sched[name].load_state_dict(ckpt["scheduler"][name])
    start, mid_epoch = ckpt["epoch"] + 1, ckpt["mid_epoch"]
    if mid_epoch is not None and mid_epoch["processes"] != processes:
        raise ValueError(f"{cfg['out']} stopped inside an epoch with {mid_epoch['processes']} "
                         f"processes; resume it with as many")
    if mid_epoch is not None:
        mid_epoch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in mid_epoch.items()}
    restore_rng(ckpt["rng"], rank, processes, device, cfg["seed"] + rank + 10007 * start)
    return ckpt["history"], start, ckpt.get("best_val_loss", float("inf")), mid_epoch


def check_pair(ckpt, cfg, path, ignore=()):
    """ValueError unless ckpt is a training checkpoint of the run config.json describes: a
    copied best.pt, or another run's checkpoint, would resume the wrong run."""
    missing = [k for k in ("model", "optimizer", "epoch", "history", "rng", "config") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a training checkpoint (it has no {missing[0]}; best.pt "
                         f"holds weights only): copy checkpoint.prev.pt over it, or start a new run")
    skip = set(ignore) | {"out", "resume", "resume_commands", "command", "data"}  # see check_data
    differ = sorted(k for k in set(cfg) | set(ckpt["config"])
                    if k not in skip and cfg.get(k) != ckpt["config"].get(k))
    if differ:
        k = differ[0]
        raise ValueError(f"{path} and config.json describe different runs ({k}: "
                         f"{ckpt['config'].get(k)!r} in the checkpoint, {cfg.get(k)!r} in "
                         f"config.json); the folder mixes two runs")


def rng_state(device):
    """This process's generators: torch's CPU one, and its own GPU's when it has one."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def saved_rng(rng, rank, processes):
    """This process's (CPU state, CUDA state) in a checkpoint's "rng"; None where it has none.

    With as many processes as were saved, each takes its own. With another count, rank 0
    takes the first and the others none, to be seeded afresh: sharing rank 0's state would
    make them draw the same z and noise."""
    cpu, cuda = rng.get("ranks") or [rng["torch"]], rng["cuda"]
    pick = lambda states: (states[rank] if len(states) == processes  # noqa: E731
                           else states[0] if rank == 0 and states else None)
    return pick(cpu), pick(cuda)


def restore_rng(rng, rank, processes, device, fresh_seed):
    """Set this process's generators from a checkpoint's "rng" (see saved_rng); a process
    with no saved state is seeded with fresh_seed, which no other process uses."""
    cpu, cuda = saved_rng(rng, rank, processes)
    if cpu is None:
        torch.manual_seed(fresh_seed)  # the CPU generator and every GPU's
    else:
        torch.set_rng_state(cpu)
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


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
