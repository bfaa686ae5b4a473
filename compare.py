"""The figures of several runs side by side (evaluate.py), one of each per dataset, with a
_<dataset> suffix when there are several. done: each run's name -> what evaluate.py kept of
it: cfg, m (its metrics.json), history, kind (what its loss is) and drawn (n test images,
their reconstructions, its samples or None)."""
import os

import figures
from tables import groups, label


def curves(histories, path, kinds):
    """loss_curves.png (the loss and the objective's terms) and, when the runs logged any,
    training_internals.png (gradient norms, the discriminator's numbers, skipped steps)."""
    main, internal = figures.split_terms(figures.history_terms(histories))
    figures.loss_curves(histories, path("loss_curves.png"), main, kinds=kinds)
    if internal:
        figures.loss_curves(histories, path("training_internals.png"), internal)


def side_by_side(done, out):
    """The comparison figures, into folder `out` (no axes shared across datasets)."""
    path = lambda f, suffix="": os.path.join(out, f.replace(".png", suffix + ".png"))  # noqa: E731
    datasets = {}
    for k, r in done.items():
        datasets.setdefault(r["cfg"]["dataset"], {})[k] = r
    sampling = [d for d, mine in datasets.items() if any(r["drawn"][2] is not None for r in mine.values())]
    for d, mine in datasets.items():
        suffix = "" if len(datasets) == 1 else "_" + d.replace(":", "-").replace("/", "-")
        first = next(iter(mine.values()))["drawn"][0]  # the test images of the first run
        figures.reconstructions(first, {k: r["drawn"][1] for k, r in mine.items()},
                                path("reconstructions.png", suffix),
                                "test images and each run's reconstructions (VAEs: z = μ; AEs: code h)")
        if d in sampling:
            sampled = {k: r["drawn"][2] for k, r in mine.items() if r["drawn"][2] is not None}
            figures.image_rows(list(sampled.values()), [figures.short(k) for k in sampled],
                               path("samples.png", "" if len(sampling) == 1 else suffix), "samples from the "
                               "prior, one row per run (the same z in runs of one latent size)")
        curves({k: r["history"] for k, r in mine.items()}, lambda f: path(f, suffix),
               {k: r["kind"] for k, r in mine.items()})
    kls = {k: r["m"]["kl_per_dim"] for k, r in done.items() if "kl_per_dim" in r["m"]}
    if kls:
        figures.kl_bars(kls, path("kl_per_dim.png"))
    grouped = groups([(k, r["m"]) for k, r in done.items()], {k: r["cfg"] for k, r in done.items()})
    if any(len(names) > 1 for names in grouped.values()):  # a mean line and a band per group
        figures.loss_curves({k: r["history"] for k, r in done.items()}, path("loss_curves_groups.png"),
                            groups={label(s): names for s, names in grouped.items()})
