"""Tolerance curves of several designs in one figure (the README's comparison).

    python benchmarks/tolerance_figure.py designs/fashion-lin5/tolerance/tolerance.json \\
        designs/fashion-holder/tolerance/tolerance.json --labels "fashion-lin5,fashion-holder" \\
        --out docs/images/tolerance-fashion.png

Each input is the tolerance.json that ``d2nn tolerance --report`` wrote.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    """Read the tolerance.json files and write one PNG with their curves."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="tolerance.json files")
    p.add_argument("--labels", default=None, help="comma-separated legend labels (default: the design paths)")
    p.add_argument("--out", required=True, help="PNG to write")
    a = p.parse_args(argv)
    from diffractive._plot import save_png
    from diffractive.tolerance_report import curves_figure

    docs = [json.loads(Path(r).read_text()) for r in a.reports]
    labels = a.labels.split(",") if a.labels else None
    save_png(curves_figure(docs, labels), a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
