"""MNIST, Fashion-MNIST and CIFAR-10 as uint8 tensors, read by torchvision from its own
on-disk layout under the data root (downloaded where missing, when allowed); a file that is
missing, damaged, unreadable or of another dataset is one DataError saying what to do.
"""
import contextlib
import errno
import io
import math
import os
import pickle
import struct

import torch
import torchvision
from torchvision.datasets import utils as tv_utils

from images import DataError

IDX_FILES = ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
             "and t10k-labels-idx1-ubyte.gz")
# name -> (torchvision class, its folder under the data root, the files that must be there)
TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", IDX_FILES),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", IDX_FILES),
    "cifar10": ("CIFAR10", ".", "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/)"),
}


def read(name, root, download, shape, num_classes):
    """{"train": (images, labels), "test": ...} of a torchvision dataset, checked (check_splits)."""
    splits = {split: load_split(name, root, split == "train", download) for split in ("train", "test")}
    where = os.path.normpath(os.path.join(root, TORCHVISION[name][1]))
    check_splits(name, where, splits, shape, num_classes)
    return splits


def load_split(name, root="./data", train=True, download=True):
    """One split of a torchvision dataset as (uint8 images (N, C, H, W), int64 labels (N,))
    on the CPU."""
    cls, folder, files = TORCHVISION[name]
    split = "train" if train else "test"
    denied = unreadable(os.path.join(root, folder, "cifar-10-batches-py" if cls == "CIFAR10" else ""))
    log = io.StringIO()  # torchvision prints each download attempt; keep it for errors only
    try:
        if denied:
            raise PermissionError(errno.EACCES, "permission denied", denied)
        with contextlib.redirect_stdout(log):
            ds = getattr(torchvision.datasets, cls)(root, train=train, download=download)
    except Exception as e:  # torchvision raises RuntimeError, OSError or URLError offline
        try:
            denied = e.filename if isinstance(e, PermissionError) else None
            bad = not denied and corrupted_file(name, root, train)
        except PermissionError as p:
            denied = p.filename
        if denied:
            raise DataError(f"{name} {split} split: {denied}: permission denied; check its "
                            f"permissions (chmod -R u+rwX), or pass another --data-root") from None
        if bad:
            raise DataError(f"{name} {split} split: {bad}; delete it and place the official "
                            f"file there, or let it download (README: offline use)") from None
        where = os.path.normpath(os.path.join(root, folder))
        how = "could not be downloaded" if download else "download is off"
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else "no message"
        raise DataError(f"{name} {split} split missing or corrupted in {where} and {how} "
                        f"({type(e).__name__}: {reason}); place {files} there "
                        f"(README: offline use)") from None
    if log.getvalue():
        print(log.getvalue(), end="")
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # CIFAR: NHWC
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def unreadable(folder):
    """The first existing folder on the way to `folder` that cannot be listed, or None."""
    parts = os.path.normpath(folder).split(os.sep)
    for i in range(1, len(parts) + 1):  # the folders above it need only be entered, not listed
        path = os.sep.join(parts[:i]) or os.sep
        need = os.R_OK | os.X_OK if i == len(parts) else os.X_OK
        if os.path.isdir(path) and not os.access(path, need):
            return path
    return None


def corrupted_file(name, root, train):
    """The first file of a split that is present but damaged, said in words, or None.

    MNIST-style IDX files: the header's sizes must match the file's length; their .gz
    archives and CIFAR-10's must match torchvision's md5 sums; CIFAR-10 batches must unpickle.
    """
    cls = getattr(torchvision.datasets, TORCHVISION[name][0])
    if hasattr(cls, "base_folder"):  # CIFAR-10's pickled batches
        folder = os.path.join(root, cls.base_folder)
        present = [(os.path.join(folder, file), md5) for file, md5 in
                   (cls.train_list if train else cls.test_list)
                   if os.path.isfile(os.path.join(folder, file))]
        for path, _ in present:
            try:
                with open(path, "rb") as f:
                    pickle.load(f, encoding="latin1")  # the official batches are plain dicts
            except Exception:
                return f"{path} is corrupted (it does not unpickle)"
        for path, md5 in present:
            if not tv_utils.check_integrity(path, md5):
                return f"{path} is corrupted (its md5 is not the official one)"
        archive = os.path.join(root, cls.filename)
        if os.path.isfile(archive) and not tv_utils.check_integrity(archive, cls.tgz_md5):
            return f"{archive} is corrupted (its md5 is not the official one)"
        return None
    raw = os.path.join(root, cls.__name__, "raw")
    for gz, md5 in cls.resources:
        if gz.startswith("train") != train:
            continue
        path = os.path.join(raw, gz[:-3])
        if os.path.isfile(path):
            with open(path, "rb") as f:
                magic = f.read(4)
                ndim = magic[3] if len(magic) == 4 else 0
                sizes = f.read(4 * ndim)
            if magic[:3] != b"\x00\x00\x08" or not ndim or len(sizes) != 4 * ndim:
                return f"{path} is corrupted (not an IDX file of bytes: bad header)"
            expected = 4 + 4 * ndim + math.prod(struct.unpack(f">{ndim}I", sizes))
            if os.path.getsize(path) != expected:
                return (f"{path} is corrupted ({os.path.getsize(path)} bytes; its header "
                        f"promises {expected})")
        elif os.path.isfile(path + ".gz") and not tv_utils.check_integrity(path + ".gz", md5):
            return f"{path}.gz is corrupted (its md5 is not the official one)"
    return None


def check_splits(name, where, splits, shape, k):
    """DataError unless each split has one label per image, in range, and images of the
    dataset's shape: files that each read well can still not belong together."""
    for split, (images, labels) in splits.items():
        if tuple(images.shape[1:]) != shape:
            bad = (f"its images are {'x'.join(map(str, images.shape[1:]))} (C x H x W), not "
                   f"{'x'.join(map(str, shape))}")
        elif len(labels) != len(images):
            bad = f"it has {len(images)} images but {len(labels)} labels"
        elif len(labels) and not 0 <= labels.min() <= labels.max() < k:
            bad = f"its labels reach {labels.max().item()}, outside 0..{k - 1}"
        else:
            continue
        raise DataError(f"{name} {split} split in {where}: {bad}; its files do not belong "
                        f"together: place the official files there (README: offline use)")
