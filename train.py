"""One command line for every model: builds data and model from flags, trains, evaluates
on the test split every epoch, and writes the run folder (DESIGN.md).

    python train.py --model vae --dataset mnist
    python train.py --model vae --dataset cifar10 --arch conv --beta 4 --dropout 0.3
    python train.py --resume runs/vae-mnist-20261120-101500 --epochs 20
"""
import argparse
import os
import shlex
import sys
import time

import torch
from torchvision.utils import save_image

import data
import losses
import runs
from ae import AE
from vae import VAE

MODELS = ("vae", "ae")
# Flags that may differ from the saved config when resuming; anything else is refused.
RESUME_SAFE = {"epochs", "device", "log_interval", "data_root", "download", "resume"}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser():
    p = Parser(prog="train.py", description="Train an autoencoder, VAE or VAE-GAN.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--model", default="vae", help=f"model family: {', '.join(MODELS)}")
    a("--dataset", default="mnist", help="mnist, fashion-mnist (or fashionmnist), cifar10")
    a("--data-root", default="./data", help="folder holding the datasets (torchvision layout)")
    a("--no-download", dest="download", action="store_false",
      help="never download; fail with a message if the files are missing")
    a("--arch", default="mlp", help="mlp or conv (three stride-2 convolutions 32-64-128)")
    a("--latent-dim", type=int, default=20, help="size of the latent code z")
    a("--hidden", default="400", help="mlp hidden widths, comma-separated, e.g. 300,100,10")
    a("--act", default="relu", help="hidden activation: relu or elu")
    a("--output", default="sigmoid", help="decoder output: sigmoid ([0, 1] data) or tanh ([-1, 1])")
    a("--recon", default=None, help="reconstruction loss: bce, mse or gaussian "
      "(default: bce for sigmoid output, mse for tanh)")
    a("--c", type=float, default=0.05, help="variance c of the gaussian decoder N(x_hat, cI)")
    a("--beta", type=float, default=1.0, help="weight of the KL term (beta-VAE); 1 is the ELBO")
    a("--sparsity", type=float, default=0.0, help="ae: weight L of the sparsity penalty, "
      "L * sum|h| (or the KL form with --sparsity-target)")
    a("--sparsity-target", type=float, default=None, help="ae: target mean activation rho of "
      "a sigmoid code; the penalty becomes L * sum_j KL(rho || rho_hat_j)")
    a("--code", default="linear", help="ae: the code's activation, linear, relu or sigmoid "
      "(relu for L1 sparsity; --sparsity-target implies sigmoid)")
    a("--contractive", type=float, default=0.0, help="ae: weight L of the contractive "
      "penalty L * ||dh/dx||_F^2 per image")
    a("--dropout", type=float, default=0.0, help="dropout after each hidden activation of the encoder")
    a("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
      help="batch norm after each hidden layer (default: on for conv, off for mlp)")
    a("--weight-decay", type=float, default=0.0, help="L2 penalty, as Adam's weight_decay")
    a("--l1", type=float, default=0.0, help="L1 weight penalty: adds L1 * sum|w| to the loss")
    a("--augment", action="store_true", help="--hflip and --crop together")
    a("--hflip", action="store_true", help="random horizontal flips of training images")
    a("--crop", action="store_true", help="random crops with 4-pixel zero padding (training only)")
    a("--noise", default="", help="denoising: corrupt the input only, e.g. gaussian:0.5, "
      "saltpepper:0.2, mask:0.3 (fixed-seed corruption on the test split)")
    a("--epochs", type=int, default=10, help="number of epochs (raise it with --resume to extend)")
    a("--batch-size", type=int, default=128, help="images per training step")
    a("--lr", type=float, default=1e-3, help="Adam learning rate")
    a("--scheduler", default="none", help="learning-rate schedule: none or step (StepLR)")
    a("--step-size", type=int, default=10, help="StepLR: epochs between decays")
    a("--gamma", type=float, default=0.5, help="StepLR: factor applied to the learning rate")
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    a("--seed", type=int, default=1, help="seeds torch: weights, data order, z samples, dropout, "
      "augmentation (the test-split noise has its own fixed seed)")
    a("--out", default=None, help="run folder (default runs/<model>-<dataset>-<time>)")
    a("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    a("--log-interval", type=int, default=100, help="steps between progress lines")
    return p


def explicit_flags(parser, argv):
    """The dests of the flags actually typed on the command line."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def parse_hidden(spec):
    try:
        widths = tuple(int(w) for w in spec.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise ValueError(f"bad --hidden {spec!r}; use positive widths, comma-separated, e.g. 400 "
                         f"or 300,100,10")
    return widths


def check(cfg, given):
    """Resolve defaults and reject bad values and combinations, before any work starts."""
    if cfg["model"] not in MODELS:
        raise ValueError(f"unknown --model {cfg['model']!r}; use {', '.join(MODELS)}")
    cfg["dataset"] = data.canonical_name(cfg["dataset"])
    for name, choices in (("arch", ("mlp", "conv")), ("act", ("relu", "elu")),
                          ("output", ("sigmoid", "tanh")), ("scheduler", ("none", "step"))):
        if cfg[name] not in choices:
            raise ValueError(f"unknown --{name} {cfg[name]!r}; use {' or '.join(choices)}")
    cfg["recon"] = cfg["recon"] or ("bce" if cfg["output"] == "sigmoid" else "mse")
    if cfg["recon"] not in ("bce", "mse", "gaussian"):
        raise ValueError(f"unknown --recon {cfg['recon']!r}; use bce, mse or gaussian")
    if cfg["recon"] == "bce" and cfg["output"] == "tanh":
        raise ValueError("--recon bce needs [0, 1] data and a sigmoid output; with --output tanh "
                         "use --recon mse or gaussian")
    if not 0 <= cfg["dropout"] < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {cfg['dropout']}")
    for name in ("beta", "weight_decay", "l1"):
        if not 0 <= cfg[name] < float("inf"):
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {cfg[name]}")
    for name in ("lr", "c", "gamma"):
        if not 0 < cfg[name] < float("inf"):
            raise ValueError(f"--{name} must be > 0, got {cfg[name]}")
    for name in ("latent_dim", "epochs", "batch_size", "step_size", "log_interval"):
        if cfg[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {cfg[name]}")
    for name in ("sparsity", "contractive"):
        if not 0 <= cfg[name] < float("inf"):
            raise ValueError(f"--{name} must be >= 0, got {cfg[name]}")
        if cfg[name] and cfg["model"] != "ae":
            raise ValueError(f"--{name} penalizes a deterministic code; use it with --model ae")
    if cfg["sparsity_target"] is not None:
        if not 0 < cfg["sparsity_target"] < 1 or not cfg["sparsity"]:
            raise ValueError(f"--sparsity-target must be in (0, 1) and needs --sparsity L > 0, "
                             f"got {cfg['sparsity_target']}")
    if cfg["code"] not in ("linear", "relu", "sigmoid"):
        raise ValueError(f"unknown --code {cfg['code']!r}; use linear, relu or sigmoid")
    if "code" in given and cfg["model"] != "ae":
        raise ValueError("--code sets the ae's code activation; use it with --model ae")
    if cfg["sparsity_target"] is not None:
        if "code" in given and cfg["code"] != "sigmoid":
            raise ValueError("--sparsity-target needs a sigmoid code (rho_hat in (0, 1)); "
                             "drop --code or use --code sigmoid")
        cfg["code"] = "sigmoid"
    if cfg["model"] == "ae" and "beta" in given:
        raise ValueError("--beta weights the VAE's KL term; the ae has none (use --model vae)")
    if cfg["arch"] == "conv" and "hidden" in given:
        raise ValueError("--hidden sets mlp widths; the conv arch's channels are fixed at 32-64-128")
    cfg["hidden"] = ",".join(map(str, parse_hidden(cfg["hidden"])))
    data.parse_noise(cfg["noise"])
    if cfg["augment"]:
        cfg["hflip"] = cfg["crop"] = True
    cfg["batchnorm"] = cfg["arch"] == "conv" if cfg["batchnorm"] is None else cfg["batchnorm"]
    return cfg


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else (
            "mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {name}: no such CUDA device here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def check_out_dir(path):
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"--out {path} already exists; use --resume {path} or another --out")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {path}: {parent} is not writable; choose another --out")


def resolve(argv):
    """argv -> (config dict, checkpoint or None); raises ValueError for any bad input."""
    args = build_parser().parse_args(argv)
    given = explicit_flags(build_parser(), argv)
    if args.resume:
        ckpt_path = os.path.join(args.resume, "checkpoint.pt")
        cfg_path = os.path.join(args.resume, "config.json")
        if not os.path.isfile(cfg_path) or not os.path.isfile(ckpt_path):
            raise ValueError(f"--resume {args.resume}: no config.json and checkpoint.pt there; "
                             f"pass a run folder written by train.py")
        # flags added since the run was saved take their defaults
        cfg = {**vars(build_parser().parse_args([])), **runs.load_config(args.resume)}
        new = check(dict(vars(args)), given)
        for name in sorted(given - RESUME_SAFE):
            if new[name] != cfg.get(name):
                raise ValueError(f"--{name.replace('_', '-')} differs from the saved run "
                                 f"({cfg.get(name)!r}); only {', '.join(sorted(RESUME_SAFE))} "
                                 f"may change with --resume")
        cfg.update({k: getattr(args, k) for k in given & RESUME_SAFE})
        cfg["resume_commands"] = cfg.get("resume_commands", []) + [shlex.join(["train.py"] + argv)]
        check(cfg, set())
        return cfg, runs.load_checkpoint(ckpt_path)
    cfg = check(vars(args), given)
    cfg["command"] = shlex.join(["train.py"] + argv)
    if cfg["out"] is None:
        cfg["out"] = os.path.join("runs", f"{cfg['model']}-{cfg['dataset']}-"
                                          f"{time.strftime('%Y%m%d-%H%M%S')}")
    check_out_dir(cfg["out"])
    return cfg, None


def build_model(cfg, image_shape):
    """The model a config describes; evaluate.py rebuilds runs with this too."""
    nets = dict(image_shape=image_shape, latent_dim=cfg["latent_dim"], arch=cfg["arch"],
                hidden=parse_hidden(cfg["hidden"]), act=cfg["act"], dropout=cfg["dropout"],
                batchnorm=cfg["batchnorm"], output=cfg["output"], recon=cfg["recon"], c=cfg["c"])
    if cfg["model"] == "ae":
        return AE(**nets, code=cfg.get("code", "linear"), sparsity=cfg["sparsity"],
                  sparsity_target=cfg["sparsity_target"], contractive=cfg["contractive"])
    return VAE(**nets, beta=cfg["beta"])


def train_epoch(model, opt, split, cfg, epoch, noise):
    """One pass over the training split. Sums stay on the device; read once at the end."""
    model.train()
    images, labels = split
    sums, names = 0, None
    first_bad = torch.zeros((), dtype=torch.long, device=images.device)
    n, n_steps = 0, -(-images.shape[0] // cfg["batch_size"])
    for step, (x, target, _) in enumerate(data.batches(
            images, labels, cfg["batch_size"], shuffle=True, output=cfg["output"],
            hflip=cfg["hflip"], crop=cfg["crop"], noise=noise), start=1):
        if x.shape[0] < 2 and cfg["batchnorm"]:
            continue  # batch norm cannot normalize a batch of one image
        out = model.loss(x, target)
        if cfg["l1"]:
            out["l1"] = losses.l1_penalty(model.parameters())
            out["loss"] = out["loss"] + cfg["l1"] * out["l1"]
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        names = names or list(out)
        sums = sums + torch.stack([out[k].detach() for k in names]) * x.shape[0]
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(out["loss"]), step, first_bad)
        n += x.shape[0]
        if step % cfg["log_interval"] == 0 or step == n_steps:
            stop_if_bad(sums, first_bad, names, epoch)
            if step < n_steps:
                print(f"Train Epoch: {epoch} [{n}/{images.shape[0]} "
                      f"({100 * n / images.shape[0]:.0f}%)]\tLoss: {sums[0].item() / n:.4f}",
                      flush=True)
    return dict(zip(names, (sums / n).tolist()))


def stop_if_bad(sums, first_bad, names, epoch):
    if bool(first_bad):
        bad = [name for name, s in zip(names, sums.tolist()) if s != s or abs(s) == float("inf")]
        bad = [name for name in bad if name != "loss"] or ["loss"]
        raise FloatingPointError(f"non-finite {' and '.join(bad)} at epoch {epoch}, "
                                 f"step {int(first_bad)}; the last good checkpoint is kept "
                                 f"(try a lower --lr)")


@torch.no_grad()
def evaluate(model, split, cfg, noise):
    """Test loss without beta or penalties: the VAE's negative ELBO per image (z sampled),
    the AE's reconstruction term."""
    model.eval()
    images, labels = split
    sums, names = 0, None
    for x, target, _ in data.batches(images, labels, 1000, output=cfg["output"], noise=noise,
                                     noise_seed=data.TEST_NOISE_SEED):
        out = model.test_loss(x, target)
        names = names or list(out)
        sums = sums + torch.stack([out[k] for k in names]) * x.shape[0]
    return dict(zip(names, (sums / images.shape[0]).tolist()))


@torch.no_grad()
def save_figures(model, split, cfg, noise, epoch, z):
    """Test inputs over their reconstructions (z = mu), and decodes of fixed prior samples."""
    model.eval()
    images, labels = split
    x, target, _ = next(data.batches(images[:8], labels[:8], 8, output=cfg["output"],
                                     noise=noise, noise_seed=data.TEST_NOISE_SEED))
    rows = [x, model.reconstruct(x)] + ([target] if noise else [])
    to01 = (lambda t: t) if cfg["output"] == "sigmoid" else (lambda t: (t + 1) / 2)
    save_image(to01(torch.cat(rows)), os.path.join(cfg["out"], f"reconstruction_{epoch}.png"),
               nrow=8)
    if cfg["model"] == "vae":  # an AE has no prior to sample from
        samples = model.activate(model.decode(z))
        save_image(to01(samples), os.path.join(cfg["out"], f"sample_{epoch}.png"), nrow=8)


def run(cfg, ckpt=None):
    device = pick_device(cfg["device"])
    print(f"Device: {device}")
    print("Config: " + " ".join(f"{k}={v}" for k, v in cfg.items() if k != "resume_commands"))
    torch.manual_seed(cfg["seed"])
    splits = data.load(cfg["dataset"], cfg["data_root"], device, cfg["download"])
    noise = data.parse_noise(cfg["noise"])
    image_shape = tuple(splits["train"][0].shape[1:])
    cfg["image_shape"] = list(image_shape)
    model = build_model(cfg, image_shape).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                           fused=device.type in ("cpu", "cuda"))  # one kernel for all tensors
    sched = (torch.optim.lr_scheduler.StepLR(opt, cfg["step_size"], cfg["gamma"])
             if cfg["scheduler"] == "step" else None)
    history, start, best = [], 1, float("inf")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if sched:
            sched.load_state_dict(ckpt["scheduler"])
        history, start, best = ckpt["history"], ckpt["epoch"] + 1, ckpt["best_test_loss"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        print(f"Resuming {cfg['out']} after epoch {ckpt['epoch']}")
    os.makedirs(cfg["out"], exist_ok=True)
    runs.save_config(cfg, cfg["out"])
    z = torch.randn(64, cfg["latent_dim"], generator=torch.Generator().manual_seed(cfg["seed"]))
    z = z.to(device)
    for epoch in range(start, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        train = train_epoch(model, opt, splits["train"], cfg, epoch, noise)
        test = evaluate(model, splits["test"], cfg, noise)
        seconds = time.perf_counter() - t0
        lr = opt.param_groups[0]["lr"]
        if sched:
            sched.step()
        terms = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items() if k != "loss")  # noqa
        print(f"====> Epoch: {epoch} Average loss: {train['loss']:.4f} ({terms(train)}) "
              f"{seconds:.1f}s")
        print(f"====> Test set loss: {test['loss']:.4f} ({terms(test)})", flush=True)
        history.append({"epoch": epoch, **{f"train_{k}": v for k, v in train.items()},
                        **{f"test_{k}": v for k, v in test.items()},
                        "seconds": round(seconds, 3), "lr": lr})
        save_figures(model, splits["test"], cfg, noise, epoch, z)
        runs.write_history(history, cfg["out"])
        out = cfg["out"]
        if test["loss"] < best:
            best = test["loss"]
            runs.atomic_save({"model": model.state_dict(), "config": cfg, "epoch": epoch,
                              "test_loss": best}, os.path.join(out, "best.pt"))
        cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
        runs.atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict() if sched else None, "epoch": epoch,
                          "config": cfg, "history": history, "best_test_loss": best,
                          "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng}},
                         os.path.join(out, "checkpoint.pt"))
    return history


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, ckpt = resolve(argv)
        pick_device(cfg["device"])
    except ValueError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse: --help, or a malformed flag (already printed)
        return e.code
    try:
        run(cfg, ckpt)
    except data.DataError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"train.py: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ntrain.py: interrupted; the last finished epoch is saved. Resume with: "
              f"python train.py --resume {cfg['out']}", file=sys.stderr)
        return 130
    print(f"Run folder: {cfg['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
