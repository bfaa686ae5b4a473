"""Datasets from one registry (DATASETS: name -> loader) as uint8 (N, C, H, W) tensors on the device: train,
test (and val) splits, int64 labels, class names (None: no labels), fitted by --image-size and --channels;
and their batches, slices of a torch.randperm order."""
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch

import augment
import dsprites
import torchvision_data
from images import DataError, fit, folder_header, npz_header, read_celeba, read_folder, read_npz

TEST_NOISE_SEED = 0  # the test split's corruption is the same in every run, whatever --seed
NOISE_KINDS = ("gaussian", "saltpepper", "mask")


@dataclass
class Record:
    """A loader's answer: stored image shape (C, H, W), class names (None: no labels), when read the splits
    {"train": (images, labels), "test": ...[, "val"]}; own_val: the dataset has its own val split;
    factors: the ground truth's class where the generative factors are known (dsprites.GroundTruth)."""
    shape: tuple
    classes: list = None
    splits: dict = None
    own_val: bool = False
    factors: type = None


def torchvision_loader(name, shape, classes):
    """A loader of one of torchvision's datasets (torchvision_data.py)."""
    def load(path, root, download, size, channels, skip_bad, read):
        return Record(shape, classes, torchvision_data.read(name, root, download, shape, len(classes)) if read
                      else None)
    return load


def celeba(path, root, download, size, channels, skip_bad, read):  # 64x64: read_celeba's crop and resize
    return Record((3, 64, 64), None, read_celeba(root, download, size, channels, skip_bad) if read else None,
                  own_val=True)


def sprites(path, root, download, size, channels, skip_bad, read):
    if (size or 64) != 64 or (channels or 1) != 1:
        raise ValueError("dsprites is drawn at 64x64 in grey: drop --image-size and --channels")
    return Record((1, 64, 64), dsprites.SHAPES, dsprites.read(root) if read else None, factors=dsprites.GroundTruth)


def npz(path, root, download, size, channels, skip_bad, read):
    return Record(*npz_header(path), read_npz(path) if read else None)


def folder(path, root, download, size, channels, skip_bad, read):
    return Record(*folder_header(path), read_folder(path, size, channels, skip_bad) if read else None)


# --dataset NAME (or KIND:PATH, for npz and folder) -> loader(path, root, download, size, channels, skip_bad,
# read): a Record; read False: its shape and class names only (from headers, before any work).
DATASETS = {
    "mnist": torchvision_loader("mnist", (1, 28, 28), [str(d) for d in range(10)]),
    "fashion-mnist": torchvision_loader("fashion-mnist", (1, 28, 28), [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
        "Ankle boot"]),
    "cifar10": torchvision_loader("cifar10", (3, 32, 32), [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]),
    "celeba": celeba, "dsprites": sprites, "npz": npz, "folder": folder,
}
WITH_PATH = ("npz", "folder")
ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}


def canonical_name(name):
    """--dataset's value as DATASETS knows it (KIND:PATH with the paths expanded)."""
    kind, colon, path = name.partition(":")
    if colon and kind in WITH_PATH:
        if not path:
            raise ValueError(f"--dataset {name}: give a path, e.g. {kind}:~/my_images")
        return f"{kind}:{','.join(os.path.expanduser(p) for p in path.split(','))}"
    name = ALIASES.get(name.lower(), name.lower())
    if name not in DATASETS or name in WITH_PATH:
        names = [k + (":PATH" if k in WITH_PATH else "") for k in DATASETS]
        raise ValueError(f"unknown dataset {name!r}; use {', '.join(names[:-1])} or {names[-1]}")
    return name


def record(name, root="./data", download=True, size=None, channels=None, skip_bad=False, read=False):
    """The Record of --dataset NAME (read=False: its shape and classes only)."""
    kind, _, path = canonical_name(name).partition(":")
    return DATASETS[kind](path, root, download, size, channels, skip_bad, read)


def describe(name, size=None, channels=None, val_split=0):
    """(image shape (C, H, W) as --image-size and --channels make it, class names or None), from headers
    only; ValueError for --val-split where the dataset has its own."""
    header = record(name, size=size, channels=channels)
    if val_split and header.own_val:
        raise ValueError(f"--val-split: {name} has its own validation split (its official partition), used "
                         f"for best.pt; drop --val-split")
    channels = channels or header.shape[0]
    return ((channels, size, size) if size else (channels, *header.shape[1:])), header.classes


def load(name, root="./data", device="cpu", download=True, budget=float("inf"), size=None,
         channels=None, skip_bad=False, val_split=0, keep=None):
    """{"train": (images, labels), "test": ...[, "val"]}, each on `device` if its images fit `budget` bytes,
    else in host memory (pinned for a GPU) to copy a batch at a time; keep: the training split's classes."""
    name = canonical_name(name)
    read = record(name, root, download, size, channels, skip_bad, read=True).splits
    read = {split: (fit(images, size, channels) if torch.is_tensor(images) else images, labels)
            for split, (images, labels) in read.items()}
    if keep is not None:
        read["train"] = keep_classes(*read["train"], keep, name)
    if val_split and "val" not in read:
        read["train"], read["val"] = split_off(*read["train"], val_split)
    pin = torch.device(device).type == "cuda"
    return {split: (images.to(device), labels.to(device)) if fits(images, budget) else
            (images.pin_memory(), labels.pin_memory()) if pin else (images, labels)
            for split, (images, labels) in read.items()}


def for_run(cfg, device, budget):
    """A run's splits (--classes kept, --val-split held out) and copy_to: {split: None when it lives on the
    device, else the device its batches are copied to from host memory (said in a line)}."""
    splits = load(cfg["dataset"], cfg["data_root"], device, cfg["download"], budget, cfg["image_size"],
                  cfg["channels"], cfg["skip_bad_images"], cfg["val_split"], kept_classes(cfg))
    copy_to = {name: None if fits(images, budget) else device for name, (images, _) in splits.items()}
    for name, (images, _) in splits.items():
        if copy_to[name] is not None:
            print(f"Data: the {name} split ({images.numel() / 2**20:.0f} MB) is over the {budget / 2**20:.0f} "
                  f"MB budget: kept in host memory{' (pinned)' if images.is_pinned() else ''}, copied a "
                  f"batch at a time")
    if "val" in splits:  # --val-split's, or the dataset's own (celeba): best.pt is chosen on it
        print(f"Data: {len(splits['train'][0])} training, {len(splits['val'][0])} validation and "
              f"{len(splits['test'][0])} test images")
    return splits, copy_to


def identity(splits):
    """{split: [images, hash]} for config.json: a resume on other data is noticed (blake2b of 47 MB: 0.1 s)."""
    out = {}
    for split, (images, labels) in splits.items():
        h = hashlib.blake2b(digest_size=8)
        for t in (images, labels):
            h.update(np.ascontiguousarray(t.cpu().numpy()))
        out[split] = [len(images), h.hexdigest()]
    return out


def kept_classes(cfg):
    """The class indices a run trains on (--classes, or all but --exclude-classes); None: all."""
    if cfg.get("train_classes") is not None:
        return list(cfg["train_classes"])
    if cfg.get("exclude_classes") is not None:
        return [c for c in range(cfg["num_classes"]) if c not in cfg["exclude_classes"]]
    return None


def keep_classes(images, labels, keep, name="the data"):
    """(images, labels) of the classes in `keep` only."""
    index = torch.isin(labels, torch.tensor(keep, device=labels.device)).nonzero().squeeze(1)
    if not len(index):
        raise DataError(f"{name}: no training image is of class {', '.join(map(str, keep))}")
    return images[index], labels.index_select(0, index)  # images[...]: a Sprites stays positions


def ground_truth(name, splits):
    """The dataset's generative factors for disentanglement metrics (dsprites.GroundTruth), or None."""
    factors = record(name).factors
    return factors and factors(splits["train"][0], splits["train"][0].device)


def split_off(images, labels, size, seed=1):
    """(train, validation): `size` images (a count, or a fraction below 1) drawn with a fixed seed, whatever
    --seed, so every run of a comparison holds out the same."""
    n = len(images)
    count = round(size * n) if size < 1 else int(size)
    if not 1 <= count < n:
        raise DataError(f"--val-split {size} holds out {count} of the {n} training images; give a count in "
                        f"[1, {n - 1}] or a fraction in (0, 1)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(images.device)
    val, train = order[:count].sort().values, order[count:].sort().values
    return tuple((images[i], labels.index_select(0, i)) for i in (train, val))


def fits(images, budget):
    """Whether a split's images may sit on the device (a Sprites split is only its positions)."""
    return images.numel() * images.element_size() <= budget


def parse_noise(spec):
    """'gaussian:0.5' -> ('gaussian', 0.5); None or '' -> None."""
    if not spec:
        return None
    kind, _, level = spec.partition(":")
    try:
        level = float(level)
    except ValueError:
        level = None
    if kind not in NOISE_KINDS or level is None or not 0 <= level < float("inf"):
        raise ValueError(f"bad --noise {spec!r}; use gaussian:STD, saltpepper:P or mask:P (e.g. gaussian:0.5)")
    if kind != "gaussian" and level > 1:
        raise ValueError(f"bad --noise {spec!r}: the fraction of pixels must be in [0, 1]")
    return kind, level


def to_range(x, output="sigmoid"):
    """[0, 1] images for a sigmoid decoder, [-1, 1] for a tanh decoder."""
    return x if output == "sigmoid" else x * 2 - 1


def to_unit(x, output="sigmoid"):
    """The inverse of to_range: back to [0, 1] pixels (for MSE, PSNR and pictures)."""
    return x if output == "sigmoid" else (x + 1) / 2


def eval_batches(split, output="sigmoid", noise=None, device=None, batch_size=1000):
    """An evaluation pass: a split's (input, target, label) batches in order, inputs with the test split's
    fixed corruption (TEST_NOISE_SEED) when noise is set."""
    return batches(*split, batch_size, output=output, noise=noise, noise_seed=TEST_NOISE_SEED, device=device)


def batches(images, labels, batch_size, shuffle=False, output="sigmoid", hflip=False, crop=False, noise=None,
            noise_seed=None, order=None, start=0, device=None):
    """Yield (input, target, label) batches (input: corrupted when noise is set). shuffle: a torch.randperm
    order from the global generator, or `order`; start: batches to skip (a mid-epoch resume); noise_seed:
    the corruption's own generator, the same every pass. device: for a split in host memory, each batch is
    gathered into one of two staging buffers (pinned for a GPU) and copied asynchronously: batch k + 1 is
    gathered during k's copy."""
    if shuffle and order is None:
        order = torch.randperm(images.shape[0], device=images.device)
    n = images.shape[0] if order is None else len(order)  # an order may be a shard of the split
    generator = torch.Generator(device=device or images.device).manual_seed(noise_seed) if (
        noise is not None and noise_seed is not None) else None
    buffers, copied = {}, {}
    for k, i in enumerate(range(start * batch_size, n, batch_size)):
        idx = order[i:i + batch_size] if order is not None else torch.arange(
            i, min(i + batch_size, n), device=images.device)
        if device is None:  # index_select: 10-20 times faster than images[idx] on a CPU
            x, y = images.index_select(0, idx), labels.index_select(0, idx)
        else:
            idx = idx.cpu()
            slot = (k % 2, len(idx))
            if slot in copied:
                copied[slot].synchronize()  # this buffer's previous copy has landed
            if slot not in buffers:
                buffers[slot] = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype,
                                            pin_memory=images.is_pinned())
            torch.index_select(images, 0, idx, out=buffers[slot])
            x = buffers[slot].to(device, non_blocking=True)
            y = labels.index_select(0, idx).to(device, non_blocking=True)
            if x.device.type == "cuda":
                copied[slot] = torch.cuda.Event()
                copied[slot].record()
            elif x.data_ptr() == buffers[slot].data_ptr():
                x = x.clone()  # the same device: never hand out the buffer itself
        x = augment.random_hflip(x) if hflip else x
        x = augment.random_crop(x) if crop else x
        clean = x.float().div_(255)  # in place: one allocation less than x.float() / 255
        noisy = augment.corrupt(clean, noise, generator) if noise is not None else clean
        yield to_range(noisy, output), to_range(clean, output), y
