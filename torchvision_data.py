"""MNIST, Fashion-MNIST and CIFAR-10 as uint8 tensors, read by torchvision from its own layout
under the data root (downloaded where missing, when allowed); a file missing, damaged,
unreadable or of another dataset is one DataError saying what to do."""
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
    """One split as (uint8 images (N, C, H, W), int64 labels (N,)) on the CPU."""
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
        how = "could not be downloaded" if download else "download is off"
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else "no message"
        raise DataError(f"{name} {split} split missing or corrupted in "
                        f"{os.path.normpath(os.path.join(root, folder))} and {how} "
                        f"({type(e).__name__}: {reason}); place {files} there "
                        f"(README: offline use)") from None
    print(log.getvalue(), end="")
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # CIFAR: NHWC
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def unreadable(folder):
    """The first existing folder on the way to `folder` that cannot be listed, or None."""
    parts = os.path.normpath(folder).split(os.sep)
    for i in range(1, len(parts) + 1):  # the folders above it need only be entered, not listed
        path = os.sep.join(parts[:i]) or os.sep
        if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK if i == len(parts) else os.X_OK):
            return path
    return None


def corrupted_file(name, root, train):
    """The first file of a split that is present but damaged, said in words, or None: an IDX
    file's header must match its length, CIFAR-10's batches must unpickle, the archives
    must have torchvision's md5 sums."""
    cls = getattr(torchvision.datasets, TORCHVISION[name][0])
    md5_bad = lambda path, md5: os.path.isfile(path) and not tv_utils.check_integrity(path, md5)  # noqa
    if hasattr(cls, "base_folder"):  # CIFAR-10's pickled batches
        files = [(os.path.join(root, cls.base_folder, file), md5)
                 for file, md5 in (cls.train_list if train else cls.test_list)]
        for path, _ in files:
            try:
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        pickle.load(f, encoding="latin1")  # the official batches are plain dicts
            except Exception:
                return f"{path} is corrupted (it does not unpickle)"
        files.append((os.path.join(root, cls.filename), cls.tgz_md5))
        return next((f"{path} is corrupted (its md5 is not the official one)"
                     for path, md5 in files if md5_bad(path, md5)), None)
    for gz, md5 in cls.resources:
        path = os.path.join(root, cls.__name__, "raw", gz[:-3])
        if gz.startswith("train") != train:
            continue
        if os.path.isfile(path):
            with open(path, "rb") as f:
                magic = f.read(4)
                ndim = magic[3] if len(magic) == 4 else 0
                sizes = f.read(4 * ndim)
            if magic[:3] != b"\x00\x00\x08" or not ndim or len(sizes) != 4 * ndim:
                return f"{path} is corrupted (not an IDX file of bytes: bad header)"
            expected = 4 + 4 * ndim + math.prod(struct.unpack(f">{ndim}I", sizes))
            if os.path.getsize(path) != expected:
                return f"{path} is corrupted ({os.path.getsize(path)} bytes; its header promises {expected})"
        elif md5_bad(path + ".gz", md5):
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
