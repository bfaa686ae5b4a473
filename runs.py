"""The run folder on disk: atomic writes, config.json and history.csv, what a checkpoint
holds, safe checkpoint loading, and resuming from one.

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

import torch

import parallel

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


def check_data(cfg, ckpt, seen):
    """Record the data's identity (sizes and hash, data.identity) in cfg; on resume, compare
    it with the run's: other data may carry on at an epoch's end, with a note, but not inside
    an epoch, whose saved order indexes the old split."""
    was = cfg.get("data")
    if ckpt is not None and was is not None and was != seen:
        what = "; ".join(f"{k}: {seen[k][0]} images, hash {seen[k][1]} (was {was[k][0]}, {was[k][1]})"
                         for k in seen if seen[k] != was.get(k))
        if ckpt["mid_epoch"] is not None:
            raise ValueError(f"the data under {cfg['data_root']} are not those {cfg['out']} was "
                             f"stopped on inside epoch {ckpt['epoch'] + 1} ({what}); put the "
                             f"original files back to finish that epoch")
        print(f"Note: the data under {cfg['data_root']} are not those the run was trained on "
              f"({what}); training goes on from epoch {ckpt['epoch'] + 1} on these")
    cfg["data"] = seen
