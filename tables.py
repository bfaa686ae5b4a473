"""evaluate.py's tables: one markdown row per run, and the runs that differ only in the seed
grouped (mean ± std over the seeds, n), each two groups that differ in one setting compared
(the difference, its 95% confidence interval and Welch's t-test p-value). markdown() lays out
reproduce.py's tables too."""
import json
import math

import metrics

COLUMNS = [("test_loss", "test loss", 2), ("train_loss", "train loss", 2), ("gap", "gap", 2),
           ("nelbo", "NELBO", 2), ("nll_iw", "NLL (IW)", 2), ("bits_per_dim", "bits/dim", 3),
           ("mse", "MSE", 4), ("psnr", "PSNR dB", 2), ("psnr_noisy", "noisy PSNR", 2),
           ("active_units", "AU", 0), ("probe_accuracy", "probe acc", 3),
           ("acc_real", "D real", 2), ("acc_rec", "D rec", 2), ("acc_prior", "D prior", 2),
           ("fid", "FID", 2), ("fid_gmm", "FID gmm", 2), ("fid_two_stage", "FID 2-stage", 2),
           ("kid", "KID", 4), ("precision", "precision", 3),
           ("recall", "recall", 3), ("fid_recon", "FID rec", 2), ("class_match", "class match", 3),
           ("fid_inception", "FID (Inc.)", 2), ("kid_inception", "KID (Inc.)", 4),
           ("fid_recon_inception", "FID rec (Inc.)", 2), ("beta_vae", "BetaVAE", 3),
           ("factor_vae", "FactorVAE", 3), ("mig", "MIG", 3), ("dci_disentanglement", "DCI D", 3),
           ("dci_completeness", "DCI C", 3), ("dci_informativeness", "DCI I", 3), ("sap", "SAP", 3),
           ("auroc_recon_error", "AUROC rec", 3), ("auroc_nelbo", "AUROC ELBO", 3),
           ("auroc_nll_iw", "AUROC NLL", 3), ("auroc_code_distance", "AUROC code", 3),
           ("auroc_discriminator", "AUROC D", 3)]


def markdown(heads, rows):
    """The lines of a markdown table: the header, the rule, one line per row of cells."""
    return ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|",
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def cell(m, key, digits):
    """One number of the table; a bce decoder's likelihoods carry a * (see the footnote)."""
    if key not in m:
        return "-"
    bernoulli = m.get("likelihood") == "bce" and key in ("nll_iw", "nelbo", "bits_per_dim")
    return f"{m[key]:.{digits}f}" + ("*" if bernoulli else "")


NOT_SETTINGS = {"seed", "out", "command", "resume_commands", "resume", "data", "device",
                "log_interval", "compile", "channels_last", "data_budget", "download",
                "data_root", "classes", "format"}  # runs that differ only in these form one group
IMPLIED = {"augment": ("hflip", "crop")}  # a setting that sets others: compared as one
GROUPED = [(key, name, 1 if key == "active_units" else digits) for key, name, digits in COLUMNS
           if key not in {"train_loss", "gap", "bits_per_dim", "psnr_noisy", "acc_real", "acc_rec",
                          "acc_prior", "class_match", "kid_inception", "fid_recon_inception",
                          "dci_completeness", "dci_informativeness"}]  # group_table's columns
COMPARED = ("test_loss", "nll_iw", "mse", "fid", "mig")  # the differences group_table tests


def groups(rows, configs):
    """{setting: [run names]} for runs whose configs differ only in the seed (and
    NOT_SETTINGS); a setting is ((key, value), ...) of the config keys that differ between
    the groups."""
    settings = {name: {**{k: json.dumps(v) for k, v in configs[name].items() if k not in NOT_SETTINGS},
                       "epoch": str(m["epoch"])} for name, m in rows}  # --partial: another epoch
    keys = sorted({k for c in settings.values() for k in c})
    varying = [k for k in keys if len({c.get(k) for c in settings.values()}) > 1]
    implied = {k for key, ks in IMPLIED.items() if key in varying for k in ks}
    varying = [k for k in varying if k not in implied]
    by_setting = {}
    for name, _ in rows:
        by_setting.setdefault(tuple((k, settings[name].get(k, "-")) for k in varying), []).append(name)
    return by_setting


def label(setting, only=None):
    """'dropout=0.3, beta=4' of a setting (its keys in `only`, when given)."""
    return ", ".join(f"{k}={v}" for k, v in setting if only is None or k in only) or "all runs"


def group_table(rows, configs):
    """Each group's metrics as mean +- std over its seeds, with n, then comparisons(); empty
    when no group has two runs."""
    found, named = dict(rows), groups(rows, configs)
    by_setting = {setting: [found[n] for n in names] for setting, names in named.items()}
    if all(len(ms) < 2 for ms in by_setting.values()):
        return ""
    cols = [c for c in GROUPED if any(c[0] in m for _, m in rows)]
    repeated = [s for s, names in named.items()
                if len({configs[n]["seed"] for n in names}) < len(names)]
    cells = []
    for setting, ms in by_setting.items():
        cells.append([label(setting), str(len(ms))])
        for key, _, digits in cols:
            values = [m[key] for m in ms if key in m]
            mean, std = metrics.mean_std(values) if values else (0, 0)
            cells[-1].append(f"{mean:.{digits}f} ± {std:.{digits}f}" if values else "-")
    lines = markdown(["setting", "n", *(c[1] for c in cols)], cells)
    lines.append("\nMean ± standard deviation over each group's seeds (n runs)."
                 + "".join(f" {label(s)} repeats a seed: its runs are not independent, and it "
                           f"is not compared." for s in repeated))
    return "\n".join(lines + comparisons(by_setting, cols, repeated))


def comparisons(by_setting, cols, repeated):
    """For two groups that differ in one setting, the difference of each COMPARED metric with
    its 95% confidence interval and Welch's t-test p-value."""
    lines, settings = [], list(by_setting)
    for i, a in enumerate(settings):
        for b in settings[i + 1:]:
            differ = [k for (k, x), (_, y) in zip(a, b) if x != y]
            if len(differ) != 1 or a in repeated or b in repeated:
                continue
            rest = [k for k, _ in a if k not in differ]
            where = f" (at {label(a, rest)})" if rest else ""
            for key, name, digits in cols:
                of_b = [m[key] for m in by_setting[b] if key in m]
                of_a = [m[key] for m in by_setting[a] if key in m]
                if key not in COMPARED or len(of_a) < 2 or len(of_b) < 2:
                    continue
                diff, (low, high), p, _ = metrics.welch(of_b, of_a)
                test = ("no spread over the seeds: the test is undefined" if math.isnan(p) else
                        f"95% CI {low:+.{digits}f} to {high:+.{digits}f}; Welch's t-test p = {p:.2g}")
                lines.append(f"- {name}, {label(b, differ)} minus {label(a, differ)}{where}: "
                             f"{diff:+.{digits}f} ({test}, n = {len(of_b)} and {len(of_a)})")
    return lines


def feature_notes(rows):
    """The footnote naming the feature space(s) and counts behind the FID columns; a warning
    when the runs' numbers come from different feature networks or test images."""
    notes = []
    for space, what in (("domain", "FID, KID, precision, recall"), ("inception", "(Inc.)")):
        seen = {}
        for _, m in rows:
            f = m.get("features", {}).get(space)
            if f:
                seen.setdefault((f["hash"], f["test_images"]), (f, set()))[1].add(f["samples"])
        for (digest, reals), (f, counts) in seen.items():
            accuracy = f" (test accuracy {100 * f['test_accuracy']:.2f}%)" if "test_accuracy" in f else ""
            samples = " or ".join(f"{c:,}" for c in sorted(counts - {0})) or "no"
            notes.append(f"\n{what}: in the features of the {f['name']}, weights {digest}"
                         f"{accuracy}; {samples} samples (FID rec: the reconstructions) against "
                         f"{reals:,} test images. Not comparable with numbers from another "
                         f"feature network or other counts.")
        if len(seen) > 1:
            notes.append(f"\nWarning: the runs' {what} numbers come from {len(seen)} different "
                         f"feature networks or test sets (above); compare only rows that share one.")
    return notes


def table(rows):
    """A markdown table, one row per run, the columns any run has."""
    cols = [c for c in COLUMNS if any(c[0] in m for _, m in rows)]
    k = next((m["iw_samples"] for _, m in rows if "iw_samples" in m), None)
    heads = ["run", "model", "epoch", *(f"NLL (K={k})" if c[0] == "nll_iw" else c[1] for c in cols)]
    lines = markdown(heads, [[name, m["model"], str(m["epoch"]), *(cell(m, key, d) for key, _, d in cols)]
                             for name, m in rows])
    if len({m["model"] for _, m in rows}) > 1:
        lines.append("\nThe test loss is each model's own quantity: a negative ELBO with z "
                     "sampled once (vae, cvae), the reconstruction term (ae), the reconstruction "
                     "with z = mu plus KL, not a bound (vaegan); compare models on NELBO or MSE.")
    lines += feature_notes(rows)
    if any(m.get("likelihood") == "bce" and "nll_iw" in m for _, m in rows):
        lines.append("\n\\* bce (Bernoulli) decoder: a cross-entropy on grey levels, not a "
                     "likelihood of the pixel values; compare it with other bce runs only.")
    return "\n".join(lines)


def spread(values):
    """'mean ± std' of the values given (no ± for one; 4 decimals below 1, else 2), or names."""
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if isinstance(values[0], str):  # a name, such as the feature network's hash
        return ", ".join(dict.fromkeys(values))
    digits = 4 if abs(values[0]) < 1 else 2
    mean, std = metrics.mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")
