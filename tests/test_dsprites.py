"""The generated dSprites grid (dsprites.py): its factors, their order, images that match
them, the real file's path, and a training run on it through the real loading code."""
import os

import numpy as np
import pytest
import torch

import data
import dsprites
import train


def test_the_grid_has_the_factor_counts_in_the_original_order():
    assert dsprites.COUNT == 737_280 and dsprites.SIZES == (3, 6, 40, 32, 32)
    f = dsprites.factors_of(torch.arange(dsprites.COUNT))
    assert [len(f[:, k].unique()) for k in range(5)] == [3, 6, 40, 32, 32]
    assert f[:3].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2]]  # y fastest
    assert f[32].tolist() == [0, 0, 0, 1, 0] and f[-1].tolist() == [2, 5, 39, 31, 31]
    assert f[245_760].tolist() == [1, 0, 0, 0, 0]  # shape slowest: 6 x 40 x 32 x 32 per shape
    assert torch.equal(dsprites.index_of(f), torch.arange(dsprites.COUNT))
    v = dsprites.values(f[[0, -1]])
    assert v[0].tolist() == [1, 0.5, 0, 0, 0]
    assert v[1].tolist() == pytest.approx([3, 1.0, 2 * np.pi * 39 / 40, 1, 1])


def test_the_splits_hold_every_position_once():
    splits = dsprites.read("/nonexistent")
    test, train_ = splits["test"][0].index, splits["train"][0].index
    assert len(test) == 10_000 and len(train_) == dsprites.COUNT - 10_000
    assert torch.equal(torch.cat([test, train_]).sort().values, torch.arange(dsprites.COUNT))
    assert torch.equal(splits["train"][1], splits["train"][0].factors()[:, 0])  # labels: the shape
    again = dsprites.read("/nonexistent")
    assert torch.equal(again["train"][0].index, train_)  # a fixed order, whatever the seed


def grid(**fixed):
    """Factor rows varying one factor over all its values, the others fixed."""
    base = {"shape": 0, "scale": 5, "orientation": 0, "x": 16, "y": 16, **fixed}
    (name, values), = [(k, v) for k, v in base.items() if isinstance(v, range)]
    rows = [[base[k] if k != name else v for k in dsprites.FACTORS] for v in values]
    return torch.tensor(rows)


def centre_of_mass(images):
    on = images[:, 0].double() / 255  # (N, 64, 64)
    idx = torch.arange(64, dtype=torch.float64) + 0.5
    mass = on.sum((1, 2))
    return (on.sum(1) * idx).sum(1) / mass, (on.sum(2) * idx).sum(1) / mass  # x (columns), y (rows)


def test_images_match_their_factors():
    for shape in range(3):
        images = dsprites.render(grid(shape=shape, x=range(32)))
        x, y = centre_of_mass(images)
        expected = 14 + 36 * torch.arange(32, dtype=torch.float64) / 31
        assert (x - (x - expected).mean() - expected).abs().max() < 0.5  # tracks x, one offset
        assert (y - y[0]).abs().max() < 0.5
        _, y = centre_of_mass(dsprites.render(grid(shape=shape, y=range(32))))
        assert (y - (y - expected).mean() - expected).abs().max() < 0.5  # y grows downwards
        rows = torch.tensor([[shape, sc, o, x, 16] for sc in range(6) for o in range(40) for x in range(4)])
        area = (dsprites.render(rows) > 0).sum((1, 2, 3)).double().view(6, 160).mean(1)  # over pixel phases
        scale = 0.5 + 0.1 * torch.arange(6, dtype=torch.float64)
        assert (area[1:] > area[:-1]).all()
        slope = torch.linalg.lstsq(torch.stack([scale.log(), torch.ones(6, dtype=torch.float64)], 1),
                                   area.log()[:, None]).solution[0].item()
        assert slope == pytest.approx(2, abs=0.15)  # area ~ scale^2, up to whole pixels
    squares = dsprites.render(grid(orientation=range(40)))
    area = (squares > 0).sum((1, 2, 3)).double()
    assert (area / area.mean() - 1).abs().max() < 0.06  # rotation keeps the area
    assert not torch.equal(squares[0], squares[5])  # and moves the pixels
    assert torch.equal(squares[0], squares[10])  # a square a quarter turn later is itself
    assert set(dsprites.render(grid(x=range(32))).unique().tolist()) == {0, 255}


def reference(factors, margin=10):
    """Every pixel of a canvas 64 + 2 margin wide tested against the shape's definition
    (dsprites.py's docstring), with no window: (N, 64 + 2 margin, 64 + 2 margin) bools."""
    v = dsprites.values(factors).float()  # float32 as the renderer: the same side of each edge
    side = 64 + 2 * margin
    pixel = torch.arange(side, dtype=torch.float32) - margin + 0.5
    cx, cy = (14 + 36 * v[:, 3])[:, None, None], (14 + 36 * v[:, 4])[:, None, None]
    r, a = (12 * v[:, 1])[:, None, None], v[:, 2][:, None, None]
    dx, dy = pixel[None, None, :] - cx, cy - pixel[None, :, None]
    u, w = (dx * a.cos() + dy * a.sin()) / r, (dy * a.cos() - dx * a.sin()) / r
    shapes = [torch.maximum(u.abs(), w.abs()) <= 2 ** -0.5, u * u + 4 * w * w <= 1,
              ((1.15 * u) ** 2 + (1.15 * (w + 0.1)) ** 2 - 1) ** 3 <= (1.15 * u) ** 2 * (1.15 * (w + 0.1)) ** 3]
    return torch.stack(shapes, 1)[torch.arange(len(factors)), factors[:, 0]]


def test_the_windowed_renderer_draws_every_shape_whole():
    """At the largest scale and the edge positions, every orientation of every shape: the
    31x31 window gives the pixels of a full-canvas test, and no pixel falls off the canvas."""
    rows = torch.tensor([[s, 5, o, x, y] for s in range(3) for o in range(40)
                         for x in (0, 1, 30, 31) for y in (0, 31)])
    full = reference(rows)
    assert (full.sum((1, 2)) == full[:, 10:74, 10:74].sum((1, 2))).all()  # nothing outside
    assert torch.equal(dsprites.render(rows)[:, 0] > 0, full[:, 10:74, 10:74])
    random = dsprites.factors_of(torch.randint(0, dsprites.COUNT, (2000,), generator=torch.Generator().manual_seed(0)))
    assert torch.equal(dsprites.render(random)[:, 0] > 0, reference(random)[:, 10:74, 10:74])


def test_batches_draw_the_images_of_their_positions():
    sprites, labels = dsprites.read("/nonexistent")["test"]
    x, target, y = next(data.batches(sprites, labels, 16))
    assert x.shape == (16, 1, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x, dsprites.render(dsprites.factors_of(sprites.index[:16])).float() / 255)
    assert torch.equal(y, labels[:16])


@pytest.fixture
def small_grid(monkeypatch):
    """A 48-image grid (shapes 3, 2 scales, 2 orientations, 2 x 2 positions), 8 held out."""
    monkeypatch.setattr(dsprites, "SIZES", (3, 2, 2, 2, 2))
    monkeypatch.setattr(dsprites, "COUNT", 48)
    monkeypatch.setattr(dsprites, "TEST_SIZE", 8)


def test_the_real_file_is_read_in_the_same_order(small_grid, tmp_path):
    rendered = dsprites.render(dsprites.factors_of(torch.arange(48)))
    flipped = (rendered[:, 0] == 0).numpy().astype(np.uint8)  # other pixels than the renderer's
    np.savez(tmp_path / dsprites.FILE, imgs=flipped)
    real = dsprites.read(str(tmp_path))["train"][0]
    assert real.bits is not None
    assert torch.equal(real.at(real.index[:5]), torch.from_numpy(flipped[real.index[:5].numpy()])[:, None] * 255)
    np.savez(tmp_path / dsprites.FILE, imgs=flipped[:40])
    with pytest.raises(ValueError, match="not \\(48, 64, 64\\)"):
        dsprites.read(str(tmp_path))


def test_a_run_on_dsprites_trains_resumes_and_refuses_other_sizes(small_grid, tmp_path, capsys):
    run = str(tmp_path / "run")
    base = ["--dataset", "dsprites", "--data-root", str(tmp_path), "--hidden", "32",
            "--latent-dim", "4", "--batch-size", "8"]
    assert train.main(base + ["--epochs", "1", "--out", run]) == 0
    assert train.main(["--resume", run, "--epochs", "2"]) == 0
    assert len(open(os.path.join(run, "history.csv")).read().splitlines()) == 3
    capsys.readouterr()
    assert train.main(base + ["--image-size", "32", "--out", str(tmp_path / "other")]) == 2
    assert "dsprites is drawn at 64x64 in grey" in capsys.readouterr().err


def test_evaluate_reports_the_disentanglement_metrics_and_their_figure(small_grid, tmp_path, capsys):
    import json

    import evaluate
    run = str(tmp_path / "run")
    assert train.main(["--dataset", "dsprites", "--data-root", str(tmp_path), "--hidden", "32",
                       "--latent-dim", "4", "--batch-size", "8", "--epochs", "1", "--out", run]) == 0
    assert evaluate.main([run]) == 0
    out = capsys.readouterr().out
    m = json.load(open(os.path.join(run, "metrics.json")))
    for key in ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness",
                "dci_informativeness", "sap"):
        assert 0 <= m[key] <= 1, key
    assert len(m["mutual_info"]) == 4 and len(m["mutual_info"][0]) == 5
    assert m["factor_names"] == list(dsprites.FACTORS) and "fid" not in m
    assert "| MIG |" in out and "sample quality is not measured" in out
    assert os.path.isfile(os.path.join(run, "eval", "factors.png"))


def test_a_factorvae_on_dsprites_gets_every_metric_and_mig_follows_the_conventions_asked(small_grid, tmp_path,
                                                                                          capsys):
    import json

    import evaluate
    run = str(tmp_path / "run")
    assert train.main(["--model", "factorvae", "--dataset", "dsprites", "--data-root", str(tmp_path), "--hidden",
                       "32", "--latent-dim", "4", "--disc-hidden", "8", "--batch-size", "8", "--epochs", "1",
                       "--out", run]) == 0
    metrics_of = lambda: json.load(open(os.path.join(run, "metrics.json")))  # noqa: E731
    assert evaluate.main([run, "--no-figures"]) == 0
    mean = metrics_of()
    for key in ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "sap", "test_loss", "kl", "active_units"):
        assert key in mean, key
    assert mean["mig_conventions"]["code"] == "mean" and mean["mig_conventions"]["bins"] == 20
    assert mean["mig_conventions"]["factors"] == list(dsprites.FACTORS) and "sklearn" in mean["mig_conventions"]
    chen = ["scale", "orientation", "x", "y"]
    assert evaluate.main([run, "--no-figures", "--mig-code", "sample", "--mig-factors", ",".join(chen)]) == 0
    sample = metrics_of()
    assert sample["mig_conventions"]["code"] == "sample" and sample["mig_conventions"]["factors"] == chen
    assert len(sample["mutual_info"][0]) == 4 and sample["factor_names"] == chen
    assert sample["factor_vae"] == mean["factor_vae"] and sample["mig"] != mean["mig"]  # MIG's alone
    capsys.readouterr()
    assert evaluate.main([run, "--no-figures", "--mig-factors", "colour"]) == 2
    assert "colour is not a factor of dsprites" in capsys.readouterr().err


@pytest.mark.e2e
def test_the_factor_metrics_are_the_metrics_of_the_model_itself(small_grid, tmp_path):
    """evaluate.py's look-up table of the grid's codes gives the numbers of calling the
    model on each drawn image."""
    import disentanglement
    import evaluate
    run = str(tmp_path / "run")
    assert train.main(["--dataset", "dsprites", "--data-root", str(tmp_path), "--hidden", "32",
                       "--latent-dim", "3", "--batch-size", "8", "--epochs", "1", "--out", run]) == 0
    cfg, model = evaluate.load_run(run)[:2]
    model.eval()
    splits = data.load("dsprites", str(tmp_path))
    looked_up = evaluate.factor_metrics(model, cfg, splits, seed=3)
    truth = data.ground_truth("dsprites", splits)
    direct = disentanglement.evaluate_all(lambda x: model.latent(x), truth, seed=3)
    for key in ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "sap"):
        assert looked_up[key] == pytest.approx(direct[key], abs=1e-9), key
