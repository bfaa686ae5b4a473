"""Metrics and figures for one run or a comparison of runs, rebuilt from the run folders.

    python evaluate.py runs/vae-mnist-20261120-101500
    python evaluate.py runs/ae-cifar10 runs/vae-cifar10 runs/vae-reg-cifar10 --out figures/
    python evaluate.py 'runs/vae-mnist-*'                           # a glob, or a folder of runs
    python evaluate.py RUN --iw-samples 1000                        # and the likelihood (minutes)

Each run: metrics.json in its folder (measure.py: the numbers and their units), a markdown
row on stdout and in <out>/table.md, figures in --out (compare.py: those of several runs).
"""
import os
import sys

import torch

import anomaly
import data
import features
import figures
import metrics
import models
import runs
import samplers
import train
from tables import group_table, table
from compare import curves, side_by_side
from measure import autoencoder_measures, factor_metrics, measure, save_metrics, test_inputs
from config import pick_device, saved_config
from flags import Help, Parser

__all__ = ["autoencoder_measures", "build_parser", "load_run", "main", "measure",  # used
           "factor_metrics", "metrics", "test_inputs"]  # elsewhere (tests patch metrics)
LIMITS = {"iw_samples": (0, 100_000), "chunk": (1, 65_536), "n": (1, 100),  # above: hours of
          "fid_samples": (0, 1_000_000), "gmm_components": (1, 1000),      # work, or GB figures
          "two_stage_epochs": (1, 10_000)}


def build_parser():
    p = Parser(prog="evaluate.py", description="Metrics and figures for train.py run folders.",
               formatter_class=Help)
    a = p.add_argument
    a("runs", nargs="+", metavar="RUN", help="run folders, globs, or folders holding runs")
    a("--out", default=None, help="folder for figures and table.md (default: <run>/eval for one run, "
      "figures/ for several)")
    a("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    a("--iw-samples", type=int, default=0, help="K of the importance-sampled likelihood (a tighter bound "
      "than the test loss; 1000 for numbers to compare with papers, minutes on a CPU; default: 0, skipped)")
    a("--fid-samples", type=int, default=10000, help="samples per run for FID, KID, precision and recall "
      "against the test images (0 skips them)")
    a("--inception-weights", default="download", help="Inception v3 for RGB data's FID: download "
      "(torchvision's ImageNet weights, once), a PATH to their state dict (offline; also for grey data), "
      "or none")
    a("--chunk", type=int, default=1024, help="images x samples decoded at once (bounds memory)")
    a("--n", type=int, default=10, help="images per figure row (samples: an n x n grid)")
    a("--seed", type=int, default=0, help="seeds every sample drawn in evaluation")
    a("--sampler", default="prior", help="comma-separated, each measured and drawn: prior (the model's), gmm "
      "(a Gaussian mixture fitted to the training codes: Ghosh et al. 2020) or two-stage (a second VAE "
      "trained on them: Dai & Wipf 2019); metrics suffixed _gmm, _two_stage")
    a("--gmm-components", type=int, default=10, help="K of --sampler gmm (full covariances)")
    a("--two-stage-epochs", type=int, default=50, help="epochs of --sampler two-stage's second VAE")
    a("--weights", default="last", help="last (checkpoint.pt) or best (best.pt, lowest validation loss; "
      "runs with a validation split)")
    a("--partial", action="store_true", help="evaluate a run that has not finished its epochs")
    a("--data-root", default=None, help="dataset folder (default: the run's own --data-root)")
    a("--no-download", dest="download", action="store_false", help="never download datasets")
    a("--no-figures", dest="figures", action="store_false", help="metrics only")
    a("--mig-code", default="mean", choices=("mean", "sample"), help="dSprites' MIG of the posterior mean "
      "(disentanglement_lib's) or of one draw of q(z|x) per image")
    a("--mig-factors", default=None, help="dSprites' MIG over these factors only, comma-separated (Chen et "
      "al.'s four: scale,orientation,x,y; default: all five)")
    return p


def load_run(run_dir, weights="last", partial=False, quiet=True):
    """(config, model on the CPU, history rows, epoch, whether the weights are that epoch's)
    from a run folder, or one-line ValueError. quiet=False: notes are printed."""
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir}: no such run folder")
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise ValueError(f"{run_dir}: not a run folder (no config.json); pass a folder written by train.py")
    cfg = saved_config(run_dir, train.build_parser())
    if not os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
        raise ValueError(f"{run_dir}: it stopped before saving anything (no checkpoint.pt); start it "
                         f"again with --out {run_dir} (the folder may be reused) and its flags (config.json, "
                         f"\"command\")")
    ckpt = runs.load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    epoch, history = ckpt["epoch"], ckpt["history"]
    if epoch == 0:
        raise ValueError(f"{run_dir}: stopped inside its first epoch, so no epoch has ended to "
                         f"evaluate; finish it with: python train.py --resume {run_dir}")
    if epoch < cfg["epochs"] and not partial:
        raise ValueError(f"{run_dir}: unfinished ({epoch} of {cfg['epochs']} epochs); finish it with "
                         f"python train.py --resume {run_dir}, or pass --partial to evaluate epoch {epoch}")
    logged = weights == "best" or not ckpt.get("mid_epoch")  # else stopped inside an epoch
    if not logged and not quiet:
        print(f"{run_dir}: its last weights are from step {ckpt['mid_epoch']['step']} of epoch "
              f"{epoch + 1}; the logged losses are epoch {epoch}'s")
    if weights == "best" and not any("val_loss" in row for row in history):  # no validation split
        raise ValueError(f"{run_dir} has no validation split (--val-split): its weights are not chosen (a "
                         f"best.pt of an older version was chosen on the test split); train with "
                         f"--val-split 0.1 (say) to have best weights")
    if weights == "best":
        ckpt = runs.load_checkpoint(os.path.join(run_dir, "best.pt"))
    model = models.from_config(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        lines = [line.strip() for line in str(e).strip().splitlines()]
        first = (lines[1] if len(lines) > 1 else lines[0])[:140]  # line 0 is a header
        raise ValueError(f"{run_dir}: the checkpoint does not match config.json ({first}); "
                         f"the folder mixes two runs") from None
    return cfg, model, history, ckpt["epoch"], logged


def check_writable(paths):
    """ValueError unless each path (a folder, made if missing) can be written: found before
    any work, not after it (metrics.json goes into each run folder, figures into --out)."""
    for path in paths:
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"--out {path} is a file; choose a folder")
        parent = os.path.abspath(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write to {parent}: permission denied; "
                             + ("pass --out a writable folder" if parent != os.path.abspath(path)
                                or not os.path.isfile(os.path.join(path, "config.json")) else
                                "copy the run folder somewhere writable and evaluate the copy"))


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        for flag, (low, high) in LIMITS.items():
            if not low <= (value := getattr(args, flag)) <= high:
                raise ValueError(f"--{flag.replace('_', '-')} must be in [{low}, {high}], got {value}")
        if 0 < args.fid_samples < 10:
            raise ValueError(f"--fid-samples must be 0 (skipped) or at least 10, got {args.fid_samples}")
        args.sampler = args.sampler.split(",")
        if unknown := [s for s in args.sampler if s not in samplers.SAMPLERS]:
            raise ValueError(f"unknown --sampler {unknown[0]!r}; use {', '.join(samplers.SAMPLERS)} (comma-separated)")
        if args.weights not in ("last", "best"):
            raise ValueError(f"unknown --weights {args.weights!r}; use last or best")
        device, dirs = pick_device(args.device), runs.find_runs(args.runs)
        for d in dirs:  # every run checked before any work; each loaded again when its turn comes
            load_run(d, args.weights, args.partial)
        out = args.out or (os.path.join(dirs[0], "eval") if len(dirs) == 1 else "figures")
        check_writable(dirs + [out])
        names = [os.path.basename(d) for d in dirs]
        names = [f"{nm}-{i + 1}" if names.count(nm) > 1 else nm for i, nm in enumerate(names)]
        print(f"Device: {device}; {len(dirs)} run(s); figures in {out}")
        if args.iw_samples == 0:
            print("The importance-sampled likelihood (nll_iw) is skipped by default; --iw-samples "
                  "1000 adds it (minutes on a CPU)")
        evaluate(dirs, names, out, device, args)
    except ValueError as e:  # a bad flag or run; data that cannot be read, a run changed meanwhile
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print(f"evaluate.py: error: out of memory on {device}; lower --chunk (now {args.chunk}), "
              f"or use --device cpu", file=sys.stderr)
        return 1
    except (runs.DiskFull, OSError) as e:
        if not isinstance(e, runs.DiskFull) and not runs.full_disk(e):
            raise
        print(f"evaluate.py: error: no space left on device ({e}); free some space and run it "
              f"again", file=sys.stderr)
        return 1
    return 0


def load_data(cfg, args, device, keep):
    """The run's dataset split as train.py split it; keep: the classes kept (None: all)."""
    return data.load(cfg["dataset"], args.data_root or cfg["data_root"], device, args.download,
                     size=cfg["image_size"], channels=cfg["channels"], skip_bad=cfg["skip_bad_images"],
                     val_split=cfg["val_split"], keep=keep)


def splits_for(cfg, run_dir, args, device, loaded):
    """(splits, key) of the data a run was trained on (with --classes: of those classes),
    loaded once per key (into `loaded`), with a warning when they are not those data."""
    kept = data.kept_classes(cfg)
    key = (cfg["dataset"], args.data_root or cfg["data_root"], cfg["image_size"],
           cfg["channels"], cfg["val_split"], None if kept is None else tuple(kept))
    if key not in loaded:
        loaded[key] = (splits := load_data(cfg, args, device, kept)), data.identity(splits)
    if cfg.get("data") not in (None, loaded[key][1]):
        print(f"{run_dir}: warning: the data under {key[1]} are not those it was trained "
              f"on (their sizes or hash differ); its numbers are on these data")
    return loaded[key][0], key


def evaluate(dirs, names, out, device, args):
    """Measure each run in turn (one model in memory at a time), write its metrics.json and
    figures; then the comparison figures and the table."""
    loaded, spaces, done = {}, {}, {}  # dataset key: (splits, identity), its feature spaces
    for name, run_dir in zip(names, dirs):
        cfg, model, history, epoch, logged = load_run(run_dir, args.weights, args.partial, False)
        splits, key = splits_for(cfg, run_dir, args, device, loaded)
        model.to(device).eval()
        print(f"{run_dir}: {cfg['model']} on {cfg['dataset']}, epoch {epoch} ({args.weights} weights)", flush=True)
        m, codes, per_image = measure(model, cfg, splits, args, history, epoch)
        draws = samplers.build(args.sampler, model, splits["train"], cfg["output"], args.gmm_components,
                               args.two_stage_epochs, args.seed)
        folder = out if len(dirs) == 1 else os.path.join(out, name)
        if key[-1] is not None:  # trained on some classes: the others are the anomalies
            m.update(anomaly.detect(model, cfg, splits, codes, per_image, run_dir,
                                    folder if args.figures else None, name, args.n))
        if data.ground_truth(cfg["dataset"], splits) is not None:
            if model.latent_dim < 2:  # MIG and SAP compare a factor's two best units
                print(f"{run_dir}: a code of one unit: no disentanglement metrics")
            else:
                m.update(factor_metrics(model, cfg, splits, args.seed, args.mig_code,
                                        args.mig_factors and args.mig_factors.split(",")))
        if args.fid_samples and key not in spaces:  # a domain network learns every class
            spaces[key] = features.spaces_for(cfg, splits if key[-1] is None else load_data(
                cfg, args, device, None), key[1], device, args.inception_weights)
        if args.fid_samples and spaces[key]:
            m.update(features.sample_quality(model, cfg, splits["test"], spaces[key], args.fid_samples,
                                             args.seed, draws))
        done[name] = run = dict(cfg=cfg, m=save_metrics(m, run_dir, cfg, epoch, logged, key[1], args),
                                history=runs.read_history(run_dir, history), kind=model.LOSS)
        if args.figures:
            os.makedirs(folder, exist_ok=True)
            run["drawn"] = draw(model, cfg, splits["test"], run["m"], codes, run["history"], name, folder, args,
                                draws)
        del model, codes, draws  # one run's model in memory at a time (each draw holds it)
    os.makedirs(out, exist_ok=True)
    if args.figures and len(dirs) > 1:
        side_by_side(done, out)
    rows = [(k, r["m"]) for k, r in done.items()]
    grouped = group_table(rows, {k: r["cfg"] for k, r in done.items()})  # the runs that differ in seeds
    text = table(rows) + (f"\n\n{grouped}" if grouped else "")
    runs.atomic_save(text + "\n", os.path.join(out, "table.md"))
    print(text)


@torch.no_grad()
def draw(model, cfg, split, m, codes, history, name, out, args, draws):
    """The figures of one run, into folder `out`; returns its n test images, their
    reconstructions and its first sampler's samples (None: none drawn), for the comparison."""
    n, code, classes = args.n, model.CODE, cfg.get("classes")
    x, target, y = test_inputs(split, cfg["output"], cfg["noise"], 2 * n)
    clean = data.to_unit(target, cfg["output"])
    recon = data.to_unit(model.reconstruct(x, y), cfg["output"])
    path = lambda f: os.path.join(out, f)  # noqa: E731
    figures.reconstructions(clean[:n], {name: recon[:n]}, path("reconstructions.png"),
                            f"{name}: test images and their reconstructions ({code})")
    if cfg["noise"]:
        figures.denoising(data.to_unit(x, cfg["output"])[:n], recon[:n], clean[:n], path("denoising.png"))
    figures.latent_scatter(codes, split[1], path("latent.png"), f"{name}: test codes ({code})", classes)
    pairs = min(4, x.shape[0] // 2)
    figures.interpolations(model, x[:pairs], x[-pairs:], n, path("interpolation.png"),
                           "kl_per_dim" in m,  # slerp too, for a Gaussian prior's codes
                           y[:pairs], y[-pairs:], f"{name}: interpolation between the codes of "
                           f"two test images ({code})", (clean[:pairs], clean[-pairs:]))
    sampled = [figures.samples(model, n, path("samples.png" if s == "prior" else f"samples-{s}.png"),
                               f"{name}: samples from the {s}" + ("" if s == "prior" else " sampler"),
                               torch.Generator().manual_seed(args.seed), classes, d) for s, d in draws.items()]
    sampled = next((s for s in sampled if s is not None), None)  # None: no prior (an AE) and no other
    if codes.shape[1] == 2 and model.default_labels(1) is None:  # (a CVAE: one per class)
        figures.manifold(model, n, path("manifold.png"), f"{name}: decodes over a grid of the "
                         f"code (covering 99% of the test codes)", codes, y[:1])
    center, spread = codes.mean(0).cpu(), codes.std(0).cpu()  # each unit over its test spread
    order = spread.argsort(descending=True)[:min(8, len(spread))].tolist()
    rows = [f"{model.UNIT}{d + 1} (sd {spread[d]:.2f})" for d in order]
    if "kl_per_dim" in m:
        figures.kl_bars({name: torch.tensor(m["kl_per_dim"])}, path("kl_per_dim.png"))
    if "mutual_info" in m:  # a dataset with factors: name each traversed unit by its factor
        share = torch.tensor(m["mutual_info"]) / torch.tensor(m["factor_entropy"]).clamp_min(1e-12)
        rows = [f"{r}: {m['factor_names'][share[d].argmax()]} ({share[d].max():.2f})"
                for r, d in zip(rows, order)]
        figures.factor_heatmap(m["mutual_info"], m["factor_entropy"], m["factor_names"],
                               path("factors.png"), f"{name}: mutual information of each unit "
                               f"({code}) with each factor, over the factor's entropy", model.UNIT)
    figures.traversal(model, x, order, center.to(x.device), spread.to(x.device), n, path("traversal.png"),
                      f"{name}: one dimension at a time, in standard deviations of the test codes", rows,
                      y[:1], clean)
    curves({name: history}, path, {name: model.LOSS})
    return clean[:n], recon[:n], sampled


if __name__ == "__main__":
    sys.exit(main())
