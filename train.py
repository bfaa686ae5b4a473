"""One command line for every model: data and model from flags (flags.py, config.py), one train_step for
all, the test loss every epoch, the run folder (GUIDE.md). python train.py --model vae --dataset mnist"""
import signal
import sys

if __name__ == "__main__":  # Ctrl-C while torch loads (a few seconds): end quietly, no traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import contextlib  # (after the handler above, on purpose)
import os
import time

import torch
import torch.nn as nn

import config
import data
import flags
import guard
import losses
import metrics
import models
import nets
import parallel
import progress
import runs
from config import pick_device, resolve


def build_optimizers(model, cfg, device):
    """{group: Adam} over the model's parameter groups; --lr-disc for a discriminator's."""
    lr = lambda name: cfg["lr_disc"] if name == "discriminator" and cfg["lr_disc"] else cfg["lr"]  # noqa
    fused = device.type in ("cpu", "cuda")  # fused Adam: one kernel for all tensors
    return {name: torch.optim.Adam(params, lr=lr(name), weight_decay=cfg["weight_decay"], fused=fused)
            for name, params in model.parameter_groups().items()}


def train_step(model, loss, opt, groups, x, target, labels, cfg, autocast=contextlib.nullcontext):
    """One forward pass; each objective backpropagated into its own group only, every backward before any
    step (they share one graph); --l1 adds l1 * sum|w| of the group. loss: model.loss or its DDP wrapper."""
    with autocast():
        out = loss(x, target, labels)
    steps = model.objectives(out)
    penalties = {name: losses.l1_penalty(groups[name]) for name in steps} if cfg["l1"] else {}
    for i, (name, objective) in enumerate(steps.items()):
        if penalties:
            objective = objective + cfg["l1"] * penalties[name]
        opt[name].zero_grad(set_to_none=True)
        objective.backward(inputs=groups[name], retain_graph=i < len(steps) - 1)
    if penalties:
        out["l1"] = sum(penalties.values())
    for name, params in groups.items():  # the norm before clipping; 0 for a group not stepped
        out["grad_norm" if len(groups) == 1 else f"grad_{name}"] = (
            grad_norm(params, cfg["grad_clip"]) if name in steps else torch.zeros_like(out["loss"]))
        if name in steps:
            opt[name].step()
    return out


def grad_norm(parameters, clip=None):
    """The L2 norm of all gradients together, on the device; with clip, scaled down to it (without: dot
    products, 0.11 against torch's norm's 0.16 ms for the MLP VAE here)."""
    if clip:
        return nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], clip)
    squares = [torch.dot(g, g) for g in (p.grad.reshape(-1) for p in parameters if p.grad is not None)]
    return torch.stack(squares).sum().sqrt() if squares else torch.zeros(())


def train_epoch(model, opt, split, cfg, epoch, noise, signals=None, resume=None,
                autocast=contextlib.nullcontext, copy_to=None, loss=None):
    """One pass over the training split, as pytorch/examples' train(): the terms' means and its seconds. A
    signal stops it after the step: guard.Stop carries the epoch's order, step and sums (`resume` them)."""
    images, labels = split
    # a model fitted in closed form (PCA) fits here
    model.before_epoch(x for x, _, _ in data.eval_batches(split, cfg["output"], noise, copy_to))
    model.train()
    loss, groups = loss or model.loss, model.parameter_groups()
    r = resume or {"step": 0, "seconds": 0.0, "order": torch.randperm(images.shape[0], device=images.device)}
    order, tally = r["order"].to(images.device), progress.Tally(resume)
    local, batch = parallel.shard(order, cfg["batch_size"]), cfg["batch_size"] // parallel.world()[1]
    n_steps, t0 = -(-len(local) // batch), time.perf_counter() - r["seconds"]
    one_is_too_few = nets.normalizes(model)
    for step, (x, target, y) in enumerate(data.batches(
            images, labels, batch, shuffle=True, output=cfg["output"], hflip=cfg["hflip"], crop=cfg["crop"],
            noise=noise, order=local, start=r["step"], device=copy_to), start=r["step"] + 1):
        if x.shape[0] < 2 and one_is_too_few:
            continue  # batch norm cannot normalize a batch of one image
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        model.progress = epoch - 1 + (step - 1) / n_steps  # epochs done: the KL schedules' clock
        out = train_step(model, loss, opt, groups, x, target, y, cfg, autocast)
        tally.add(out, step, x.shape[0])
        line = step % cfg["log_interval"] == 0 and step < n_steps
        if line:
            tally.stop_if_bad(epoch)
            rate = tally.n / (time.perf_counter() - t0)  # this epoch's images/s so far
            print(f"Train Epoch: {epoch} [{tally.n}/{len(local)} ({100 * tally.n / len(local):.0f}%)]\t"
                  f"Loss: {tally.mean('loss'):.4f}\t({rate:,.0f} images/s, "
                  f"{(len(local) - tally.n) / rate:.0f} s left in the epoch)", flush=True)
        if step < n_steps and stop_requested(signals, line):
            tally.stop_if_bad(epoch)  # never save weights after a bad step
            raise guard.Stop(signals.received or signal.SIGTERM, {"step": step, "order": order, "processes":
                             parallel.world()[1], "seconds": time.perf_counter() - t0, **tally.state()})
    if tally.n == 0:
        raise ValueError(f"epoch {epoch} took no step: this process's share of the training split is "
                         f"{len(local)} image(s), and batch norm needs two or more")
    tally.stop_if_bad(epoch)  # also when the epoch's last batch was skipped
    return tally.means(), time.perf_counter() - t0


def stop_requested(signals, progress):
    """Whether a signal asks to stop after this step (processes agree at progress lines)."""
    received = signals and signals.received
    return (progress and parallel.any_rank(received)) if parallel.active() else bool(received)


def epoch_line(terms, weights):
    """The terms after the loss, each with the weight it enters the loss with (when not 1)."""
    return ", ".join(f"{weights[k]:g} x {k} {v:.4f}" if weights.get(k, 1) != 1 else f"{k} {v:.4f}"
                     for k, v in terms.items() if k != "loss")


def run(cfg, ckpt=None, signals=None):
    """Train as cfg says (from ckpt when resuming), writing the run folder; signals: main's guard.Signals
    (alone: none caught). Returns the history rows (None: nothing to do)."""
    if ckpt is not None:
        runs.catch_up(ckpt, cfg["out"])  # files a full disk kept behind checkpoint.pt
        if ckpt["mid_epoch"] is None and ckpt["epoch"] >= cfg["epochs"]:
            print(f"{cfg['out']} has finished its {ckpt['epoch']} epochs; nothing to do (raise --epochs to "
                  f"train further)")
            return None
    signals = signals or guard.Signals()
    device = parallel.device_for(pick_device(cfg["device"]))
    writer = parallel.world()[0] == 0  # under torchrun, rank 0 alone writes the run folder
    splits, copy_to = load_data(cfg, ckpt, device)
    noise = data.parse_noise(cfg["noise"])
    model, opt, sched, autocast = build(cfg, device)
    history, start, best, mid_epoch = [], 1, float("inf"), None
    if ckpt is not None:
        history, start, best, mid_epoch = runs.restore(ckpt, model, opt, sched, cfg, device)
        where = f"epoch {start}, step {mid_epoch['step']}" if mid_epoch else f"epoch {start - 1}"
        print(f"Resuming {cfg['out']} after {where}")
    loss = parallel.loss_fn(model, device)  # model.loss, or DDP around it (same weights everywhere)
    if writer:
        runs.remove_temporaries(cfg["out"])  # none is ours: we hold the folder's lock
        runs.save_config(cfg, cfg["out"])
    state = lambda epoch, mid=None: runs.checkpoint(  # noqa: E731
        model, opt, sched, epoch, cfg, history, best, mid, parallel.gather(runs.rng_state(device)))
    save = lambda obj: writer and runs.save_checkpoint(obj, os.path.join(cfg["out"], "checkpoint.pt"))  # noqa
    signals.phase = "training"
    for epoch in range(start, cfg["epochs"] + 1):
        try:
            train, seconds = train_epoch(model, opt, splits["train"], cfg, epoch, noise, signals, mid_epoch,
                                         autocast, copy_to["train"], loss)
        except guard.Stop as stop:  # the epoch's state so far, and the weights after its last step
            save(state(epoch - 1, stop.mid_epoch))
            stop.where = f"epoch {epoch}, step {stop.mid_epoch['step']}"
            raise
        mid_epoch = None
        history.append(end_of_epoch(model, splits, copy_to, cfg, noise, epoch, train, seconds, opt))
        for s in sched.values():
            s.step()
        val = history[-1].get("val_loss")
        improved, best = val is not None and val < best, min(best, val if val is not None else best)
        save(state(epoch))  # first: no other file runs ahead of it
        if writer:
            write_epoch(model, splits, copy_to, cfg, noise, epoch, history, best if improved else None)
        if parallel.any_rank(signals.received) and epoch < cfg["epochs"]:
            stop = guard.Stop(signals.received or signal.SIGTERM)
            stop.where = f"the end of epoch {epoch}"
            raise stop
    signals.phase = "done"
    return history


def build(cfg, device):
    """The model (said in a line), its optimizers, --scheduler's schedulers and autocast."""
    model = models.from_config(cfg).to(device)
    print(f"Model: {type(model).__name__} ({models.describe(model)}), "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    autocast, opt = parallel.speed_features(model, cfg, device), build_optimizers(model, cfg, device)
    sched = {name: torch.optim.lr_scheduler.StepLR(o, cfg["step_size"], cfg["lr_gamma"])
             for name, o in opt.items()} if cfg["scheduler"] == "step" else {}
    return model, opt, sched, autocast


def write_epoch(model, splits, copy_to, cfg, noise, epoch, history, best=None):
    """The epoch's files after checkpoint.pt: history, best.pt if the validation loss improved to `best`
    (chosen on validation, never on test), the growing figures."""
    runs.write_history(history, cfg["out"])
    if best is not None:
        runs.atomic_save({"format": runs.FORMAT, "model": model.state_dict(), "config": cfg, "epoch": epoch,
                          "val_loss": best}, os.path.join(cfg["out"], "best.pt"))
    progress.save_figures(model, splits["test"], cfg, noise, epoch, copy_to["test"])


def load_data(cfg, ckpt, device):
    """The run's splits, said in a few lines, and copy_to: None for a split on the device, else the device
    to copy its batches to from host memory; their identity checked against a resumed run's."""
    rank, processes, _ = parallel.world()
    kept = data.kept_classes(cfg)
    print(f"Run folder: {cfg['out']} (its config.json keeps every setting)")
    print(f"Device: {device}" + (f", {processes} processes" if parallel.active() else ""))
    print(f"Training: {cfg['model']} on {cfg['dataset']}"
          + (f" (classes {', '.join(cfg['classes'][c] for c in kept)} only)" if kept else "")
          + (f", {cfg['epochs']} epoch(s) of batch {cfg['batch_size']}, Adam lr {cfg['lr']:g}"
             if models.from_config(cfg, device="meta").parameter_groups() else
             ", fitted in closed form (no parameters to optimise)") + f", seed {cfg['seed']}")
    torch.manual_seed(cfg["seed"] + rank)  # each process its own z, dropout and noise draws
    budget = parallel.data_budget(cfg, device)
    splits = data.load(cfg["dataset"], cfg["data_root"], device, cfg["download"], budget, cfg["image_size"],
                       cfg["channels"], cfg["skip_bad_images"], cfg["val_split"], kept)
    copy_to = {name: None if data.fits(images, budget) else device for name, (images, _) in splits.items()}
    for name, (images, _) in splits.items():
        if copy_to[name] is not None:
            print(f"Data: the {name} split ({images.numel() / 2**20:.0f} MB) is over the {budget / 2**20:.0f} "
                  f"MB budget: kept in host memory{' (pinned)' if images.is_pinned() else ''}, copied a "
                  f"batch at a time")
    runs.check_data(cfg, ckpt, data.identity(splits))
    if "val" in splits:  # --val-split's, or the dataset's own (celeba): best.pt is chosen on it
        print(f"Data: {len(splits['train'][0])} training, {len(splits['val'][0])} validation and "
              f"{len(splits['test'][0])} test images")
    return splits, copy_to


def end_of_epoch(model, splits, copy_to, cfg, noise, epoch, train, seconds, opt):
    """The epoch's test (and validation) loss and active units, printed as pytorch/examples does; its
    history row."""
    t0 = time.perf_counter()
    test, val = (metrics.test_loss(model, splits[s], cfg["output"], noise, copy_to[s])
                 if s in splits else {} for s in ("test", "val"))
    seconds += time.perf_counter() - t0
    print(f"====> Epoch: {epoch} Average loss: {train['loss']:.4f} ({epoch_line(train, model.term_weights)}) "
          f"{seconds:.1f}s")
    if val:
        print(f"====> Validation loss: {val['loss']:.4f} ({epoch_line(val, {})})")
    active = metrics.count_active(model, splits["test"], cfg["output"], noise, copy_to["test"])
    print(f"====> Test set loss: {test['loss']:.4f} ({epoch_line(test, {})})"
          + (f"; active units {active} of {model.latent_dim}" if active is not None else ""), flush=True)
    if active is not None and active < model.latent_dim / 4:
        print(f"warning: posterior collapse: {active} of {model.latent_dim} latent units are active "
              f"(Cov_x E[z_d | x] > 0.01 on the test split); a lower --beta, --kl-warmup or --free-bits "
              f"keeps more")
    return {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()},
            **{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()},
            **({"test_active_units": active} if active is not None else {}),
            "seconds": round(seconds, 3), "lr": next(iter(opt.values())).param_groups[0]["lr"] if opt else None}


def fit(**options):
    """Train from Python as from the shell: model, history = train.fit(model="vae", dataset="mnist",
    epochs=2). Keywords are the flags (True/False for a switch, batchnorm=False, hidden=(300, 100)); the
    model (CPU, eval mode), its history, and train.fit.last_run its folder. A bad flag raises ValueError
    before any work, a failed run RuntimeError (then fit(resume=RUN_DIR))."""
    argv = []
    for name, value in options.items():
        value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        argv += flags.words(name, value, "fit():")
    try:
        cfg, _ = resolve(argv)  # every check, before any work
    except SystemExit:  # argparse could not read a value; it printed why
        raise ValueError(f"fit(): a flag train.py cannot read (see above): {' '.join(argv)}") from None
    if "out" not in options and "resume" not in options:
        argv += ["--out", cfg["out"]]  # the folder resolve named
    code = main(argv)
    if code:
        raise RuntimeError(f"training stopped (train.py's exit code {code}; its message is above); the run "
                           f"folder is {cfg['out']}")
    import evaluate  # (it imports matplotlib: only here)
    _, model, history, _, _ = evaluate.load_run(cfg["out"])
    fit.last_run = cfg["out"]
    return model.eval(), history


def main(argv=None):
    """train.py's command line (argv: its words); the exit code."""
    return guard.main(sys.argv[1:] if argv is None else argv, start)


def start(argv, signals):
    """Every check before any work (a bad flag: one line, exit 2), then the run, guarded."""
    try:
        cfg, ckpt = resolve(argv)
        cfg = parallel.share(cfg)  # rank 0's (its --out name carries the time of day)
        config.check_resources(cfg)
    except ValueError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse: --help, or a malformed flag (already printed)
        return e.code
    return guard.hold(cfg, ckpt, signals, run)


if __name__ == "__main__":
    sys.exit(main())
