"""Disentanglement metrics on a ground-truth factor grid: BetaVAE, FactorVAE, MIG, DCI and SAP
with the estimators, classifiers and sample counts of disentanglement_lib (Locatello et al.
2019; evaluation/metrics/, unsupervised_study_v1 configs). Needs torch, numpy, sklearn only.
represent(x): (B <= batch, C, H, W) floats -> (B, D) codes (the posterior mean), under no_grad.
ground_truth: .factor_sizes (K ints, e.g. [3, 6, 40, 32, 32]); .sample_factors(n, gen): (n, K)
uniform independent indices from torch.Generator gen; .images(factors): (n, C, H, W) in [0, 1].
Codes (n, D) and factors (n, K) are numpy, a row per point (disentanglement_lib transposes);
all draws come from one generator seeded with the metric's `seed`: a score is a function of it.
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
    """Codes (..., D) float64 of the images of `factors` (..., K), `batch` images per call."""
    out, flat = [], factors.reshape(-1, factors.shape[-1])
    with torch.no_grad():  # an encoder's forward pass need not build a graph here
        for i in range(0, len(flat), batch):
            z = represent(ground_truth.images(flat[i:i + batch]))
            out.append(z.detach().to("cpu", torch.float64))
    return torch.cat(out).numpy().reshape(*factors.shape[:-1], -1)


def codes_and_factors(represent, ground_truth, n, seed, batch=512):
    """(codes (n, D), factors (n, K)) of n uniform draws (as generate_batch_factor_code)."""
    factors = ground_truth.sample_factors(n, torch.Generator().manual_seed(seed))
    return codes_of(represent, ground_truth, factors, batch), factors.numpy()


def draws(ground_truth, n, batch_size, gen):
    """n points, 8,192 images a round: (k (m,) ~ U{0..K-1}, its mask (m, 1, K), draws (m, batch_size, K))."""
    K, chunk = len(ground_truth.factor_sizes), max(1, 8192 // batch_size)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        k = torch.randint(0, K, (m,), generator=gen)
        yield k, torch.nn.functional.one_hot(k, K).bool()[:, None, :], \
            ground_truth.sample_factors(m * batch_size, gen).view(m, batch_size, K)


def beta_vae_points(represent, ground_truth, n, batch_size, gen, batch=512):
    """BetaVAE classifier data (Higgins et al. 2017, sec. 3): features (n, D), the mean |z1 - z2| over
    batch_size pairs sharing factor k's value (one per pair), and labels k (n,)."""
    features, labels = [], []
    for k, same, f1 in draws(ground_truth, n, batch_size, gen):
        f2 = torch.where(same, f1, ground_truth.sample_factors(len(k) * batch_size, gen).view_as(f1))
        features.append(np.abs(codes_of(represent, ground_truth, f1, batch)
                               - codes_of(represent, ground_truth, f2, batch)).mean(1))
        labels.append(k.numpy())
    return np.concatenate(features), np.concatenate(labels)


def beta_vae_score(represent, ground_truth, seed, batch_size=64, num_train=10000,
                   num_eval=5000, batch=512):
    """{"beta_vae_train", "beta_vae"}: accuracies (chance 1/K) of disentanglement_lib's beta_vae_sklearn,
    a LogisticRegression on num_train points scored on num_eval fresh ones. Its day's sklearn defaults
    (liblinear, one-vs-rest, C=1): today's lbfgs stops short of converging on these features."""
    gen = torch.Generator().manual_seed(seed)
    x, y = beta_vae_points(represent, ground_truth, num_train, batch_size, gen, batch)
    model = OneVsRestClassifier(LogisticRegression(solver="liblinear", random_state=seed)).fit(x, y)
    x_eval, y_eval = beta_vae_points(represent, ground_truth, num_eval, batch_size, gen, batch)
    return {"beta_vae_train": float(model.score(x, y)), "beta_vae": float(model.score(x_eval, y_eval))}


def factor_vae_votes(represent, ground_truth, n, batch_size, gen, variance, active, batch=512):
    """Vote counts (K, active units) of n FactorVAE groups (Kim & Mnih 2018, sec. 4): factor k fixed over
    batch_size draws, the active unit of least variance over its global variance votes for k."""
    votes = np.zeros((len(ground_truth.factor_sizes), int(active.sum())), dtype=np.int64)
    for k, same, f in draws(ground_truth, n, batch_size, gen):
        f = torch.where(same, f[:, :1], f)  # factor k at the group's first value
        z = codes_of(represent, ground_truth, f, batch)
        np.add.at(votes, (k.numpy(), (z[:, :, active].var(1, ddof=1) / variance[active]).argmin(1)), 1)
    return votes


def factor_vae_score(represent, ground_truth, seed, batch_size=64, num_train=10000,
                     num_eval=5000, num_variance_estimate=10000, prune_std=0.05, batch=512):
    """FactorVAE train/eval accuracy and active units as disentanglement_lib's factor_vae_score: units of
    std below prune_std pruned (as its prune_dims); each predicts the factor of most of its votes; chance
    1/K, 0 with no active unit. (Its num_active_dims reports D, not the count of active units.)"""
    gen = torch.Generator().manual_seed(seed)
    codes = codes_of(represent, ground_truth, ground_truth.sample_factors(num_variance_estimate, gen), batch)
    variance = codes.var(0, ddof=1)
    active = np.sqrt(variance) >= prune_std
    if not active.any():
        return {"factor_vae_train": 0.0, "factor_vae": 0.0, "factor_vae_active_dims": 0.0}
    train, test = (factor_vae_votes(represent, ground_truth, count, batch_size, gen, variance, active, batch)
                   for count in (num_train, num_eval))
    vote_of, units = train.argmax(0), np.arange(train.shape[1])  # the factor each active unit stands for
    return {"factor_vae_train": float(train[vote_of, units].sum() / train.sum()),
            "factor_vae": float(test[vote_of, units].sum() / test.sum()),
            "factor_vae_active_dims": float(active.sum())}


def discretize(codes, bins=20):
    """Columns into `bins` equal-width bins, labels 1..bins, the max in the last (histogram_discretizer)."""
    return np.stack([np.digitize(c, np.histogram(c, bins)[1][:-1]) for c in codes.T], 1)


def mig(codes, factors, bins=20):
    """{"mig", "mutual_info" (D, K), "factor_entropy" (K,)}: Mutual Information Gap (Chen et al. 2018, eq. 5)
    as disentanglement_lib's discrete MIG, mean_k (top - second I(z_d; v_k) over d) / H(v_k), plug-in
    estimates in nats on discretized units (10,000 points there). Needs D >= 2, no constant factor."""
    mi = np.array([[mutual_info_score(v, zd) for v in factors.T] for zd in discretize(codes, bins).T])
    entropy = np.array([mutual_info_score(v, v) for v in factors.T])
    top = np.sort(mi, 0)[::-1]
    return {"mig": float(np.mean((top[0] - top[1]) / entropy)), "mutual_info": mi, "factor_entropy": entropy}


def entropy_score(p, base):
    """1 - H(p) / log(base) per row of p, normalised; +1e-11 (as there): a zero row is uniform."""
    p = (p + 1e-11) / (p + 1e-11).sum(1, keepdims=True)
    return 1 + (p * np.log(p)).sum(1) / np.log(base)


def dci_from_importance(importance):
    """(D, C) of importances R (units, factors) as disentanglement_lib (Eastwood & Williams 2018, sec. 3):
    D = sum_d rho_d (1 - H_K(R_d. / sum_k R_dk)), rho_d = sum_k R_dk / sum R; C likewise on columns
    (an all-zero R: uniform weights)."""
    R = importance if importance.sum() > 0 else np.ones_like(importance)
    rho, w = R.sum(1) / R.sum(), R.sum(0) / R.sum()
    units, factors = importance.shape
    return (float((entropy_score(importance, factors) * rho).sum()),
            float((entropy_score(importance.T, units) * w).sum()))


def dci(train_codes, train_factors, test_codes, test_factors, num_train=750, num_test=5000, seed=0):
    """DCI (Eastwood & Williams 2018) as disentanglement_lib's dci, which fits on 10,000 points: 750 here
    as the trees fit slowly (dSprites, 10 units, 2 loaded cores: 15 s on 500, 24 s on 750, 35 s on 1,000;
    189 s for the 40-class factor alone on 10,000). seed: random_state, breaking ties only (unset there)."""
    x, y = train_codes[:num_train], train_factors[:num_train]
    x_test, y_test = test_codes[:num_test], test_factors[:num_test]
    importance, accuracy = np.zeros((x.shape[1], y.shape[1])), []
    for k in range(y.shape[1]):
        model = GradientBoostingClassifier(random_state=seed).fit(x, y[:, k])
        importance[:, k] = np.abs(model.feature_importances_)
        accuracy.append((model.score(x, y[:, k]), model.score(x_test, y_test[:, k])))
    d, c = dci_from_importance(importance)
    train_acc, test_acc = (np.mean(a) for a in zip(*accuracy))
    return {"dci_disentanglement": d, "dci_completeness": c, "dci_informativeness": float(test_acc),
            "dci_informativeness_train": float(train_acc), "importance": importance}


def sap(train_codes, train_factors, test_codes, test_factors):
    """{"sap", "sap_matrix" (D, K)} (Kumar et al. 2018, sec. 3) as disentanglement_lib's discrete sap_score:
    S_dk = test accuracy of a LinearSVC on unit d alone for factor k, SAP = mean_k (top - second over d).
    One unit's linear rule separates few classes: even a perfect code scores well below 1."""
    score = np.zeros((train_codes.shape[1], train_factors.shape[1]))
    with warnings.catch_warnings():  # liblinear's iteration cap on hopeless units
        warnings.simplefilter("ignore", ConvergenceWarning)
        for d, k in np.ndindex(score.shape):
            svm = LinearSVC(C=0.01, class_weight="balanced").fit(train_codes[:, d:d + 1], train_factors[:, k])
            score[d, k] = np.mean(svm.predict(test_codes[:, d:d + 1]) == test_factors[:, k])
    top = np.sort(score, 0)
    return {"sap": float(np.mean(top[-1] - top[-2])), "sap_matrix": score}


def evaluate_all(represent, ground_truth, seed=0, batch=512, mig_represent=None, mig_factors=None):
    """All five metrics in one flat dict, with their arrays and "seconds_<metric>" (seconds_codes: the
    shared points): MIG, DCI and SAP share 15,000 points drawn from `seed` (one draw in
    disentanglement_lib too), the first 10,000 MIG's and the others' train set, the rest their test set.
    Where papers differ: MIG of mig_represent's codes (e.g. a sample of q(z|x), not its mean) and of
    only the factors numbered mig_factors (e.g. Chen et al.'s four, without the shape)."""
    out, start = {}, time.perf_counter()

    def lap(name, found=()):
        nonlocal start
        out.update(found)
        out["seconds_" + name], start = time.perf_counter() - start, time.perf_counter()

    lap("beta_vae", beta_vae_score(represent, ground_truth, seed, batch=batch))
    lap("factor_vae", factor_vae_score(represent, ground_truth, seed, batch=batch))
    codes, factors = codes_and_factors(represent, ground_truth, 15000, seed, batch)
    mig_codes = codes if mig_represent is None else codes_of(mig_represent, ground_truth, torch.from_numpy(factors))
    lap("codes")
    train, test = (codes[:10000], factors[:10000]), (codes[10000:], factors[10000:])
    kept = list(range(factors.shape[1])) if mig_factors is None else list(mig_factors)
    lap("mig", mig(mig_codes[:10000], factors[:10000, kept]))
    lap("dci", dci(*train, *test, seed=seed))
    lap("sap", {"sap": sap(*train, *test)["sap"]})
    return out
