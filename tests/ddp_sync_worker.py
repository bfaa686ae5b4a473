"""Run by tests/test_parallel.py under torchrun: each process starts from different weights
and trains on different data for 3 steps; DistributedDataParallel must leave every
network's weights identical on all processes. Exits 1 naming the network that differs."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import flags  # noqa: E402
import parallel  # noqa: E402
import train  # noqa: E402

parallel.start()
rank = parallel.world()[0]
failed = []
for argv in (["--model", "vae"], ["--model", "ae", "--contractive", "0.1"],
             ["--model", "vaegan"], ["--model", "vaegan", "--arch", "conv"]):
    cfg, _ = flags.resolve(argv + ["--out", os.path.join(os.sep, "nonexistent", "never-written")])
    torch.manual_seed(rank)  # different weights and data on each process
    model = train.build_model(cfg, (1, 28, 28))
    opt = train.build_optimizers(model, cfg, torch.device("cpu"))
    loss = parallel.loss_fn(model, torch.device("cpu"))
    model.train()
    for _ in range(3):
        x = torch.rand(8, 1, 28, 28)
        if cfg["model"] == "vaegan":
            model.train_step(x, x, opt, loss_fn=loss)
        else:
            out = loss(x, x)
            opt["model"].zero_grad()
            out["loss"].backward()
            opt["model"].step()
    nets = ("encoder", "decoder") + (("discriminator",) if cfg["model"] == "vaegan" else ())
    mine = {n: torch.cat([p.detach().flatten() for p in getattr(model, n).parameters()]) for n in nets}
    theirs = parallel.gather(mine)
    failed += [f"{' '.join(argv)}: {n}" for n in nets if not all(torch.equal(t[n], mine[n]) for t in theirs)]
parallel.stop()
if failed:
    sys.exit("weights differ across processes: " + "; ".join(failed))
print("identical")
