"""Time one training step of cellpose 4's network (CPSAM, the SAM ViT-L encoder) on the CPU.

Decides whether cellpose 4 can be trained from scratch within the table's budgets (it
cannot: see README.md). Run with the cellpose venv's python, cellpose 4 and
segment_anything installed apart without their dependencies (cellpose 4 needs torchvision,
which PyPI cannot give beside this machine's CPU torch wheel):

    pip install --no-deps --target /tmp/cp4 cellpose==4.2.1.1 segment_anything
    PYTHONPATH=/tmp/cp4 python cellpose4_step.py [--threads 1] [--steps 2]

torchvision is stood in for by empty modules: cellpose 4 and segment_anything import it
only for augmentation and mask post-processing, which a network step does not use. A step
is cellpose 4's training default: a batch of 1 crop of 256 x 256 (train_seg's
batch_size=1, bsize 256), 3 input channels, forward, a loss on the 3 outputs, backward
and an AdamW update (its optimiser); augmentation and the flow loss are left out (cheap
next to the network).
"""

from __future__ import annotations

import argparse
import sys
import time
import types


class _Stub(types.ModuleType):
    def __getattr__(self, name):  # any name imported from it is a dummy
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def stub_torchvision() -> None:
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.transforms._functional_tensor", "torchvision.ops",
                 "torchvision.ops.boxes"):
        sys.modules[name] = _Stub(name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    stub_torchvision()
    from cellpose.vit import CPSAM

    t0 = time.monotonic()
    net = CPSAM()  # ViT-L from scratch (no weights), patch 8, 256 x 256 input
    net.train()
    params = sum(p.numel() for p in net.parameters())
    print(f"CPSAM built in {time.monotonic() - t0:.1f} s: {params / 1e6:.1f} M parameters")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5, weight_decay=0.1)
    x = torch.randn(1, 3, 256, 256)
    for i in range(a.steps):
        t0 = time.monotonic()
        y = net(x)[0]  # (1, 3, 256, 256)
        loss = (y ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        dt = time.monotonic() - t0
        print(f"step {i}: {dt:.1f} s ({a.threads} thread(s), batch 1, 256 x 256)")


if __name__ == "__main__":
    main()
