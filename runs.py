"""The run folder on disk (train.py writes it, evaluate.py reads it): atomic writes, config.json, history.csv,
checkpoints (plain dicts of tensors, loaded with weights_only=True: a shared file cannot run code), resuming."""
import csv
import errno
import glob
import io
import json
import os
import pickle
import re
import shutil

import torch

import parallel

FORMAT = 2  # the layout of config.json and checkpoints: a run folder of another format is refused
TMP = re.compile(r"\.tmp\d+$")  # <file>.tmp<pid>: a writer's temporary file
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", -1))  # a full disk, or a disk quota


def check_format(obj, path):
    """ValueError unless obj (a loaded config or checkpoint) has this code's format."""
    found = obj.get("format") if isinstance(obj, dict) else None
    if found != FORMAT:
        written = f"format {found}" if found is not None else "no format number (before format 2)"
        raise ValueError(f"{path} has {written}; this train.py reads format {FORMAT} only: "
                         f"train again, or use the version of the project that wrote it")


def atomic_save(obj, path):
    """Write text, bytes or a torch.save object to a temporary file, fsync, rename it over path: a
    crash leaves the old file or the new one, never half. A full disk raises DiskFull."""
    tmp, obj = f"{path}.tmp{os.getpid()}", obj.encode() if isinstance(obj, str) else obj
    if os.path.lexists(tmp):  # left by a killed writer of the same pid
        os.remove(tmp)
    try:
        with open(tmp, "wb") as f:
            f.write(obj) if isinstance(obj, bytes) else torch.save(obj, f)
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
    """Whether e failed for want of space; torch.save raises a RuntimeError whose context is the OSError."""
    while e is not None and not (isinstance(e, OSError) and e.errno in NO_SPACE):
        e = e.__cause__ or e.__context__
    return e is not None


def unstarted(run_dir):
    """Whether run_dir holds nothing but a config.json and lock (a run stopped before its first epoch)."""
    return {n for n in os.listdir(run_dir) if not TMP.search(n)} <= {".lock", "config.json"}


def save_config(cfg, run_dir):
    """Write run_dir/config.json atomically."""
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
    """history.csv, one row per epoch; columns in order of appearance (a newer train.py may add some)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_save(text.getvalue(), os.path.join(run_dir, "history.csv"))


def history_rows(run_dir):
    """The number of rows in run_dir's history.csv; -1 when it cannot be read."""
    try:
        with open(os.path.join(run_dir, "history.csv"), encoding="utf-8") as f:
            return sum(1 for _ in csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return -1


def save_checkpoint(obj, path):
    """atomic_save, keeping the file it replaces as <name>.prev.pt: hard-linked (or copied) there
    before the rename, so path is never missing and both files are whole after a crash."""
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


def catch_up(ckpt, run_dir, epochs):
    """Rewrite what a full disk left behind checkpoint.pt (written first): history.csv, best.pt. True (said
    in a line) when the run has already trained its `epochs`."""
    history, path = ckpt["history"], os.path.join(run_dir, "best.pt")
    if history and history_rows(run_dir) != len(history):
        write_history(history, run_dir)
    last = history[-1] if history else {}
    if ckpt["mid_epoch"] is None and "val_loss" in last and last["val_loss"] <= ckpt["best_val_loss"]:
        try:
            best_epoch = torch.load(path, map_location="cpu", weights_only=True)["epoch"]
        except Exception:
            best_epoch = -1
        if best_epoch != last["epoch"]:
            atomic_save({"format": FORMAT, "model": ckpt["model"], "config": ckpt["config"],
                         "epoch": last["epoch"], "val_loss": last["val_loss"]}, path)
    if ckpt["mid_epoch"] is None and ckpt["epoch"] >= epochs:
        print(f"{run_dir} has finished its {ckpt['epoch']} epochs; nothing to do (raise --epochs to train "
              f"further)")
        return True
    return False


def remove_temporaries(run_dir):
    """Delete the half-written <file>.tmp<pid> files a killed writer leaves behind."""
    for name in filter(TMP.search, os.listdir(run_dir)):
        os.remove(os.path.join(run_dir, name))


def backup_of(path):
    """The backup save_checkpoint keeps of path: x.pt -> x.prev.pt."""
    return path[:-3] + ".prev.pt" if path.endswith(".pt") else path + ".prev"


def load_checkpoint(path):
    """torch.load with weights_only=True: anything but a plain checkpoint is refused, nothing run."""
    backup = backup_of(path)
    hint = (f"; the previous checkpoint is {backup}: copy it over {path} to go back to it"
            if os.path.isfile(backup) else "")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} is missing{hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise ValueError(f"refused {path}: it holds Python objects, not only tensors and numbers, and loading it "
                             f"could run code (nothing was run); use checkpoints written by train.py{hint}") from None
        raise ValueError(f"cannot load checkpoint {path}: corrupted ({first_line(e)}){hint}") from None
    except Exception as e:
        raise ValueError(f"cannot load checkpoint {path}: truncated or corrupted ({first_line(e)}){hint}") from None
    check_format(ckpt, path)
    return ckpt


def first_line(e):
    """An exception as one short line: its type and the start of its text."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:140]}" if text else type(e).__name__


def checkpoint(model, opt, sched, epoch, cfg, history, best, mid_epoch=None, rng=None):
    """Everything to continue exactly: weights, optimizers, schedulers, epochs, the unfinished epoch's
    order, step and sums (mid_epoch), torch's generators (rng: each process's; None: this one's)."""
    rng = rng or [rng_state(next(model.parameters()).device)]
    return {"format": FORMAT, "model": model.state_dict(), "epoch": epoch, "mid_epoch": mid_epoch,
            "optimizer": {name: o.state_dict() for name, o in opt.items()},
            "scheduler": {name: s.state_dict() for name, s in sched.items()},
            "config": cfg, "history": history, "best_val_loss": best,
            "rng": {"torch": rng[0]["torch"],  # one CUDA state per process, [] on CPUs
                    "cuda": [r["cuda"] for r in rng if r["cuda"] is not None],
                    **({"ranks": [r["torch"] for r in rng]} if len(rng) > 1 else {})}}


def restore(ckpt, model, opt, sched, cfg, device):
    """Load ckpt into model, opt, sched and the generators (said in a line) -> (history, start epoch, best,
    mid_epoch)."""
    rank, processes, _ = parallel.world()
    model.load_state_dict(ckpt["model"])
    for name in opt:
        opt[name].load_state_dict(ckpt["optimizer"][name])
        if sched:
            sched[name].load_state_dict(ckpt["scheduler"][name])
    start, mid_epoch = ckpt["epoch"] + 1, ckpt["mid_epoch"]
    if mid_epoch is not None:
        if mid_epoch["processes"] != processes:
            raise ValueError(f"{cfg['out']} stopped inside an epoch with {mid_epoch['processes']} "
                             f"processes; resume it with as many")
        mid_epoch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in mid_epoch.items()}
    restore_rng(ckpt["rng"], rank, processes, device, cfg["seed"] + rank + 10007 * start)
    print(f"Resuming {cfg['out']} after " + (f"epoch {start}, step {mid_epoch['step']}" if mid_epoch else
                                             f"epoch {start - 1}"))
    return ckpt["history"], start, ckpt.get("best_val_loss", float("inf")), mid_epoch


def check_pair(ckpt, cfg, path, ignore=()):
    """ValueError unless ckpt is a training checkpoint of the run config.json describes."""
    missing = [k for k in ("model", "optimizer", "epoch", "history", "rng", "config") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a training checkpoint (it has no {missing[0]}; best.pt holds weights "
                         f"only): copy checkpoint.prev.pt over it, or start a new run")
    skip = set(ignore) | {"out", "resume", "resume_commands", "command", "data"}  # see check_data
    differ = sorted(k for k in (set(cfg) | set(ckpt["config"])) - skip if cfg.get(k) != ckpt["config"].get(k))
    if differ:
        k = differ[0]
        raise ValueError(f"{path} and config.json describe different runs ({k}: {ckpt['config'].get(k)!r} in the "
                         f"checkpoint, {cfg.get(k)!r} in config.json); the folder mixes two runs")


def rng_state(device):
    """This process's generators: torch's CPU one, and its own GPU's when it has one."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def saved_rng(rng, rank, processes):
    """This process's (CPU state, CUDA state) in a checkpoint's "rng", None where it has none. With
    another process count rank 0 takes the first, the others none: sharing it, they would draw its z."""
    cpu, cuda = rng.get("ranks") or [rng["torch"]], rng["cuda"]
    pick = lambda states: (states[rank] if len(states) == processes  # noqa: E731
                           else states[0] if rank == 0 and states else None)
    return pick(cpu), pick(cuda)


def restore_rng(rng, rank, processes, device, fresh_seed):
    """Set this process's generators from a checkpoint's "rng", or seed them with fresh_seed."""
    cpu, cuda = saved_rng(rng, rank, processes)
    if cpu is None:
        torch.manual_seed(fresh_seed)  # the CPU generator and every GPU's
    else:
        torch.set_rng_state(cpu)
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def check_data(cfg, ckpt, seen):
    """Record the data's identity in cfg. Resumed on other data: a note at an epoch's end, an error
    inside one (its saved order indexes the old split)."""
    was = cfg.get("data")
    if ckpt is not None and was is not None and was != seen:
        what = "; ".join(f"{k}: {seen[k][0]} images, hash {seen[k][1]} (was {was[k][0]}, {was[k][1]})"
                         for k in seen if seen[k] != was.get(k))
        if ckpt["mid_epoch"] is not None:
            raise ValueError(f"the data under {cfg['data_root']} are not those {cfg['out']} was stopped on inside "
                             f"epoch {ckpt['epoch'] + 1} ({what}); put the original files back to finish that epoch")
        print(f"Note: the data under {cfg['data_root']} are not those the run was trained on ({what}); training "
              f"goes on from epoch {ckpt['epoch'] + 1} on these")
    cfg["data"] = seen


def find_runs(patterns):
    """Run folders from paths, globs ('runs/vae-*') and folders holding run folders."""
    found = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isdir(m) or not glob.has_magic(pattern)]
        if not matches:
            raise ValueError(f"{pattern}: no run folder matches it")
        for path in matches:
            inner = sorted(os.path.dirname(c) for c in glob.glob(os.path.join(path, "*", "config.json")))
            found += inner if not os.path.isfile(os.path.join(path, "config.json")) and inner else [path]
    return list(dict.fromkeys(os.path.normpath(f) for f in found))


def read_history(run_dir, fallback):
    """history.csv's rows; the checkpoint's copy (fallback) when the file is missing or
    damaged (not UTF-8, no rows, no epoch column), with a note."""
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return fallback
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if rows and all(r.get("epoch", "").isdigit() for r in rows):
            return rows
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    print(f"{path} is damaged; the loss curves use the checkpoint's copy of the history")
    return fallback
