"""Sample-quality metrics (metrics.fid, kid, manifold_metrics, classifier_view) against
closed forms and hand-made sets, the feature networks and their cache (features.py), and
evaluate.py's numbers with the hash and counts they carry."""
import json
import math
import os

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

import data
import evaluate
import features
import metrics
import train

SHARED_MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "MNIST")


def gaussian(n, dim, seed, shift=0.0, scale=1.0):
    """n draws of one correlated Gaussian per dim (seed: which draws), shifted and scaled."""
    mix = torch.randn(dim, dim, generator=torch.Generator().manual_seed(dim)) / dim ** 0.5 + torch.eye(dim)
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g) @ mix) * scale + shift


def test_fid_is_the_closed_form_with_scipy_sqrtm():
    a, b = gaussian(400, 8, 1).double(), gaussian(300, 8, 2, shift=0.5, scale=1.5).double()
    m1, m2 = a.mean(0).numpy(), b.mean(0).numpy()
    s1, s2 = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
    assert metrics.fid(a, b) == pytest.approx(expected, rel=1e-8)
    assert metrics.fid(b, a) == pytest.approx(expected, rel=1e-8)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    a = gaussian(500, 16, 3)
    assert abs(metrics.fid(a, a)) < 1e-8
    shifts = [metrics.fid(a, a + s) for s in (0.1, 0.5, 1.0)]
    assert shifts == pytest.approx([16 * s * s for s in (0.1, 0.5, 1.0)], rel=1e-6)  # ||m1 - m2||^2


def test_kid_of_one_distribution_is_zero_within_its_std_and_not_of_two():
    a, b = gaussian(2000, 8, 4), gaussian(2000, 8, 5)  # the same distribution, other draws
    mean, std = metrics.kid(a, b, subsets=50, size=500)
    assert abs(mean) < 3 * std
    far_mean, far_std = metrics.kid(a, gaussian(2000, 8, 5, shift=1.0), subsets=50, size=500)
    assert far_mean > 5 * far_std and far_mean > 10 * abs(mean)


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
    a, b = gaussian(30, 4, 6).double(), gaussian(30, 4, 7, shift=0.3).double()
    k = lambda x, y: (x @ y / 4 + 1) ** 3  # noqa: E731
    n = len(a)
    aa = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    bb = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    ab = sum(k(a[i], b[j]) for i in range(n) for j in range(n)) / (n * n)
    mean, std = metrics.kid(a, b, subsets=3, size=30)  # each subset is the whole set
    assert mean == pytest.approx((aa + bb - 2 * ab).item(), rel=1e-9) and std < 1e-9


def test_kid_matches_sklearns_polynomial_kernel_on_the_same_subsets():
    import sklearn.metrics.pairwise
    a, b = gaussian(700, 16, 8).double(), gaussian(500, 16, 9, shift=0.2).double()
    gen, values = torch.Generator().manual_seed(0), []
    for _ in range(5):  # the subsets metrics.kid draws with seed 0
        x = a[torch.randperm(len(a), generator=gen)[:400]].numpy()
        y = b[torch.randperm(len(b), generator=gen)[:400]].numpy()
        k = lambda p, q: sklearn.metrics.pairwise.polynomial_kernel(p, q, degree=3, gamma=1 / 16, coef0=1)  # noqa: E731
        kxx, kyy, m = k(x, x), k(y, y), len(x)
        values.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * k(x, y).mean())
    mean, std = metrics.kid(a, b, subsets=5, size=400)
    assert mean == pytest.approx(np.mean(values), rel=1e-4)
    assert std == pytest.approx(np.std(values, ddof=1), rel=1e-4)


def brute_force(real, fake, k_pr=3, k_dc=5):
    """The four definitions, one point at a time."""
    def radius(x, k):
        return [sorted(torch.dist(p, q).item() for q in x)[k] for p in x]  # [0] is p itself
    r3, r5, f3 = radius(real, k_pr), radius(real, k_dc), radius(fake, k_pr)
    inside = lambda p, x, r: [torch.dist(p, q).item() <= rq for q, rq in zip(x, r)]  # noqa: E731
    precision = sum(any(inside(p, real, r3)) for p in fake) / len(fake)
    recall = sum(any(inside(q, fake, f3)) for q in real) / len(real)
    hits = [inside(p, real, r5) for p in fake]
    density = sum(map(sum, hits)) / (k_dc * len(fake))
    coverage = sum(any(h[i] for h in hits) for i in range(len(real))) / len(real)
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_manifold_metrics_are_their_definitions():
    real, fake = gaussian(60, 3, 8), gaussian(45, 3, 9, shift=0.7, scale=1.3)
    found = metrics.manifold_metrics(real, fake, chunk=16)  # chunks do not change the numbers
    assert found == pytest.approx(brute_force(real, fake), abs=1e-9)


def test_precision_and_recall_of_gaussians_with_a_known_overlap():
    """Real: two far clusters of equal size. Fakes drawn as the reals are: precision, recall
    and coverage near 1 (a k-NN ball misses a few points in the tails) and density near 1.
    Fakes from one cluster only: as precise, but half the recall and the coverage. Fakes
    half from that cluster and half from nowhere near: half the precision."""
    real = torch.cat([gaussian(1000, 2, 10), gaussian(1000, 2, 11, shift=50.0)])
    near = lambda seed, shift=0.0: gaussian(1000, 2, seed, shift=shift)  # noqa: E731
    same = metrics.manifold_metrics(real, torch.cat([near(14), near(15, 50.0)]))
    assert min(same["precision"], same["recall"], same["coverage"]) > 0.9
    assert 0.85 < same["density"] < 1.15
    one = metrics.manifold_metrics(real, torch.cat([near(12), near(13)]))
    assert one["precision"] == pytest.approx(same["precision"], abs=0.02)
    assert one["recall"] == pytest.approx(same["recall"] / 2, abs=0.02)
    assert one["coverage"] == pytest.approx(same["coverage"] / 2, abs=0.02)
    half = metrics.manifold_metrics(real, torch.cat([near(12), near(13, -50.0)]))
    assert half["precision"] == pytest.approx(same["precision"] / 2, abs=0.02)


def test_classifier_view():
    uniform = F.one_hot(torch.arange(100) % 10, 10).float() * 20  # confident, every class alike
    view = metrics.classifier_view(uniform, torch.arange(100) % 10)
    assert view["confidence"] == pytest.approx(1, abs=1e-6)
    assert view["class_entropy"] == pytest.approx(math.log(10)) and view["class_match"] == 1
    one = metrics.classifier_view(torch.zeros(50, 4).index_fill_(1, torch.tensor([2]), 1.0))
    assert one["class_entropy"] == 0 and "class_match" not in one
    assert one["confidence"] == pytest.approx(math.e / (math.e + 3))


def tiny_splits(n=60, seed=0, label_count=3):
    """Bright squares whose position is the label, on dark noise: learnable in seconds."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 16, 16, generator=g) * 60).to(torch.uint8)
    labels = torch.arange(n) % label_count
    for i, y in enumerate(labels.tolist()):
        images[i, 0, 2:7, 2 + 4 * y:7 + 4 * y] = 255
    return {"train": (images, labels), "test": (images[: n // 2].clone(), labels[: n // 2].clone())}


def test_the_domain_network_is_cached_reused_and_rebuilt_when_its_data_change(tmp_path, monkeypatch):
    said = []
    splits = tiny_splits()
    net, info = features.domain_network("npz:mine.npz", str(tmp_path), splits, 3, say=said.append)
    assert info["test_accuracy"] == 1.0 and info["hash"] == features.weights_hash(net)
    cached = os.listdir(tmp_path / "features")
    assert len(cached) == 1 and info["data_hash"] in cached[0] and any("Training" in s for s in said)
    monkeypatch.setattr(features, "train_domain_net", lambda *a, **k: pytest.fail("trained again"))
    again, info2 = features.domain_network("npz:mine.npz", str(tmp_path), splits, 3, say=said.append)
    assert info2 == info and features.weights_hash(again) == info["hash"]
    monkeypatch.undo()
    changed = tiny_splits()
    changed["train"][0][0, 0, 0, 0] += 1  # one pixel of one training image
    _, info3 = features.domain_network("npz:mine.npz", str(tmp_path), changed, 3, say=said.append)
    assert info3["data_hash"] != info["data_hash"] and len(os.listdir(tmp_path / "features")) == 2


def test_the_domain_network_is_the_same_from_the_same_data():
    a = features.train_domain_net(*tiny_splits().values(), 3, epochs=2)[0]
    b = features.train_domain_net(*tiny_splits().values(), 3, epochs=2)[0]
    assert features.weights_hash(a) == features.weights_hash(b)


def test_domain_network_shapes():
    for shape in [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 8, 8), (3, 48, 40)]:
        net = features.DomainNet(shape, 7).eval()
        x = torch.rand(2, *shape)
        assert net.features(x).shape == (2, features.FEATURES) and net(x).shape == (2, 7)


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason="../shared/data/MNIST not present")
def test_fid_between_halves_of_mnist_is_small_and_grows_with_noise_and_blur(tmp_path):
    """A domain network trained briefly on 6,000 real MNIST images; the FID of one half of the
    test split against the other, then against that half corrupted more and more."""
    import shutil
    shutil.copytree(SHARED_MNIST, tmp_path / "MNIST")
    splits = data.load("mnist", str(tmp_path), "cpu", download=True)
    train_part = (splits["train"][0][:6000], splits["train"][1][:6000])
    net, acc = features.train_domain_net(train_part, splits["test"], 10, epochs=2)
    assert acc > 0.9
    images = splits["test"][0].float() / 255
    a, b = images[:5000], images[5000:]
    feats = lambda x: torch.cat([net.features(p) for p in x.split(1000)]).double()  # noqa: E731
    with torch.no_grad():
        real = feats(a)
        base = metrics.fid(real, feats(b))
        g = torch.Generator().manual_seed(0)
        noisy = [metrics.fid(real, feats((b + s * torch.randn(b.shape, generator=g)).clamp(0, 1)))
                 for s in (0.05, 0.1, 0.2, 0.4)]
        blurred = [metrics.fid(real, feats(blur(b, s))) for s in (0.8, 1.2, 1.8, 3.0)]
    assert base < 0.1 * noisy[-1] and base < 0.1 * blurred[-1]
    assert base < noisy[0] and all(x < y for x, y in zip(noisy, noisy[1:]))
    assert base < blurred[0] and all(x < y for x, y in zip(blurred, blurred[1:]))


def blur(x, sigma):
    radius = int(3 * sigma) + 1
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))


def test_evaluate_reports_sample_quality_with_the_hash_and_counts(tiny_data, tmp_path, capsys):
    runs = {}
    for model in ("vae", "ae", "cvae"):
        runs[model] = str(tmp_path / model)
        assert train.main(["--model", model, "--data-root", tiny_data, "--epochs", "1",
                           "--batch-size", "16", "--out", runs[model]]) == 0
    assert evaluate.main(list(runs.values()) + ["--out", str(tmp_path / "cmp"), "--fid-samples", "40",
                                                "--no-figures"]) == 0
    out = capsys.readouterr().out
    m = {k: json.load(open(os.path.join(d, "metrics.json"))) for k, d in runs.items()}
    domain = m["vae"]["features"]["domain"]
    assert domain["samples"] == 40 and domain["test_images"] == 24 and len(domain["hash"]) == 12
    for key in ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage",
                "fid_recon", "confidence", "class_entropy"):
        assert math.isfinite(m["vae"][key]), key
    assert "fid" not in m["ae"] and math.isfinite(m["ae"]["fid_recon"])  # an AE cannot sample
    assert m["ae"]["features"]["domain"]["samples"] == 0
    assert 0 <= m["cvae"]["class_match"] <= 1 and "class_match" not in m["vae"]
    assert {d["features"]["domain"]["hash"] for d in m.values()} == {domain["hash"]}
    assert f"weights {domain['hash']}" in out and "40 samples" in out and "| FID |" in out
    assert "Training the feature network" in out  # once, for the three runs
    assert out.count("Training the feature network") == 1


def test_evaluate_sample_quality_flags(tiny_data, tmp_path, capsys):
    run = str(tmp_path / "vae")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--out", run]) == 0
    capsys.readouterr()
    assert evaluate.main([run, "--fid-samples", "5"]) == 2
    assert "--fid-samples must be 0 (skipped) or at least 10" in capsys.readouterr().err
    assert evaluate.main([run, "--fid-samples", "0", "--no-figures"]) == 0
    assert "fid" not in json.load(open(os.path.join(run, "metrics.json")))
    assert not os.path.exists(os.path.join(tiny_data, "features"))  # nothing trained


@pytest.mark.e2e
def test_inception_features_from_a_weights_file(tiny_data, tmp_path, capsys):
    """A state dict of torchvision's inception_v3 (random weights here: the path works, the
    numbers mean nothing) gives *_inception numbers and the 2048-d features; a file of other
    weights is one line and the domain numbers still come."""
    import torchvision
    torch.manual_seed(0)
    path = str(tmp_path / "inception.pt")
    torch.save(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    net, info = features.inception(path)
    assert features.InceptionFeatures(net).features(torch.rand(2, 1, 28, 28)).shape == (2, 2048)
    run = str(tmp_path / "vae")
    assert train.main(["--data-root", tiny_data, "--epochs", "1", "--out", run]) == 0
    assert evaluate.main([run, "--fid-samples", "10", "--inception-weights", path, "--no-figures"]) == 0
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert math.isfinite(m["fid_inception"]) and m["features"]["inception"]["hash"] == info["hash"]
    torch.save({"fc.weight": torch.zeros(3)}, str(tmp_path / "other.pt"))
    capsys.readouterr()
    assert evaluate.main([run, "--fid-samples", "10", "--inception-weights", str(tmp_path / "other.pt"),
                          "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "not a state dict of torchvision's inception_v3" in out
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert "fid_inception" not in m and math.isfinite(m["fid"])
