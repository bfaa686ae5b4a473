"""examples/quickstart.ipynb runs from top to bottom (on tiny data, one epoch), so it cannot rot."""
import os

import nbclient
import nbformat
import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@pytest.mark.e2e
def test_the_quickstart_notebook_runs_and_shows_its_figures(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_DATA", tiny_data)
    monkeypatch.setenv("QUICKSTART_RUNS", str(tmp_path))
    monkeypatch.setenv("QUICKSTART_EPOCHS", "1")
    nb = nbformat.read(os.path.join(ROOT, "examples", "quickstart.ipynb"), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # kept clean
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(ROOT, "examples")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5
    runs_made = sorted(n for n in os.listdir(tmp_path) if n.startswith("quickstart-"))
    assert [r.split("-")[1] for r in runs_made] == ["ae", "vae"]
    printed = "".join(o.get("text", "") for o in outputs)
    assert "test reconstruction term, nats per image: VAE " in printed and "vae mnist latent 2 epoch 1" in printed
