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
        expected = 12 + 40 * torch.arange(32, dtype=torch.float64) / 31
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
    assert torch.equal(real[:5], torch.from_numpy(flipped[real.index[:5].numpy()])[:, None] * 255)
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
