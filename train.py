"""One command line for every model: its flags, one train_step for all, the test loss every epoch, the run
folder (GUIDE.md; config.py checks the flags). python train.py --model vae --dataset mnist"""
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
import models
import nets
import parallel
import progress
import runs


def build_parser():
    """train.py's flags: data, training, machine and run folder, then one per model option (flags.py)."""
    p = flags.Parser(prog="train.py", description="Train an autoencoder, a VAE, a VAE-GAN or a conditional "
                     "VAE.", formatter_class=flags.Help)
    data_flags(p.add_argument_group("model and data").add_argument)
    training_flags(p.add_argument_group("training").add_argument)
    machine_flags(p.add_argument_group("machine and run folder").add_argument)
    flags.model_flags(p)
    return p


def data_flags(a):
    a("--model", default="vae", help=f"model family: {', '.join(models.MODELS)} (models.py)")
    a("--dataset", default="mnist", help="mnist, fashion-mnist (or fashionmnist), cifar10, celeba, "
      "npz:FILE[,TEST_FILE] (arrays x, y) or folder:PATH (image files; class subfolders)")
    a("--image-size", type=int, default=None, help="resize (shorter side) and centre-crop every image to "
      "SIZE x SIZE (16 to 1024); the conv arch takes 28 or 16, 32, 64, 128, ...")
    a("--channels", type=int, default=None, help="1 (grey) or 3 (colour): convert the images "
      "(default: the dataset's own)")
    a("--skip-bad-images", action="store_true", help="folder: and celeba: leave out image files that do "
      "not decode (counted), instead of stopping")
    a("--data-root", default="./data", help="folder holding the datasets (torchvision layout)")
    a("--no-download", dest="download", action="store_false",
      help="never download; fail with a message if the files are missing")
    a("--val-split", type=flags.split_size, default=0, help="hold out this many training images (or this "
      "fraction, below 1) as a validation split, the same in every run: best.pt is chosen on it (0: "
      "none, and no best.pt; the test split is never used to choose)")
    a("--classes", dest="train_classes", default=None, help="train only on these classes, by index or "
      "name, comma-separated (3, or 0,1,2, or Trouser): one-class training for anomaly detection; the "
      "test split stays whole (default: every class)")
    a("--exclude-classes", default=None, help="train on every class but these (as --classes)")


def training_flags(a):
    a("--weight-decay", type=float, default=0.0, help="L2 penalty, as Adam's weight_decay")
    a("--l1", type=float, default=0.0, help="L1 weight penalty: adds L1 * sum|w| to the loss")
    a("--augment", action="store_true", help="--hflip and --crop together")
    a("--hflip", action="store_true", help="random horizontal flips of training images")
    a("--crop", action="store_true", help="random crops with 4-pixel zero padding (training only)")
    a("--noise", default="", help="denoising: corrupt the input only, e.g. gaussian:0.5, saltpepper:0.2, "
      "mask:0.3 (fixed-seed corruption on the test split)")
    a("--epochs", type=int, default=10, help="number of epochs (raise it with --resume to extend)")
    a("--batch-size", type=int, default=128, help="images per training step")
    a("--lr", type=float, default=1e-3, help="Adam learning rate (vaegan: encoder and decoder)")
    a("--lr-disc", type=float, default=None, help="a discriminator's learning rate (vaegan, factorvae; "
      "default: --lr)")
    a("--grad-clip", type=float, default=None, help="clip the gradient norm (each VAE-GAN network's own) "
      "to this value; the norm before clipping is logged as grad_*")
    a("--scheduler", default="none", help="learning-rate schedule: none or step (StepLR)")
    a("--step-size", type=int, default=10, help="StepLR: epochs between decays")
    a("--lr-gamma", type=float, default=0.5, help="StepLR: factor applied to the learning rate")


def machine_flags(a):
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    a("--data-budget", type=float, default=None, help="GB of training images allowed in device memory; a "
      "larger split stays in host memory and is copied a batch at a time (default: half the GPU's free "
      "memory; unlimited on a CPU)")
    a("--amp", action="store_true", help="bfloat16 autocast for the networks (losses stay float32) on "
      "CUDA and on CPUs with AMX; elsewhere ignored, with a note")
    a("--compile", action="store_true", help="torch.compile the model's loss (first steps are slow while "
      "it compiles)")
    a("--channels-last", action="store_true", help="conv arch: channels-last memory format for weights "
      "and batches (faster convolutions on recent GPUs)")
    a("--seed", type=int, default=1, help="seeds torch: weights, data order, z samples, dropout, "
      "augmentation (the test-split noise has its own fixed seed)")
    a("--out", default=None, help="run folder (default runs/<model>-<dataset>-<time>)")
    a("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    a("--log-interval", type=int, default=100, help="steps between progress lines")
    a("--tensorboard", action=flags.SWITCH, default=False, help="log every epoch's terms and figures for TensorBoard")


def resolve(argv):
    """train.py's words -> (checked config, checkpoint or None); ValueError for a bad input (config.py)."""
    return config.resolve(argv, build_parser())


def build_optimizers(model, cfg, device):
    """{group: Adam} over the model's parameter groups; --lr-disc for a discriminator's."""
    lr = lambda name: cfg["lr_disc"] if name == "discriminator" and cfg["lr_disc"] else cfg["lr"]  # noqa
    fused = device.type in ("cpu", "cuda")  # fused Adam: one kernel for all tensors
    return {name: torch.optim.Adam(params, lr=lr(name), weight_decay=cfg["weight_decay"], fused=fused,
                                   **model.ADAM.get(name, {})) for name, params in model.parameter_groups().items()}


def train_step(model, loss, opt, groups, x, target, labels, l1=0.0, clip=None, autocast=contextlib.nullcontext):
    """One forward pass; each objective backpropagated into its own group only, every backward before any
    step (they share one graph); --l1 adds l1 * sum|w| of the group. loss: model.loss or its DDP wrapper."""
    with autocast():
        out = loss(x, target, labels)
    steps = model.objectives(out)
    penalties = {name: losses.l1_penalty(groups[name]) for name in steps} if l1 else {}
    for i, (name, objective) in enumerate(steps.items()):
        if penalties:
            objective = objective + l1 * penalties[name]
        opt[name].zero_grad(set_to_none=True)
        objective.backward(inputs=groups[name], retain_graph=i < len(steps) - 1)
    if penalties:
        out["l1"] = sum(penalties.values())
    for name, params in groups.items():  # the norm before clipping; 0 for a group not stepped
        out["grad_norm" if len(groups) == 1 else f"grad_{name}"] = (
            grad_norm(params, clip) if name in steps else torch.zeros_like(out["loss"]))
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
    for step, (x, target, y) in enumerate(data.batches(
            images, labels, batch, shuffle=True, output=cfg["output"], hflip=cfg["hflip"], crop=cfg["crop"],
            noise=noise, order=local, start=r["step"], device=copy_to), start=r["step"] + 1):
        if x.shape[0] < 2 and nets.normalizes(model):
            continue  # batch norm cannot normalize a batch of one image
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        model.progress = epoch - 1 + (step - 1) / n_steps  # epochs done: the KL schedules' clock
        out = train_step(model, loss, opt, groups, x, target, y, cfg["l1"], cfg["grad_clip"], autocast)
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


def run(cfg, ckpt=None, signals=None):
    """Train as cfg says (from ckpt when resuming), writing the run folder; signals: main's guard.Signals
    (alone: none caught). Returns the history rows (None: nothing to do)."""
    if ckpt is not None and runs.catch_up(ckpt, cfg["out"], cfg["epochs"]):  # what a full disk kept behind
        return None  # it had finished
    signals = signals or guard.Signals()
    device = parallel.device_for(config.pick_device(cfg["device"]))
    writer = parallel.world()[0] == 0  # under torchrun, rank 0 alone writes the run folder
    progress.header(cfg, device)
    torch.manual_seed(cfg["seed"] + parallel.world()[0])  # each process its own z, dropout and noise draws
    splits, copy_to = data.for_run(cfg, device, parallel.data_budget(cfg, device))
    runs.check_data(cfg, ckpt, data.identity(splits))  # the data a resumed run trained on
    noise = data.parse_noise(cfg["noise"])
    model, opt, sched, autocast = build(cfg, device)
    history, start, best, mid_epoch = [], 1, float("inf"), None
    if ckpt is not None:
        history, start, best, mid_epoch = runs.restore(ckpt, model, opt, sched, cfg, device)
    loss = parallel.loss_fn(model, device)  # model.loss, or DDP around it (same weights everywhere)
    if writer:
        runs.remove_temporaries(cfg["out"])  # none is ours: we hold the folder's lock
        runs.save_config(cfg, cfg["out"])
    state = lambda epoch, mid=None: runs.checkpoint(  # noqa: E731
        model, opt, sched, epoch, cfg, history, best, mid, parallel.gather(runs.rng_state(device)))
    save = lambda obj: writer and runs.save_checkpoint(obj, os.path.join(cfg["out"], "checkpoint.pt"))  # noqa
    board, signals.phase = writer and progress.open_board(cfg), "training"
    for epoch in range(start, cfg["epochs"] + 1):
        try:
            train, seconds = train_epoch(model, opt, splits["train"], cfg, epoch, noise, signals, mid_epoch,
                                         autocast, copy_to["train"], loss)
        except guard.Stop as stop:  # the epoch's state so far, and the weights after its last step
            save(state(epoch - 1, stop.mid_epoch))
            stop.where = f"epoch {epoch}, step {stop.mid_epoch['step']}"
            raise
        mid_epoch = None
        history.append(progress.end_of_epoch(model, splits, copy_to, cfg, noise, epoch, train, seconds, opt))
        for s in sched.values():
            s.step()
        val = history[-1].get("val_loss")
        improved, best = val is not None and val < best, min(best, val if val is not None else best)
        save(state(epoch))  # first: no other file runs ahead of it
        if writer:
            progress.write_epoch(model, splits, copy_to, cfg, noise, epoch, history,
                                 best if improved else None, board)
        if parallel.any_rank(signals.received) and epoch < cfg["epochs"]:
            stop = guard.Stop(signals.received or signal.SIGTERM)
            stop.where = f"the end of epoch {epoch}"
            raise stop
    if board:
        progress.log_hparams(board, cfg, history[-1])
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


def fit(**options):
    """Train from Python as from the shell: model, history = train.fit(model="vae", dataset="mnist",
    epochs=2). Keywords are the flags (True/False for a switch, batchnorm=False, hidden=(300, 100)); the
    model (CPU, eval mode), its history, and train.fit.last_run its folder. A bad flag raises ValueError
    before any work, a failed run RuntimeError (then fit(resume=RUN_DIR))."""
    argv = []
    for name, value in options.items():
        value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        argv += flags.words(build_parser(), name, value, "fit():")
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
