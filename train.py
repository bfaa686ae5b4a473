"""One command line for every model: builds data and model from flags, trains, evaluates
on the test split every epoch, and writes the run folder (DESIGN.md).

    python train.py --model vae --dataset mnist
    python train.py --model vae --dataset cifar10 --arch conv --beta 4 --dropout 0.3
    python train.py --model vaegan --dataset mnist --no-batchnorm
    python train.py --resume runs/vae-mnist-20261120-101500 --epochs 20
"""
import contextlib
import os
import signal
import sys
import time

import torch
from torchvision.utils import save_image

import data
import losses
import parallel
import runs
from ae import AE
from flags import default_hidden, defaults, parse_hidden, pick_device, resolve
from vae import VAE
from vaegan import VAEGAN, grad_norm


def build_model(cfg, image_shape):
    """The model a config describes; evaluate.py rebuilds runs with this too."""
    cfg = {**defaults(), **cfg}  # a run saved before a flag existed gets its default
    cfg["hidden"] = cfg["hidden"] or default_hidden(cfg)
    nets = dict(image_shape=image_shape, latent_dim=cfg["latent_dim"], arch=cfg["arch"],
                hidden=parse_hidden(cfg["hidden"]), act=cfg["act"], dropout=cfg["dropout"],
                batchnorm=cfg["batchnorm"], output=cfg["output"], recon=cfg["recon"], c=cfg["c"])
    if cfg["model"] == "ae":
        return AE(**nets, code=cfg["code"], sparsity=cfg["sparsity"],
                  sparsity_target=cfg["sparsity_target"], contractive=cfg["contractive"])
    if cfg["model"] == "vaegan":
        return VAEGAN(**nets, beta=cfg["beta"], gamma=cfg["gamma"],
                      feature_layer=cfg["feature_layer"], equilibrium=cfg["equilibrium"],
                      margin=cfg["margin"])
    return VAE(**nets, beta=cfg["beta"])


def build_optimizers(model, cfg, device):
    """{name: Adam}: one for the whole model, or the VAE-GAN's three (--lr-disc for D)."""
    fused = device.type in ("cpu", "cuda")  # one kernel for all tensors
    adam = lambda params, lr: torch.optim.Adam(  # noqa: E731
        params, lr=lr, weight_decay=cfg["weight_decay"], fused=fused)
    if cfg["model"] != "vaegan":
        return {"model": adam(model.parameters(), cfg["lr"])}
    return {"encoder": adam(model.encoder.parameters(), cfg["lr"]),
            "decoder": adam(model.decoder.parameters(), cfg["lr"]),
            "discriminator": adam(model.discriminator.parameters(), cfg["lr_disc"] or cfg["lr"])}


def train_epoch(model, opt, split, cfg, epoch, noise, signals=None, resume=None,
                autocast=contextlib.nullcontext, copy_to=None, loss=None):
    """One pass over the training split. Sums stay on the device; read once at the end.

    Terms are averaged over images, except skips_* (VAE-GAN gating), which are counted.
    A signal stops it after the current step with Stop, carrying the epoch's data order,
    step and sums; `resume` is that state, to finish the epoch as if never stopped.
    copy_to: the device, for a split kept in host memory (--data-budget). loss: the forward
    pass, model.loss or its DistributedDataParallel wrapper (parallel.py), which takes
    this process's part of each global batch.
    """
    model.train()
    images, labels = split
    dev, loss = copy_to or images.device, loss or model.loss
    r = resume or {"step": 0, "sums": 0, "n": 0, "names": None, "seconds": 0.0,
                   "order": torch.randperm(images.shape[0], device=images.device),
                   "first_bad": torch.zeros((), dtype=torch.long, device=dev), "bad": None}
    order, sums, n, names = r["order"].to(images.device), r["sums"], r["n"], r["names"]
    if resume and parallel.world()[0] > 0:
        sums, n = sums * 0, 0  # the saved sums are every process's together: rank 0 holds them
    first_bad, bad = r["first_bad"], r["bad"]  # the first step with a non-finite term, and which
    counted = names and torch.tensor([k.startswith("skips_") for k in names], device=dev)
    local, batch = parallel.shard(order, cfg["batch_size"]), cfg["batch_size"] // parallel.world()[1]
    n_steps, t0 = -(-len(local) // batch), time.perf_counter() - r["seconds"]
    for step, (x, target, _) in enumerate(data.batches(
            images, labels, batch, shuffle=True, output=cfg["output"],
            hflip=cfg["hflip"], crop=cfg["crop"], noise=noise, order=local, start=r["step"],
            device=copy_to), start=r["step"] + 1):
        if x.shape[0] < 2 and cfg["batchnorm"]:
            continue  # batch norm cannot normalize a batch of one image
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        if isinstance(model, VAEGAN):  # three networks, three losses: see vaegan.py
            out = model.train_step(x, target, opt, l1=cfg["l1"], grad_clip=cfg["grad_clip"],
                                   autocast=autocast, loss_fn=loss)
        else:
            with autocast():
                out = loss(x, target)
            if cfg["l1"]:
                out["l1"] = losses.l1_penalty(model.parameters())
                out["loss"] = out["loss"] + cfg["l1"] * out["l1"]
            opt["model"].zero_grad(set_to_none=True)
            out["loss"].backward()
            out["grad_norm"] = grad_norm(model.parameters(), cfg["grad_clip"])
            opt["model"].step()
        if names is None:
            names = list(out)
            counted = torch.tensor([k.startswith("skips_") for k in names], device=x.device)
            bad = torch.zeros(len(names), dtype=torch.bool, device=x.device)
        values = torch.stack([out[k].detach() for k in names])
        sums = sums + torch.where(counted, values, values * x.shape[0])
        newly_bad = (first_bad == 0) & ~torch.isfinite(values).all()
        bad = torch.where(newly_bad, ~torch.isfinite(values), bad)
        first_bad = torch.where(newly_bad, step, first_bad)
        n += x.shape[0]
        check = step % cfg["log_interval"] == 0 or step == n_steps
        if check:
            stop_if_bad(bad, first_bad, names, epoch)
            if step < n_steps:
                print(f"Train Epoch: {epoch} [{n}/{len(local)} ({100 * n / len(local):.0f}%)]"
                      f"\tLoss: {sums[0].item() / n:.4f}", flush=True)
        # several processes must stop at the same step: they agree at progress lines
        received = signals and signals.received
        if step < n_steps and (parallel.any_rank(received) if parallel.active() and check
                               else received and not parallel.active()):
            stop_if_bad(bad, first_bad, names, epoch)  # never save weights after a bad step
            sums, n = parallel.total(sums.clone()), parallel.count(n, dev)
            raise runs.Stop(received or signal.SIGTERM, {
                "step": step, "order": order, "processes": parallel.world()[1], "sums": sums,
                "n": n, "names": names, "first_bad": first_bad, "bad": bad,
                "seconds": time.perf_counter() - t0})
    sums, n = parallel.total(sums), parallel.count(n, dev)
    return dict(zip(names, torch.where(counted, sums, sums / n).tolist())), time.perf_counter() - t0


def stop_if_bad(bad, first_bad, names, epoch):
    """Raise, naming the terms that were not finite at the first bad step (one host sync);
    with several processes, on all of them when any one went bad."""
    if parallel.active():
        first_bad, bad = parallel.maximum(first_bad), parallel.maximum(bad.to(torch.uint8)).bool()
    if bool(first_bad):
        terms = [name for name, b in zip(names, bad.tolist()) if b]
        terms = [name for name in terms if name != "loss"] or ["loss"]
        raise FloatingPointError(f"non-finite {' and '.join(terms)} at epoch {epoch}, "
                                 f"step {int(first_bad)}; the last good checkpoint is kept "
                                 f"(try a lower --lr, or --grad-clip)")


@torch.no_grad()
def evaluate(model, split, cfg, noise, copy_to=None):
    """Test loss without beta or penalties: the VAE's negative ELBO per image (z sampled),
    the AE's reconstruction term. Batches of 1000 whatever the processes, so the fixed-seed
    test noise is the same; several processes share the batches and add up the sums."""
    model.eval()
    images, labels = split
    sums, names = 0, None
    rank, processes, _ = parallel.world()  # under torchrun, process r takes batches r, r + N, ...
    for i, (x, target, _) in enumerate(data.batches(
            images, labels, 1000, output=cfg["output"], noise=noise,
            noise_seed=data.TEST_NOISE_SEED, device=copy_to)):
        if i % processes == rank:
            out = model.test_loss(x, target)
            names = names or list(out)
            sums = sums + torch.stack([out[k] for k in names]) * x.shape[0]
    parts = parallel.gather((names, sums.tolist() if names else None))
    names = next(n for n, _ in parts if n)
    return {k: sum(s[j] for _, s in parts if s) / images.shape[0] for j, k in enumerate(names)}


@torch.no_grad()
def save_figures(model, split, cfg, noise, epoch, z, copy_to=None):
    """Test inputs over their reconstructions (z = mu), and decodes of fixed prior samples."""
    model.eval()
    images, labels = split
    x, target, _ = next(data.batches(images[:8], labels[:8], 8, output=cfg["output"],
                                     noise=noise, noise_seed=data.TEST_NOISE_SEED, device=copy_to))
    rows = [x, model.reconstruct(x)] + ([target] if noise else [])
    save_image(data.to_unit(torch.cat(rows), cfg["output"]), os.path.join(cfg["out"], f"reconstruction_{epoch}.png"),
               nrow=8)
    if hasattr(model, "sample"):  # an AE has no prior to sample from
        samples = model.activate(model.decode(z))
        save_image(data.to_unit(samples, cfg["output"]), os.path.join(cfg["out"], f"sample_{epoch}.png"), nrow=8)


def run(cfg, ckpt=None):
    device = parallel.device_for(pick_device(cfg["device"]))
    rank, processes, _ = parallel.world()
    writer = rank == 0  # under torchrun, rank 0 alone writes the run folder
    print(f"Device: {device}" + (f", {processes} processes" if parallel.active() else ""))
    print("Config: " + " ".join(f"{k}={v}" for k, v in cfg.items() if k != "resume_commands"))
    torch.manual_seed(cfg["seed"] + rank)  # each process its own z, dropout and noise draws
    budget = parallel.data_budget(cfg, device)
    splits = data.load(cfg["dataset"], cfg["data_root"], device, cfg["download"], budget)
    copy_to = {name: None if data.fits(images, budget) else device
               for name, (images, _) in splits.items()}
    for name, (images, _) in splits.items():
        if copy_to[name] is not None:
            print(f"Data: the {name} split ({images.numel() / 2**20:.0f} MB) is over the "
                  f"{budget / 2**20:.0f} MB budget: kept in host memory"
                  f"{' (pinned)' if images.is_pinned() else ''}, copied a batch at a time")
    noise = data.parse_noise(cfg["noise"])
    image_shape = tuple(splits["train"][0].shape[1:])
    cfg["image_shape"] = list(image_shape)
    model = build_model(cfg, image_shape).to(device)
    autocast = parallel.speed_features(model, cfg, device)
    opt = build_optimizers(model, cfg, device)
    sched = {name: torch.optim.lr_scheduler.StepLR(o, cfg["step_size"], cfg["lr_gamma"])
             for name, o in opt.items()} if cfg["scheduler"] == "step" else {}
    history, start, best, mid_epoch = [], 1, float("inf"), None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        saved_opt, saved_sched = ckpt["optimizer"], ckpt["scheduler"] or {}
        if "param_groups" in saved_opt:  # a checkpoint from before one optimizer per network
            saved_opt, saved_sched = {"model": saved_opt}, {"model": saved_sched}
        for name in opt:
            opt[name].load_state_dict(saved_opt[name])
            if sched:
                sched[name].load_state_dict(saved_sched[name])
        history, start, best = ckpt["history"], ckpt["epoch"] + 1, ckpt["best_test_loss"]
        mid_epoch = ckpt.get("mid_epoch")
        if mid_epoch is not None and mid_epoch.get("processes", 1) != processes:
            raise ValueError(f"{cfg['out']} stopped inside an epoch with "
                             f"{mid_epoch.get('processes', 1)} processes; resume it with as many")
        if mid_epoch is not None:
            mid_epoch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in mid_epoch.items()}
        runs.restore_rng(ckpt["rng"], rank, processes, device, cfg["seed"] + rank + 10007 * start)
        where = f"epoch {start}, step {mid_epoch['step']}" if mid_epoch else f"epoch {ckpt['epoch']}"
        print(f"Resuming {cfg['out']} after {where}")
    loss = parallel.loss_fn(model, device)  # model.loss, or DDP around it (same weights everywhere)
    if writer:
        os.makedirs(cfg["out"], exist_ok=True)
        runs.remove_temporaries(cfg["out"])
        runs.save_config(cfg, cfg["out"])
    z = torch.randn(64, cfg["latent_dim"], generator=torch.Generator().manual_seed(cfg["seed"]))
    z = z.to(device)
    state = lambda epoch, mid=None: runs.checkpoint(  # noqa: E731
        model, opt, sched, epoch, cfg, history, best, mid, parallel.gather(runs.rng_state(device)))
    save = lambda obj, name: writer and runs.save_checkpoint(obj, os.path.join(cfg["out"], name))  # noqa
    with runs.Signals() as signals:
        for epoch in range(start, cfg["epochs"] + 1):
            try:
                train, seconds = train_epoch(model, opt, splits["train"], cfg, epoch, noise,
                                             signals, mid_epoch, autocast, copy_to["train"], loss)
            except runs.Stop as stop:  # the epoch's state so far, and the weights after its last step
                save(state(epoch - 1, stop.mid_epoch), "checkpoint.pt")
                stop.where = f"epoch {epoch}, step {stop.mid_epoch['step']}"
                raise
            mid_epoch, t0 = None, time.perf_counter()
            test = evaluate(model, splits["test"], cfg, noise, copy_to["test"])
            seconds += time.perf_counter() - t0
            lr = next(iter(opt.values())).param_groups[0]["lr"]
            for s in sched.values():
                s.step()
            terms = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items() if k != "loss")  # noqa
            print(f"====> Epoch: {epoch} Average loss: {train['loss']:.4f} ({terms(train)}) "
                  f"{seconds:.1f}s")
            print(f"====> Test set loss: {test['loss']:.4f} ({terms(test)})", flush=True)
            history.append({"epoch": epoch, **{f"train_{k}": v for k, v in train.items()},
                            **{f"test_{k}": v for k, v in test.items()},
                            "seconds": round(seconds, 3), "lr": lr})
            if writer:
                save_figures(model, splits["test"], cfg, noise, epoch, z, copy_to["test"])
                runs.write_history(history, cfg["out"])
            if test["loss"] < best:
                best = test["loss"]
                if writer:
                    runs.atomic_save({"model": model.state_dict(), "config": cfg, "epoch": epoch,
                                      "test_loss": best}, os.path.join(cfg["out"], "best.pt"))
            save(state(epoch), "checkpoint.pt")
            if parallel.any_rank(signals.received) and epoch < cfg["epochs"]:
                stop = runs.Stop(signals.received or signal.SIGTERM)
                stop.where = f"the end of epoch {epoch}"
                raise stop
    return history


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parallel.start()  # joins torchrun's process group; a no-op when run alone
    try:
        return train_main(argv)
    finally:
        parallel.stop()


def train_main(argv):
    try:
        cfg, ckpt = resolve(argv)
        pick_device(cfg["device"])
        cfg = parallel.share(cfg)  # rank 0's (its --out name carries the time of day)
        processes = parallel.world()[1]
        if parallel.active() and cfg["batch_size"] % processes:
            raise ValueError(f"--batch-size {cfg['batch_size']} is the global batch; make it "
                             f"a multiple of the {processes} processes")
        if parallel.active() and cfg["equilibrium"] is not None:
            raise ValueError("--equilibrium gates each update on one process's numbers; it is "
                             "not supported under torchrun yet (drop it or run one process)")
    except ValueError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse: --help, or a malformed flag (already printed)
        return e.code
    try:
        run(cfg, ckpt)
    except (data.DataError, ValueError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"train.py: stopped: {e}", file=sys.stderr)
        return 1
    except runs.Stop as stop:
        rank, processes, _ = parallel.world()
        launch = (f"torchrun --nproc_per_node {processes} train.py" if parallel.active()
                  else "python train.py")
        if rank == 0:
            print(f"train.py: stopped by {signal.Signals(stop.signum).name} at {stop.where}; "
                  f"saved {os.path.join(cfg['out'], 'checkpoint.pt')}. Resume with: {launch} "
                  f"--resume {cfg['out']}", file=sys.stderr)
        return 128 + stop.signum  # 130 for SIGINT, 143 for SIGTERM
    except KeyboardInterrupt:
        print(f"\ntrain.py: interrupted; the last saved checkpoint is kept. Resume with: "
              f"python train.py --resume {cfg['out']}", file=sys.stderr)
        return 130
    except torch.OutOfMemoryError:
        print(f"train.py: stopped: out of memory on {cfg['device']} at --batch-size "
              f"{cfg['batch_size']}; start again with a smaller --batch-size (e.g. "
              f"{max(1, cfg['batch_size'] // 2)}); the last finished epoch is saved",
              file=sys.stderr)
        return 1
    print(f"Run folder: {cfg['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
