"""What superpixels cost in capacity: backprop with block-constant phases, block by block size.

The zeroth-order rules (ES, SPSA, GA) can cut their dimension with superpixels (``block``:
one parameter per b x b pixels). This script measures the price of that cut where it is
cheap to measure: it trains the same network with backprop (the shared Trainer) with
phases held constant over b x b blocks, for each ``--blocks`` size, and prints validation
and test accuracy. Block-constant training is exact, not projected: the phases start as
the expansion of one value per block, and a gradient hook replaces each pixel's gradient
by the sum over its block, so Adam's identical per-pixel states give identical updates —
Adam on the block parameters (Adam is invariant to the b^2 scale of the summed gradient,
up to its eps).

    python benchmarks/superpixels.py --dataset fashion-mnist --train 0 --epochs 3 --blocks 1,2
    python benchmarks/superpixels.py --grid 80 --layers 3 --distance 20e-3 --input-size 16e-3 \\
        --det-size 3.2e-3 --det-spacing 7.2e-3 --blocks 1,4 --epochs 1 --dataset fashion-mnist --train 0

Defaults are the geometry of benchmarks/rules.py (2 layers of 40 x 40 at 0.4 mm, 16 mm).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rules import add_network_arguments, base_doc  # noqa: E402


def main(argv=None):
    """Train backprop with b x b block-constant phases for each ``--blocks`` b and print the table.

    Returns 0 when every run's final phases are still block-constant, else 1.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_network_arguments(p, dataset="fashion-mnist", train=0, val=2000, epochs=3)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--blocks", default="1,2", help="comma-separated block sizes")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from training.config import parse_config
    from training.datasets import load_split
    from training.rules.common import Superpixels
    from training.trainer import Trainer

    blocks = [int(b) for b in a.blocks.split(",")]
    if any(b < 1 for b in blocks):
        p.error("--blocks: sizes must be positive integers")
    # Data to train from the config of rules.base_doc, handed to each Trainer (data=): the split that config
    # describes ([data] sets no split_seed / val_fraction: seed 0, fraction 0.1), which the Trainer records in
    # the design's provenance. No design is evaluated here outside the Trainer (validation and test
    # accuracies are its own metrics), so there is no design_split call.
    data = (load_split(a.dataset, "train", limit=a.train or None, seed=0),
            load_split(a.dataset, "val", limit=a.val or None, seed=0),
            load_split(a.dataset, "test", limit=a.test or None))
    print(f"{a.dataset}: {len(data[0][1])} train / {len(data[1][1])} val / {len(data[2][1])} test images; "
          f"{a.layers} layers of {a.grid}x{a.grid} at 0.4 mm, {a.distance * 1e3:g} mm; {a.epochs} epochs, "
          f"backprop, lr {a.lr} cosine", flush=True)
    rows = []
    for b in blocks:
        cfg = parse_config(base_doc(a, "backprop", learning_rate=a.lr))
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, Path(tmp) / f"block{b}", data=data, log=lambda *x: None)
            phase = trainer.model.phase
            sp = Superpixels(tuple(phase.shape), b)
            if b > 1:
                with torch.no_grad():
                    phase.copy_(torch.from_numpy(np.ascontiguousarray(sp.expand(sp.theta(phase.detach().numpy())))))

                def block_sum(g, sp=sp):
                    return torch.from_numpy(np.ascontiguousarray(sp.expand(sp.block_sums(g.numpy()))))

                phase.register_hook(block_sum)
            start = time.perf_counter()
            metrics = trainer.run()
            seconds = time.perf_counter() - start
            final = trainer.model.phase.detach().numpy()
            constant = np.array_equal(final, sp.expand(sp.theta(final)))
        vals = [h["val_accuracy"] for h in metrics["history"]]
        rows.append((b, sp.size, vals, metrics["test_accuracy"], seconds, constant))
        print(f"block {b}: {sp.size} parameters, validation by epoch "
              f"{', '.join(f'{100 * v:.1f}' for v in vals)} %, test {100 * metrics['test_accuracy']:.2f} %, "
              f"{seconds:.0f} s, phases block-constant at the end: {constant}", flush=True)
    print("\n| block | parameters | best validation | test | time (s) |\n|---|---|---|---|---|")
    for b, n, vals, test, seconds, _ in rows:
        print(f"| {b} × {b} | {n:,} | {100 * max(vals):.1f} % | {100 * test:.2f} % | {seconds:.0f} |")
    return 0 if all(r[5] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
