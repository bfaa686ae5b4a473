"""figures.py's files: each figure's PNG and size, loss curves' units and legends, KL bars, slerp."""
import os

import torch
from PIL import Image

import figures
from vae import VAE


def png_size(path):
    assert os.path.getsize(path) > 0
    with Image.open(path) as im:
        return im.size


def test_each_figure_writes_a_png_of_the_expected_size(tmp_path):
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=2, hidden=(16,)).eval()
    x = torch.rand(4, 1, 28, 28)
    p = lambda name: str(tmp_path / name)  # noqa: E731
    cell = 2 * 30  # 28 pixels + 2 of padding, drawn at 2x
    grid_w = lambda n: 2 * (n * 30 + 2)  # noqa: E731
    # the left margin holds the longest row label, 8 pixels a character
    width = lambda n, longest: figures.RIGHT + 8 * longest + grid_w(n) + figures.RIGHT  # noqa: E731
    height = lambda rows, xlab=False: figures.TOP + rows * cell + 4 + figures.BOTTOM + 20 * xlab  # noqa: E731
    figures.reconstructions(x, {"run a": x, "run b": x}, p("rec.png"))
    assert png_size(p("rec.png")) == (width(4, len("original")), height(3)) == (328, 224)
    figures.denoising(x, x, x, p("den.png"))
    assert png_size(p("den.png")) == (width(4, len("noisy input")), height(3))
    figures.samples(model, 3, p("samples.png"), "samples", torch.Generator().manual_seed(0))
    assert png_size(p("samples.png")) == (width(3, 0), height(3))  # no row labels, no margin
    figures.manifold(model, 5, p("manifold.png"), "manifold")  # and "z1" under the columns
    assert png_size(p("manifold.png")) == (width(5, len("z2 = +1.6")), height(5, True) + 20)
    figures.interpolations(model, x[:2], x[2:], 6, p("interp.png"))  # the two images at the ends
    assert png_size(p("interp.png")) == (width(6 + 2, len("pair 1: spherical")), height(4, True))  # 2 pairs x (linear, slerp)
    figures.traversal(model, x, [1, 0], torch.zeros(2), torch.ones(2), 6, p("trav.png"), "t", ["a", "b"])
    # the image, then 7 values (6 made odd, so that 0 is among them), an axis label below
    assert png_size(p("trav.png")) == (width(1 + 7, 1), height(2, True) + 20)
    figures.latent_scatter(torch.randn(50, 5), torch.arange(50) % 10, p("latent.png"), "codes")
    assert png_size(p("latent.png")) == (640, 560)
    rows = [{"epoch": e, "train_loss": 10 - e, "test_loss": 11 - e, "train_kl": e, "test_kl": e,
             "train_recon": 9, "test_recon": 9, "train_skips_disc": 0} for e in (1, 2, 3)]
    figures.loss_curves({"a": rows, "b": rows[:2]}, p("curves.png"))
    # a skip count that stayed 0 has no panel; the legend below: 4 lines, two to a row
    assert png_size(p("curves.png")) == (1200, 300 + 2 * 14 + 10)
    rows[1]["train_skips_disc"] = 4
    figures.loss_curves({"a": rows}, p("curves.png"))
    assert png_size(p("curves.png")) == (800, 600 + 14 + 10)  # 4 panels: two rows of two
    figures.kl_bars({"a": torch.rand(6), "b": torch.rand(6)}, p("kl.png"))
    assert png_size(p("kl.png")) == (640, 460)


def test_loss_curves_have_whole_epochs_units_and_a_legend_outside_the_panels(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.append(fig))
    rows = [{"epoch": 1, "train_loss": 39.54, "test_loss": 39.61, "train_grad_norm": 3.0}]
    figures.loss_curves({"a": rows}, str(tmp_path / "c.png"))  # one epoch, nearly equal losses
    fig = drawn[0]
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_legend() is None  # one legend, the figure's
        low, high = ax.get_ylim()
        assert high - low >= 0.019 * max(abs(low), abs(high))  # noise is not blown up
    units = {ax.get_title(): ax.get_ylabel() for ax in fig.axes}
    assert units == {"loss": "nats per image", "grad_norm": "gradient norm (mean per step)"}
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == ["a train", "a test"]


def test_loss_curves_tell_apart_losses_of_different_kinds_and_keep_internals_apart(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.append(fig))
    rows = [{"epoch": e, "train_loss": 10 - e, "test_loss": 11 - e, "train_recon": 9,
             "train_grad_norm": 2.0, "train_acc_real": 0.5} for e in (1, 2)]
    main, internal = figures.split_terms(figures.history_terms({"a": rows}))
    assert main == ["loss", "recon"] and internal == ["grad_norm", "acc_real"]
    figures.loss_curves({"ae": rows, "vae": rows}, "c.png", main, kinds={"ae": "reconstruction term",
                                                                       "vae": "negative ELBO"})
    loss_panel = drawn[0].axes[0]
    assert "different quantities" in loss_panel.get_title()
    assert [t.get_text() for t in loss_panel.get_legend().get_texts()] == [
        "ae train [reconstruction term]", "ae test [reconstruction term]",
        "vae train [negative ELBO]", "vae test [negative ELBO]"]
    figures.loss_curves({"a": rows, "b": rows}, "c.png", main, kinds={"a": "negative ELBO", "b": "negative ELBO"})
    assert drawn[1].axes[0].get_title() == "loss" and drawn[1].axes[0].get_legend() is None


def test_kl_bars_are_sorted_numbered_from_1_on_one_scale(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.append(fig))
    figures.kl_bars({"a": torch.tensor([0.1, 3.0, 1.0]), "b": torch.tensor([0.5, 0.2, 0.0])}, "kl.png")
    a, b = drawn[0].axes
    assert [t.get_text() for t in a.get_xticklabels()] == ["2", "3", "1"]
    assert [round(p.get_height(), 2) for p in a.patches] == [3.0, 1.0, 0.1]
    assert a.get_ylim() == b.get_ylim()


def test_slerp_keeps_the_norm_between_vectors_of_equal_norm():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    z = figures.slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(z.norm(dim=1), torch.full((5,), 3.0))
    assert torch.allclose(z[0], a) and torch.allclose(z[-1], b, atol=1e-6)


def test_an_interrupted_save_leaves_the_last_figure_whole(tmp_path):
    path = str(tmp_path / "samples.png")
    figures.save(figures.figure(40, 30), path)
    before = open(path, "rb").read()

    class Interrupted:
        def savefig(self, target, **kw):
            target.write(before[:10])  # half a PNG, then Ctrl-C
            raise KeyboardInterrupt

    try:
        figures.save(Interrupted(), path)
    except KeyboardInterrupt:
        pass
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["samples.png"]
    png_size(path)
