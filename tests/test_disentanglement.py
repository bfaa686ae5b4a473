"""disentanglement.py on a toy grid whose "images" are the normalised factor values
themselves, (n, 1, 1, K), so a code is any function of them and no rendering is needed.
Reduced sample counts keep the file fast; the slow test runs the default counts."""
import math
import time

import numpy as np
import pytest
import torch

import disentanglement as dis

SIZES = [3, 6, 8, 8]
FAST = dict(beta=dict(num_train=500, num_eval=300),
            factor=dict(num_train=500, num_eval=300, num_variance_estimate=2000))


class Toy:
    """factor_sizes, uniform independent draws, and "images" = factor / (size - 1)."""
    def __init__(self, sizes=SIZES):
        self.factor_sizes = list(sizes)

    def sample_factors(self, n, generator):
        return torch.stack([torch.randint(0, s, (n,), generator=generator) for s in self.factor_sizes], 1)

    def images(self, factors):
        return (factors.float() / (torch.tensor(self.factor_sizes) - 1)).view(len(factors), 1, 1, -1)


def clean(x):
    return x.flatten(1)


def monotone(x):
    """A scaled cubic of each factor, plus a dead unit that is always 0."""
    v = x.flatten(1)
    return torch.cat([(2 * v - 1) ** 3 + 0.1 * v, torch.zeros(len(v), 1)], 1)


def rotated(x):
    """Units 0 and 1 each mix factors 0 and 1 (a 45-degree rotation, up to scale)."""
    v = x.flatten(1)
    return torch.stack([v[:, 0] + v[:, 1], v[:, 0] - v[:, 1], v[:, 2], v[:, 3]], 1)


def permuted_rescaled(represent, order=(2, 0, 3, 1), scale=(0.5, 3.0, 1.5, 2.0)):
    return lambda x: represent(x)[:, list(order)] * torch.tensor(scale)


def random_code(seed=5):
    gen = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(len(x), len(SIZES), generator=gen)


def scores(represent, gt=None, seed=0, n_dci=300):
    """All five metrics with reduced counts: 2,000 training and 1,000 test points for MIG,
    SAP and DCI (DCI's trees fit on the first n_dci of them)."""
    gt = gt or Toy()
    out = dis.beta_vae_score(represent, gt, seed, **FAST["beta"])
    out.update(dis.factor_vae_score(represent, gt, seed, **FAST["factor"]))
    codes, factors = dis.codes_and_factors(represent, gt, 3000, seed)
    train, test = (codes[:2000], factors[:2000]), (codes[2000:], factors[2000:])
    out.update(dis.mig(*train))
    out.update(dis.dci(*train, *test, num_train=n_dci, num_test=1000))
    out.update(dis.sap(*train, *test))
    return out


@pytest.fixture(scope="module")
def clean_scores():
    return scores(clean)


@pytest.fixture(scope="module")
def rotated_scores():
    return scores(rotated)


def test_codes_and_factors_batches_and_seed():
    sizes = []
    rep = lambda x: (sizes.append(len(x)), clean(x))[1]
    codes, factors = dis.codes_and_factors(rep, Toy(), 300, seed=3, batch=64)
    assert codes.shape == (300, 4) and factors.shape == (300, 4) and max(sizes) == 64
    assert np.allclose(codes * (np.array(SIZES) - 1), factors)
    again, _ = dis.codes_and_factors(clean, Toy(), 300, seed=3)
    assert np.array_equal(codes, again)


@pytest.mark.parametrize("represent", [clean, monotone], ids=["clean", "monotone"])
def test_perfect_code_scores_near_maximum(represent, clean_scores):
    s = clean_scores if represent is clean else scores(represent)
    assert s["beta_vae"] > 0.98 and s["factor_vae"] > 0.98
    assert s["factor_vae_active_dims"] == 4  # the dead unit of `monotone` is pruned
    # The discretised factor indices keep their values apart (no size exceeds 20 bins), so
    # MIG is 1 less the plug-in bias; the cubic's equal-width bins merge some values.
    assert s["mig"] > (0.97 if represent is clean else 0.85)
    assert s["dci_disentanglement"] > 0.95 and s["dci_completeness"] > 0.95
    assert s["dci_informativeness"] > 0.95
    # One linear rule on one unit separates only some of a factor's classes, so SAP's top
    # score is well below 1, but each factor's best unit is its own.
    assert s["sap"] > 0.15
    assert list(s["sap_matrix"][:4].argmax(0)) == [0, 1, 2, 3]


def test_random_code_scores_near_chance():
    s = scores(random_code())
    chance = 1 / len(SIZES)
    assert abs(s["beta_vae"] - chance) < 0.1
    assert abs(s["factor_vae"] - chance) < 0.1
    assert s["mig"] < 0.02 and s["sap"] < 0.05
    assert s["dci_disentanglement"] < 0.1 and s["dci_informativeness"] < 0.3


def test_invariant_to_permuting_and_rescaling_units(rotated_scores):
    """On the mixed code, whose scores are not saturated. FactorVAE (normalised by the global
    std) and the trees (split on order) are invariant up to ties; MIG's bins follow each
    unit's range; the logistic regression and the SVM are regularised, so a rescaled
    unit may change their fit a little (SAP by 0.015 here: C=0.01 penalises the slope)."""
    a, b = rotated_scores, scores(permuted_rescaled(rotated))
    tolerance = {"beta_vae": 0.03, "factor_vae": 1e-9, "mig": 0.01, "dci_disentanglement": 0.02,
                 "dci_completeness": 0.02, "dci_informativeness": 0.02, "sap": 0.03}
    for key, tol in tolerance.items():
        assert abs(a[key] - b[key]) <= tol, (key, a[key], b[key])


def test_mixing_two_factors_lowers_mig_and_dci_disentanglement(clean_scores, rotated_scores):
    assert rotated_scores["mig"] < clean_scores["mig"] - 0.3
    assert rotated_scores["dci_disentanglement"] < clean_scores["dci_disentanglement"] - 0.15
    assert rotated_scores["dci_informativeness"] > 0.95  # the rotation loses no information


def test_mig_by_hand():
    """A balanced 4 x 3 grid, so the plug-in estimates are exact. Unit 0 = f0 + 4 f1 holds
    both factors, unit 1 = f0, unit 2 is constant: I = [[log 4, log 3], [log 4, 0], [0, 0]];
    MIG = ((log 4 - log 4) / log 4 + (log 3 - 0) / log 3) / 2 = 0.5."""
    f0, f1 = np.meshgrid(np.arange(4), np.arange(3), indexing="ij")
    factors = np.tile(np.stack([f0.ravel(), f1.ravel()], 1), (10, 1))  # (120, 2)
    codes = np.stack([factors[:, 0] + 4 * factors[:, 1], factors[:, 0], np.full(120, 7.0)], 1)
    out = dis.mig(codes.astype(float), factors)
    l4, l3 = math.log(4), math.log(3)
    assert np.allclose(out["mutual_info"], [[l4, l3], [l4, 0], [0, 0]], atol=1e-12)
    assert np.allclose(out["factor_entropy"], [l4, l3])
    assert out["mig"] == pytest.approx(0.5, abs=1e-12)


def test_dci_from_importance_by_hand():
    assert dis.dci_from_importance(np.eye(4)) == pytest.approx((1, 1), abs=1e-8)
    assert dis.dci_from_importance(np.ones((3, 4))) == pytest.approx((0, 0), abs=1e-8)
    # a dead unit (zero row) carries no weight
    assert dis.dci_from_importance(np.vstack([np.eye(3), np.zeros(3)])) == pytest.approx((1, 1), abs=1e-8)
    # unit 0 splits evenly (D_0 = 0), unit 1 is pure (D_1 = 1), rho = (1/2, 1/2): D = 1/2.
    # Factor 0 has one unit (C_0 = 1); factor 1 has (1/3, 2/3), C_1 = 1 - H_2(1/3, 2/3);
    # factor weights (1/4, 3/4) as disentanglement_lib weighs them.
    h = -(1 / 3 * math.log2(1 / 3) + 2 / 3 * math.log2(2 / 3))
    d, c = dis.dci_from_importance(np.array([[1.0, 1.0], [0.0, 2.0]]))
    assert d == pytest.approx(0.5, abs=1e-8) and c == pytest.approx(0.25 + 0.75 * (1 - h), abs=1e-8)


def test_factor_vae_without_active_units_scores_zero():
    out = dis.factor_vae_score(lambda x: torch.zeros(len(x), 3), Toy(), 0, **FAST["factor"])
    assert out == {"factor_vae_train": 0.0, "factor_vae": 0.0, "factor_vae_active_dims": 0.0}


def test_same_seed_same_scores():
    for metric, kw in ((dis.beta_vae_score, FAST["beta"]), (dis.factor_vae_score, FAST["factor"])):
        assert metric(rotated, Toy(), 7, **kw) == metric(rotated, Toy(), 7, **kw)


@pytest.mark.slow
def test_evaluate_all_default_counts_within_a_minute():
    """dSprites' factor sizes and a cheap 10-d code (the factors and 5 nuisance units):
    everything but the encoder's forward passes, on this 2-core machine (slower under load)."""
    gt = Toy([3, 6, 40, 32, 32])
    rep = lambda x: torch.cat([x.flatten(1), 0.1 * torch.sin(50 * x.flatten(1).flip(1))], 1)
    start = time.perf_counter()
    out = dis.evaluate_all(rep, gt, seed=0)
    seconds = time.perf_counter() - start
    for key in ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness",
                "dci_informativeness", "sap"):
        assert isinstance(out[key], float)
    assert out["mutual_info"].shape == (10, 5) and out["importance"].shape == (10, 5)
    assert out["factor_entropy"].shape == (5,)
    assert out["beta_vae"] > 0.95 and out["dci_disentanglement"] > 0.9
    assert seconds < 60, {k: v for k, v in out.items() if k.startswith("seconds")}
