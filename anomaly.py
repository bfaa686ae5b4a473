"""Anomaly detection with a run trained on some classes (train.py --classes): every test
image scored by how unusual it is, the test images of the other classes as the anomalies.

Scores, higher for the more unusual (evaluate.py calls scores() and report()):
    recon_error    ||x - x_hat||^2 summed over the [0, 1] pixels (z = mu, or the code h)
    code_distance  the mean distance from the image's code to its 5 nearest training codes
    nll_iw         the importance-sampled -log p(x) (VAE family, with --iw-samples K)
    and each model's own (models.py, anomaly_scores): the VAE's negative ELBO (nelbo), the
    VAE-GAN's -logit D(x) (discriminator).
Each is measured by the AUROC and the AUPRC (anomalies positive) over all test images and
per held-out class (the normal class's test images against that class's).
"""
import csv
import os

import torch

import data
import figures
import metrics

NEAREST = 5  # code_distance: the training codes averaged over


@torch.no_grad()
def scores(model, cfg, splits, train_codes, test_codes, per_image):
    """{score: (N,) over the test split} (module docstring). train_codes: the codes of the
    training images (of the run's classes); per_image: what evaluate.measure kept."""
    found = {"recon_error": []}
    for x, target, y in data.eval_batches(splits["test"], cfg["output"],
                                          data.parse_noise(cfg["noise"])):
        clean = data.to_unit(target, cfg["output"])
        rec = data.to_unit(model.reconstruct(x, y), cfg["output"])
        found["recon_error"].append((rec - clean).pow(2).flatten(1).sum(1))
        for name, v in model.anomaly_scores(x, target, y).items():
            found.setdefault(name, []).append(v.float())
    found = {k: torch.cat(v).cpu() for k, v in found.items()}
    train_codes = train_codes.float()
    found["code_distance"] = torch.cat([
        torch.cdist(part.float(), train_codes).topk(min(NEAREST, len(train_codes)), dim=1,
                                                    largest=False).values.mean(1)
        for part in test_codes.split(1000)]).cpu()
    if "nll_iw" in per_image:
        found["nll_iw"] = per_image["nll_iw"].float().cpu()
    return found


def report(found, labels, kept, class_names):
    """{"auroc_<score>", "auprc_<score>" over all test images; "anomaly": the normal classes,
    the counts, and per held-out class each score's AUROC and AUPRC}."""
    labels = labels.cpu()
    normal = torch.isin(labels, torch.tensor(kept))
    out = {"anomaly": {"normal_classes": [class_names[c] for c in kept],
                       "test_normal": int(normal.sum()), "test_anomalous": int((~normal).sum()),
                       "per_class": {}}}
    for name, s in found.items():
        out[f"auroc_{name}"] = metrics.auroc(s, ~normal)
        out[f"auprc_{name}"] = metrics.average_precision(s, ~normal)
        per = {}
        for c in sorted(set(labels[~normal].tolist())):
            pick = normal | (labels == c)
            per[class_names[c]] = {"auroc": metrics.auroc(s[pick], labels[pick] == c),
                                   "auprc": metrics.average_precision(s[pick], labels[pick] == c)}
        out["anomaly"]["per_class"][name] = per
    return out


def save_csv(found, labels, kept, path):
    """One row per test image: its index in the test split, label, whether it is of a
    normal class, and every score."""
    names = list(found)
    normal = torch.isin(labels.cpu(), torch.tensor(kept))
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "normal", *names])
        for i in range(len(labels)):
            w.writerow([i, int(labels[i]), int(normal[i]), *(f"{found[k][i].item():.6g}" for k in names)])
    os.replace(path + ".tmp", path)


def detect(model, cfg, splits, test_codes, train_codes, per_image, kept, run_dir, folder, name, n):
    """Every score of a run trained on the classes `kept`, their AUROCs and AUPRCs (returned,
    for metrics.json), the per-image CSV in the run folder and, with a folder, roc.png and
    anomalies.png (n of the most normal and the most unusual test images by the best
    score). splits: as the run was trained (its training split of those classes only)."""
    found = scores(model, cfg, splits, train_codes, test_codes, per_image)
    labels = splits["test"][1].cpu()
    m = report(found, labels, kept, cfg["classes"])
    save_csv(found, labels, kept, os.path.join(run_dir, "anomaly_scores.csv"))
    aurocs = ", ".join(f"{k} AUROC {m['auroc_' + k]:.3f}" for k in found)
    normal = ", ".join(m["anomaly"]["normal_classes"])
    print(f"  anomalies: {aurocs} (normal: {normal})", flush=True)
    if folder is not None:
        os.makedirs(folder, exist_ok=True)
        figures.roc_curves(found, ~torch.isin(labels, torch.tensor(kept)), os.path.join(folder, "roc.png"),
                           f"{name}: anomalies among the test images (normal: {normal})")
        best = max(found, key=lambda k: m[f"auroc_{k}"])
        order = found[best].argsort()
        images = lambda index: data.to_unit(clean_images(splits["test"], cfg, index), cfg["output"])  # noqa: E731
        figures.image_rows([images(order[:n]), images(order.flip(0)[:n])], ["most normal", "most unusual"],
                           os.path.join(folder, "anomalies.png"),
                           f"{name}: test images by {best} (normal: {normal})")
    return m


def clean_images(split, cfg, index):
    """The clean test images at `index`, scaled as the model sees them."""
    images, labels = split
    return next(data.batches(data.rows(images, index.to(images.device)),
                             labels.index_select(0, index.to(labels.device)), len(index),
                             output=cfg["output"]))[1]
