"""Run by tests/test_parallel.py under torchrun: each process starts from different weights
and trains on different data for 3 steps; DistributedDataParallel must leave every
network's weights identical on all processes. Exits 1 naming the network that differs."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import models  # noqa: E402
import parallel  # noqa: E402
import train  # noqa: E402

parallel.start()
rank = parallel.world()[0]
failed = []
for argv in (["--model", "vae"], ["--model", "ae", "--contractive", "0.1"],
             ["--model", "vaegan"], ["--model", "vaegan", "--arch", "conv"], ["--model", "cvae"]):
    cfg, _ = train.resolve(argv + ["--out", os.path.join(os.sep, "nonexistent", "never-written")])
    torch.manual_seed(rank)  # different weights and data on each process
    model = models.from_config(cfg)
    opt = train.build_optimizers(model, cfg, torch.device("cpu"))
    loss = parallel.loss_fn(model, torch.device("cpu"))
    model.train()
    for _ in range(3):
        x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
        train.train_step(model, loss, opt, model.parameter_groups(), x, x, y, cfg["l1"], cfg["grad_clip"])
    mine = {n: torch.cat([p.detach().flatten() for p in ps]) for n, ps in model.parameter_groups().items()}
    theirs = parallel.gather(mine)
    failed += [f"{' '.join(argv)}: {n}" for n in mine if not all(torch.equal(t[n], mine[n]) for t in theirs)]
if not failed:
    print("identical", flush=True)  # before leaving the group, so an abort there still shows the result
parallel.stop()
if failed:
    sys.exit("weights differ across processes: " + "; ".join(failed))
