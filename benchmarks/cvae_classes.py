"""Does the conditional VAE draw the class it is asked for? A classifier trained on the real
training split labels the samples of each class of `train.py --model cvae` runs.

    python train.py --model cvae --dataset mnist --epochs 10 --out runs/cvae-mnist
    python benchmarks/cvae_classes.py runs/cvae-mnist --data-root data

The classifier is the dataset's domain CNN of the sample-quality metrics (features.py:
trained once from a fixed seed on the training split, cached in <data root>/features/); its
accuracy on the real test split is printed first.
Then, for each run, --n samples z ~ N(0, I) of each class are decoded and labelled: the
share labelled as the class asked for, per class and overall. The classifier is trained
once per dataset and data root.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
import features  # noqa: E402
import flags  # noqa: E402
import models  # noqa: E402
import runs  # noqa: E402
import train  # noqa: E402
from config import saved_config  # noqa: E402


def main():
    p = argparse.ArgumentParser(formatter_class=flags.Help,
                                description=flags.description(__doc__))
    p.add_argument("runs", nargs="+", help="run folders of train.py --model cvae")
    p.add_argument("--data-root", default=None, help="dataset folder (default: each run's own)")
    p.add_argument("--n", type=int, default=1000, help="samples per class")
    p.add_argument("--seed", type=int, default=0, help="seeds the samples")
    args = p.parse_args()
    classifiers = {}
    for run in args.runs:
        cfg = saved_config(run, train.build_parser())
        model = models.from_config(cfg)
        model.load_state_dict(runs.load_checkpoint(os.path.join(run, "checkpoint.pt"))["model"])
        key = (cfg["dataset"], args.data_root or cfg["data_root"])
        if key not in classifiers:
            splits = data.load(cfg["dataset"], key[1], "cpu", download=False)
            net, info = features.domain_network(cfg["dataset"], key[1], splits, cfg["num_classes"])
            print(f"classifier for {cfg['dataset']}: the domain CNN {info['hash']}, test "
                  f"accuracy {info['test_accuracy']:.4f}", flush=True)
            classifiers[key] = net
        torch.manual_seed(args.seed)
        labels = torch.arange(cfg["num_classes"]).repeat_interleave(args.n)
        images = torch.cat([data.to_unit(model.sample(len(y), labels=y), cfg["output"])
                            for y in labels.split(1000)])
        with torch.no_grad():
            said = torch.cat([classifiers[key](x).argmax(1) for x in images.split(1000)])
        per_class = [(said[labels == k] == k).float().mean().item() for k in range(cfg["num_classes"])]
        names = cfg["classes"]
        print(f"{run} (epoch {runs.load_checkpoint(os.path.join(run, 'checkpoint.pt'))['epoch']}): "
              f"{sum(per_class) / len(per_class):.4f} of {len(labels)} samples labelled as the "
              f"class asked for; per class: "
              + ", ".join(f"{name} {a:.3f}" for name, a in zip(names, per_class)), flush=True)


if __name__ == "__main__":
    main()
