"""Tiny datasets in each dataset's real on-disk format, read by the real torchvision code.

MNIST and Fashion-MNIST: uncompressed IDX files in <root>/<Name>/raw, which torchvision
takes as already downloaded. CIFAR-10: the `cifar-10-batches-py` pickles. torchvision
checks those against the official md5 sums, which tiny files cannot match, so the
`tiny_data` fixture turns that one check off; everything after it (unpickling, reshaping
to NHWC) is torchvision's own code. Also the helpers several test files share: a small run's
flags (args_for), its last epoch (epoch_of), and the check that an error is one line (one_line).
"""
import os
import pickle
import signal
import struct
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

N_TRAIN, N_TEST = 60, 24
SMALL = ["--batch-size", "16", "--latent-dim", "4", "--hidden", "32", "--log-interval", "1000"]


def args_for(root, out, *extra):
    """train.py's words for a small, fast run of the data at root into out."""
    return ["--data-root", root, "--out", out, *SMALL, *extra]


def one_line(err, *words):
    """The error output is one line holding every word; returns it."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


def epoch_of(run_dir):
    """The last finished epoch the run's checkpoint.pt holds."""
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["epoch"]


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")
    parser.addoption("--e2e", action="store_true", help="also run the end-to-end tests (e2e: "
                     "whole sweeps, reproductions, torchrun, the notebook; about 7 minutes)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: skipped unless --run-slow is given")
    config.addinivalue_line("markers", "e2e: an end-to-end test of 7 s or more, skipped "
                            "unless --e2e is given (.ci/run runs them as its second stage)")


def pytest_collection_modifyitems(config, items):
    for marker, option in (("slow", "--run-slow"), ("e2e", "--e2e")):
        if not config.getoption(option):
            skip = pytest.mark.skip(reason=f"{marker}: run with {option}")
            for item in items:
                if marker in item.keywords:
                    item.add_marker(skip)  # N_TRAIN a multiple of 5: CIFAR-10 has five training batches


def images_for(n, shape, seed):
    """Blurry blobs rather than pure noise, so a few steps of training lower the loss."""
    rng = np.random.default_rng(seed)
    h, w = shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(h / 4, 3 * h / 4, (2, n, 1, 1))
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (h / 6) ** 2))  # (n, h, w)
    img = np.repeat(blob[:, None], shape[0], axis=1) * rng.uniform(0.5, 1, (n, shape[0], 1, 1))
    return (img * 255).astype(np.uint8)


def write_idx(path, array):
    """IDX format (LeCun): magic 0x08 (ubyte) + ndim, big-endian int32 sizes, raw bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_mnist(root, folder="MNIST", n_train=N_TRAIN, n_test=N_TEST):
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images_for(n, (1, 28, 28), seed)[:, 0])
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), np.arange(n) % 10)


def write_cifar(root, n_train=N_TRAIN, n_test=N_TEST):
    """Five training batches and a test batch, rows of 3072 bytes (1024 R, 1024 G, 1024 B)."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    per = n_train // 5
    batches = [(f"data_batch_{i + 1}", per, 10 + i) for i in range(5)] + [("test_batch", n_test, 20)]
    for name, n, seed in batches:
        x = images_for(n, (3, 32, 32), seed).reshape(n, 3072)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": x, "labels": [int(v) for v in np.arange(n) % 10],
                         "batch_label": name, "filenames": [f"{i}.png" for i in range(n)]}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"]}, f)


@pytest.fixture(autouse=True)
def sigint_as_in_a_terminal():
    """SIGINT raises KeyboardInterrupt, as in a terminal, also when the suite was started in
    the background (`cmd &`), where SIGINT starts ignored and so would stay ignored in the
    processes the tests start (train.py keeps an ignored signal ignored, on purpose)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """A data root holding tiny MNIST, Fashion-MNIST and CIFAR-10; returns its path."""
    import torchvision.datasets.cifar as cifar
    root = str(tmp_path / "data")
    write_mnist(root, "MNIST")
    write_mnist(root, "FashionMNIST")
    write_cifar(root)
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    return root
