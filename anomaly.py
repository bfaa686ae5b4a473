"""Anomaly detection with a run trained on some classes (train.py --classes): every test
image scored by how unusual it is, the test images of the other classes as the anomalies.

Scores (evaluate.py calls detect), higher for the more unusual:
    recon_error    ||x - x_hat||^2 summed over the [0, 1] pixels (z = mu, or the code h)
    code_distance  the mean distance from the image's code to its 5 nearest training codes
    nll_iw         the importance-sampled -log p(x) (VAE family, with --iw-samples K)
    and each model's own (models.py, anomaly_scores): the VAE's negative ELBO (nelbo), the
    VAE-GAN's -logit D(x) (discriminator).
Each is measured by the AUROC and the AUPRC (anomalies positive) over all test images and
per held-out class (the normal class's test images against that class's).
"""
import csv
import io
import os

import torch

import data
import figures
import metrics
import runs
from measure import codes_of, some_train, test_inputs

NEAREST = 5  # code_distance: the training codes averaged over


@torch.no_grad()
def scores(model, cfg, splits, test_codes, per_image):
    """{score: (N,) over the test split} (module docstring); per_image: what measure kept."""
    found = {"recon_error": []}
    for x, target, y in data.eval_batches(splits["test"], cfg["output"], data.parse_noise(cfg["noise"])):
        clean = data.to_unit(target, cfg["output"])
        rec = data.to_unit(model.reconstruct(x, y), cfg["output"])
        found["recon_error"].append((rec - clean).pow(2).flatten(1).sum(1))
        for name, v in model.anomaly_scores(x, target, y).items():
            found.setdefault(name, []).append(v.float())
    found = {k: torch.cat(v).cpu() for k, v in found.items()}
    train_codes = codes_of(model, some_train(splits), cfg["output"], cfg["noise"]).float()  # of the run's classes
    found["code_distance"] = torch.cat([
        torch.cdist(part.float(), train_codes).topk(min(NEAREST, len(train_codes)), dim=1,
                                                    largest=False).values.mean(1)
        for part in test_codes.split(1000)]).cpu()
    if "nll_iw" in per_image:
        found["nll_iw"] = per_image["nll_iw"].float().cpu()
    return found


def detect(model, cfg, splits, test_codes, per_image, run_dir, folder, name, n):
    """Every score of a run trained on some classes and their AUROC and AUPRC, over all test
    images and per held-out class (returned, for metrics.json); anomaly_scores.csv in the run
    folder; with a folder, roc.png and anomalies.png (the n most normal and most unusual test
    images by the best score). splits: as the run was trained (its classes' training split)."""
    found, kept = scores(model, cfg, splits, test_codes, per_image), data.kept_classes(cfg)
    images, labels = splits["test"]
    normal = torch.isin(labels.cpu(), torch.tensor(kept))
    m = report(found, labels.cpu(), normal, [cfg["classes"][c] for c in kept], cfg["classes"])
    save_csv(found, labels.cpu(), normal, os.path.join(run_dir, "anomaly_scores.csv"))
    classes = ", ".join(m["anomaly"]["normal_classes"])
    print("  anomalies: " + ", ".join(f"{k} AUROC {m['auroc_' + k]:.3f}" for k in found)
          + f" (normal: {classes})", flush=True)
    if folder is not None:
        os.makedirs(folder, exist_ok=True)
        figures.roc_curves(found, ~normal, os.path.join(folder, "roc.png"),
                           f"{name}: anomalies among the test images (normal: {classes})")
        best = max(found, key=lambda k: m[f"auroc_{k}"])
        order = found[best].argsort()
        clean = [data.to_unit(test_inputs((images[i.to(images.device)], labels[i.to(labels.device)]), cfg["output"],
                                          cfg["noise"])[1], cfg["output"]) for i in (order[:n], order.flip(0)[:n])]
        figures.image_rows(clean, ["most normal", "most unusual"], os.path.join(folder, "anomalies.png"),
                           f"{name}: test images by {best} (normal: {classes})")
    return m


def report(found, labels, normal, normal_names, names):
    """{"auroc_<score>", "auprc_<score>" over all test images; "anomaly": the normal classes,
    the counts, and per held-out class each score's AUROC and AUPRC}."""
    out = {"anomaly": {"normal_classes": normal_names, "test_normal": int(normal.sum()),
                       "test_anomalous": int((~normal).sum()), "per_class": {}}}
    for score, s in found.items():
        out[f"auroc_{score}"] = metrics.auroc(s, ~normal)
        out[f"auprc_{score}"] = metrics.average_precision(s, ~normal)
        per = out["anomaly"]["per_class"][score] = {}
        for c in sorted(set(labels[~normal].tolist())):  # the normal images against class c's
            pick = normal | (labels == c)
            per[names[c]] = {"auroc": metrics.auroc(s[pick], labels[pick] == c),
                             "auprc": metrics.average_precision(s[pick], labels[pick] == c)}
    return out


def save_csv(found, labels, normal, path):
    """One row per test image: its index in the test split, label, whether it is of a
    normal class, and every score."""
    text = io.StringIO()
    csv.writer(text).writerows([["index", "label", "normal", *found]] + [
        [i, int(labels[i]), int(normal[i]), *(f"{s[i].item():.6g}" for s in found.values())]
        for i in range(len(labels))])
    runs.atomic_save(text.getvalue(), path)
