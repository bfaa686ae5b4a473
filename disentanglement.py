"""Disentanglement metrics on a ground-truth factor grid, after disentanglement_lib
(Locatello et al. 2019, google-research/disentanglement_lib, evaluation/metrics/): BetaVAE,
FactorVAE, MIG, DCI and SAP, with its estimators, classifiers and sample counts (its
unsupervised_study_v1 configs). Imports torch, numpy and sklearn only; copy it alone.

The interface:
    represent(x)   float tensor (B, C, H, W) -> code (B, D) tensor, the posterior mean;
                   called under torch.no_grad() on at most `batch` images (512 by default).
    ground_truth   .factor_sizes            list of K ints, e.g. [3, 6, 40, 32, 32] (dSprites)
                   .sample_factors(n, gen)  LongTensor (n, K) of factor indices, uniform and
                                            independent, drawn with the torch.Generator gen
                   .images(factors)         float tensor (n, C, H, W) in [0, 1]
Codes and factors are numpy arrays with one row per point: codes (n, D), factors (n, K)
(disentanglement_lib keeps them transposed). Every draw comes from one torch.Generator
seeded with the metric's `seed`, so a score is a deterministic function of its seed.
"""
import time
import warnings

import numpy as np
import torch
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC


def codes_of(represent, ground_truth, factors, batch=512):
    """Codes (n, D) float64 of the images of `factors` (n, K), `batch` images per call."""
    out = []
    with torch.no_grad():  # an encoder's forward pass need not build a graph here
        for i in range(0, len(factors), batch):
            z = represent(ground_truth.images(factors[i:i + batch]))
            out.append(z.detach().to("cpu", torch.float64))
    return torch.cat(out).numpy()


def codes_and_factors(represent, ground_truth, n, seed, batch=512):
    """(codes (n, D), factors (n, K)) of n points drawn uniformly from the grid
    (disentanglement_lib's generate_batch_factor_code, which draws them 16 at a time)."""
    factors = ground_truth.sample_factors(n, torch.Generator().manual_seed(seed))
    return codes_of(represent, ground_truth, factors, batch), factors.numpy()


def share_factor(k, source, target):
    """target (m, size, K) with factor k[i] of group i copied from source (m, size, K)."""
    same = torch.nn.functional.one_hot(k, source.shape[-1]).bool()[:, None, :]  # (m, 1, K)
    return torch.where(same, source, target)


def beta_vae_points(represent, ground_truth, n, batch_size, gen, batch=512):
    """The BetaVAE classifier's data (Higgins et al. 2017, sec. 3): per point a factor k ~
    U{0..K-1} and batch_size pairs (x1, x2), each pair sharing factor k's value (one value
    per pair), the rest independent; feature = mean over the pairs of |z1 - z2| (D,),
    label k. Returns (n, D), (n,)."""
    K = len(ground_truth.factor_sizes)
    chunk = max(1, 8192 // batch_size)  # points per round, so memory stays small
    features, labels = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        k = torch.randint(0, K, (m,), generator=gen)
        f1 = ground_truth.sample_factors(m * batch_size, gen).view(m, batch_size, K)
        f2 = share_factor(k, f1, ground_truth.sample_factors(m * batch_size, gen).view(m, batch_size, K))
        z1 = codes_of(represent, ground_truth, f1.reshape(-1, K), batch).reshape(m, batch_size, -1)
        z2 = codes_of(represent, ground_truth, f2.reshape(-1, K), batch).reshape(m, batch_size, -1)
        features.append(np.abs(z1 - z2).mean(1))
        labels.append(k.numpy())
    return np.concatenate(features), np.concatenate(labels)


def beta_vae_score(represent, ground_truth, seed, batch_size=64, num_train=10000,
                   num_eval=5000, batch=512):
    """BetaVAE metric (Higgins et al. 2017) as disentanglement_lib's beta_vae_sklearn: the
    accuracy of a linear classifier telling which factor a batch of pairs shared, from
    the mean |z1 - z2| over batch_size=64 pairs (beta_vae_points). sklearn's
    LogisticRegression with random_state=seed and sklearn's defaults of
    disentanglement_lib's day (liblinear, one-vs-rest, C=1; today's default, lbfgs, stops
    short of converging on these features), fit on num_train=10,000 points, scored on
    num_eval=5,000 fresh ones. Chance is 1/K.
    Returns {"beta_vae_train", "beta_vae"} (train and eval accuracy)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = beta_vae_points(represent, ground_truth, num_train, batch_size, gen, batch)
    model = OneVsRestClassifier(LogisticRegression(solver="liblinear", random_state=seed)).fit(x, y)
    x_eval, y_eval = beta_vae_points(represent, ground_truth, num_eval, batch_size, gen, batch)
    return {"beta_vae_train": float(model.score(x, y)), "beta_vae": float(model.score(x_eval, y_eval))}


def factor_vae_votes(represent, ground_truth, n, batch_size, gen, variance, active, batch=512):
    """n votes of the FactorVAE classifier (Kim & Mnih 2018, sec. 4): factor k ~ U{0..K-1}
    fixed at a random value over batch_size draws; the active unit with the least
    variance of its code, over its variance on the whole data (the normalisation by the
    global std, squared), votes for k.
    Returns counts (K, number of active units)."""
    K = len(ground_truth.factor_sizes)
    chunk = max(1, 8192 // batch_size)
    votes = np.zeros((K, int(active.sum())), dtype=np.int64)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        k = torch.randint(0, K, (m,), generator=gen)
        f = ground_truth.sample_factors(m * batch_size, gen).view(m, batch_size, K)
        f = share_factor(k, f[:, :1].expand_as(f), f)  # factor k at the group's first value
        z = codes_of(represent, ground_truth, f.reshape(-1, K), batch).reshape(m, batch_size, -1)
        local = z[:, :, active].var(1, ddof=1) / variance[active]  # (m, active units)
        np.add.at(votes, (k.numpy(), local.argmin(1)), 1)
    return votes


def factor_vae_score(represent, ground_truth, seed, batch_size=64, num_train=10000,
                     num_eval=5000, num_variance_estimate=10000, prune_std=0.05, batch=512):
    """FactorVAE metric (Kim & Mnih 2018) as disentanglement_lib's factor_vae_score: the
    per-unit variance (ddof=1) over num_variance_estimate=10,000 random points; units with
    std below prune_std=0.05 are pruned (disentanglement_lib's prune_dims thresholds the
    std, i.e. variance below 0.0025). The classifier is the majority vote: each unit
    predicts the factor it voted for most in num_train=10,000 votes (factor_vae_votes,
    batch_size=64 draws each); accuracy on num_eval=5,000 fresh votes. Chance is 1/K; no
    active unit scores 0, as there. Returns {"factor_vae_train", "factor_vae",
    "factor_vae_active_dims"} (the number of active units; disentanglement_lib's
    num_active_dims reports the length of its mask, i.e. D)."""
    gen = torch.Generator().manual_seed(seed)
    codes = codes_of(represent, ground_truth, ground_truth.sample_factors(num_variance_estimate, gen), batch)
    variance = codes.var(0, ddof=1)
    active = np.sqrt(variance) >= prune_std
    if not active.any():
        return {"factor_vae_train": 0.0, "factor_vae": 0.0, "factor_vae_active_dims": 0.0}
    train = factor_vae_votes(represent, ground_truth, num_train, batch_size, gen, variance, active, batch)
    vote_of = train.argmax(0)  # the factor each active unit stands for
    units = np.arange(train.shape[1])
    test = factor_vae_votes(represent, ground_truth, num_eval, batch_size, gen, variance, active, batch)
    return {"factor_vae_train": float(train[vote_of, units].sum() / train.sum()),
            "factor_vae": float(test[vote_of, units].sum() / test.sum()),
            "factor_vae_active_dims": float(active.sum())}


def discretize(codes, bins=20):
    """Each column into `bins` equal-width bins of its own range: np.digitize against the
    left edges of np.histogram's bins, labels 1..bins (disentanglement_lib's
    histogram_discretizer; the maximum falls in the last bin)."""
    return np.stack([np.digitize(c, np.histogram(c, bins)[1][:-1]) for c in codes.T], 1)


def mig(codes, factors, bins=20):
    """Mutual Information Gap (Chen et al. 2018, eq. 5) as disentanglement_lib's discrete
    MIG: I(z_d; v_k) between each unit, discretised into bins=20 (discretize), and each
    factor by sklearn's mutual_info_score (plug-in estimate, nats); H(v_k) = I(v_k; v_k);
    MIG = mean_k (largest - second largest I(z_d; v_k) over d) / H(v_k). disentanglement_lib
    uses 10,000 points. Needs D >= 2 and no constant factor. Returns {"mig",
    "mutual_info" (D, K), "factor_entropy" (K,)}."""
    z = discretize(codes, bins)
    mi = np.array([[mutual_info_score(v, zd) for v in factors.T] for zd in z.T])
    entropy = np.array([mutual_info_score(v, v) for v in factors.T])
    top = np.sort(mi, 0)[::-1]
    return {"mig": float(np.mean((top[0] - top[1]) / entropy)), "mutual_info": mi,
            "factor_entropy": entropy}


def entropy_score(p, base):
    """1 - H(p) / log(base) per row of p (nonnegative; each row normalised to sum 1), with
    disentanglement_lib's +1e-11 so that an all-zero row counts as uniform."""
    p = p + 1e-11
    p = p / p.sum(1, keepdims=True)
    return 1 + (p * np.log(p)).sum(1) / np.log(base)


def dci_from_importance(importance):
    """Disentanglement and completeness (Eastwood & Williams 2018, sec. 3) of an importance
    matrix R (D units, K factors), as disentanglement_lib computes them:
        D = sum_d rho_d (1 - H_K(R_d. / sum_k R_dk)),  rho_d = sum_k R_dk / sum R
        C = sum_k w_k (1 - H_D(R_.k / sum_d R_dk)),    w_k = sum_d R_dk / sum R
    (an all-zero R gives uniform weights). With gradient-boosted trees each column sums to 1,
    so w_k = 1/K and C is the plain mean over factors. Returns (D, C)."""
    R = importance if importance.sum() > 0 else np.ones_like(importance)
    rho, w = R.sum(1) / R.sum(), R.sum(0) / R.sum()
    units, factors = importance.shape
    return (float((entropy_score(importance, factors) * rho).sum()),
            float((entropy_score(importance.T, units) * w).sum()))


def dci(train_codes, train_factors, test_codes, test_factors, num_train=750, num_test=5000, seed=0):
    """DCI (Eastwood & Williams 2018) as disentanglement_lib's dci: per factor a sklearn
    GradientBoostingClassifier with default settings (100 depth-3 trees per class), fit on
    the first num_train training points; importance R_dk = |feature_importances_|;
    informativeness = mean over factors of the accuracy on the first num_test test points
    (and on the training points); D and C from R by dci_from_importance. disentanglement_lib
    uses 10,000 / 5,000 points; here num_train=750 by default because the default trees
    fit slowly (dSprites' 113 classes: 189 s for the 40-class factor alone on 10,000 points
    x 10 units; all five factors: 15 s on 500 points, 24 s on 750, 35 s on 1,000, on a
    2-core machine under load). Prediction is cheap, so the test set keeps 5,000. seed is the trees' random_state, which only breaks ties between
    equal splits (disentanglement_lib leaves it unset). Returns {"dci_disentanglement",
    "dci_completeness", "dci_informativeness", "dci_informativeness_train",
    "importance" (D, K)}."""
    x, y = train_codes[:num_train], train_factors[:num_train]
    x_test, y_test = test_codes[:num_test], test_factors[:num_test]
    importance = np.zeros((x.shape[1], y.shape[1]))
    train_acc, test_acc = [], []
    for k in range(y.shape[1]):
        model = GradientBoostingClassifier(random_state=seed).fit(x, y[:, k])
        importance[:, k] = np.abs(model.feature_importances_)
        train_acc.append(model.score(x, y[:, k]))
        test_acc.append(model.score(x_test, y_test[:, k]))
    d, c = dci_from_importance(importance)
    return {"dci_disentanglement": d, "dci_completeness": c,
            "dci_informativeness": float(np.mean(test_acc)),
            "dci_informativeness_train": float(np.mean(train_acc)), "importance": importance}


def sap(train_codes, train_factors, test_codes, test_factors):
    """SAP score (Kumar et al. 2018, sec. 3) as disentanglement_lib's sap_score with
    discrete factors: S_dk = test accuracy of sklearn's LinearSVC(C=0.01,
    class_weight="balanced"), one-vs-rest, fit on unit d alone to predict factor k;
    SAP = mean_k (largest - second largest S_dk over d). disentanglement_lib uses 10,000
    training and 5,000 test points. A linear rule on one unit separates few of a factor's
    classes, so even a perfect code scores well below 1. Returns {"sap", "sap_matrix" (D, K)}."""
    D, K = train_codes.shape[1], train_factors.shape[1]
    score = np.zeros((D, K))
    with warnings.catch_warnings():  # liblinear's iteration cap on hopeless units
        warnings.simplefilter("ignore", ConvergenceWarning)
        for d in range(D):
            for k in range(K):
                svm = LinearSVC(C=0.01, class_weight="balanced")
                svm.fit(train_codes[:, d:d + 1], train_factors[:, k])
                score[d, k] = np.mean(svm.predict(test_codes[:, d:d + 1]) == test_factors[:, k])
    top = np.sort(score, 0)
    return {"sap": float(np.mean(top[-1] - top[-2])), "sap_matrix": score}


def evaluate_all(represent, ground_truth, seed=0, batch=512):
    """All five metrics with disentanglement_lib's sample counts (DCI: see dci): BetaVAE and
    FactorVAE from `seed`; 15,000 points drawn once from `seed`, the first 10,000 for MIG
    and as DCI's and SAP's training set (in disentanglement_lib too these are one draw: each
    metric starts from seed 0 with the same call), the last 5,000 as their test set. Returns one flat dict:
    the scalar scores, the arrays "mutual_info", "factor_entropy", "importance", and
    "seconds_<metric>" for each (seconds_codes: drawing and encoding the shared points)."""
    out, start = {}, time.perf_counter()

    def lap(name):
        nonlocal start
        out["seconds_" + name], start = time.perf_counter() - start, time.perf_counter()

    out.update(beta_vae_score(represent, ground_truth, seed, batch=batch))
    lap("beta_vae")
    out.update(factor_vae_score(represent, ground_truth, seed, batch=batch))
    lap("factor_vae")
    codes, factors = codes_and_factors(represent, ground_truth, 15000, seed, batch)
    lap("codes")
    train, test = (codes[:10000], factors[:10000]), (codes[10000:], factors[10000:])
    out.update(mig(*train))
    lap("mig")
    out.update(dci(*train, *test, seed=seed))
    lap("dci")
    out["sap"] = sap(*train, *test)["sap"]
    lap("sap")
    return out
