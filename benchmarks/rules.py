"""Learning rules compared: test accuracy against forward evaluations and wall time.

Every rule trains the same geometry on the same data with the shared Trainer
(training/trainer.py): backprop, ES, SPSA, GA, DFA, HSIC (and its ablation that trains
only the last layer), physics-aware training, and the floor — random fixed masks, nothing
trained (mean and spread over a few seeds). ``hsic-all`` gives the last layer the HSIC
objective too; ``hsic-frozen`` trains only the last layer (on the loss), the ablation that
shows what the HSIC-trained layers add. For PAT the backprop design is also evaluated
on the same mismatched "physics", and the table gives the share of backprop's loss of
accuracy that PAT recovers. DFA's alignment (angle between its update and the true
gradient, per layer) and HSIC's final nHSIC(Z_l, Y) are measured on a validation batch.

"Forward evaluations" counts single-image simulations (or lab measurements) the rule
spent; backprop and the layer-local rules also run one adjoint pass per image (DFA and
HSIC only local ones), PAT two forwards (physics and twin) and one adjoint.

    python benchmarks/rules.py                       # the small scale (minutes on 2 cores)
    python benchmarks/rules.py --dataset fashion-mnist --grid 200 --layers 5 --distance 30e-3 \\
        --input-size 44.8e-3 --det-size 4.8e-3 --det-spacing 12e-3 --train 0 --epochs 10   # Lin scale
    python benchmarks/rules.py --rules es,backprop --json out.json

``--train 0`` uses the whole training split. Results print as a Markdown table; ``--json``
also stores the per-epoch curves (validation accuracy against evaluations and seconds).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RULES = ["floor", "backprop", "es", "spsa", "ga", "dfa", "hsic", "hsic-all", "hsic-frozen", "pat"]

# per-rule settings at the small scale (options, trainer overrides)
SETTINGS = {
    "backprop": ({}, {"learning_rate": 0.05}),
    "es": ({"pairs": 16, "block": 2, "sigma": 0.1}, {"learning_rate": 0.1}),
    "spsa": ({"averages": 4, "block": 2, "c": 0.1}, {"learning_rate": 0.1}),
    "ga": ({"population": 24, "parents": 6, "sigma": 0.1, "block": 2}, {}),
    "dfa": ({}, {"learning_rate": 0.05}),
    "hsic": ({"pool": 4, "beta": 20.0}, {"learning_rate": 0.05}),
    "hsic-all": ({"pool": 4, "beta": 20.0, "last_layer": "hsic"}, {"learning_rate": 0.05}),
    "hsic-frozen": ({"pool": 4, "hidden_layers": "frozen"}, {"learning_rate": 0.05}),
    "pat": ({"distance_error_m": None, "z_step_m": 0.1e-3, "shift_px": None}, {"learning_rate": 0.05}),
}


def base_doc(a, rule="backprop", options=None, **trainer):
    """The config document (as :func:`training.config.parse_config` reads it) of the benchmark network.

    ``a``: the parsed options of :func:`add_network_arguments` (``--distance``,
    ``--input-size``, ``--det-size``, ``--det-spacing`` in metres; 0.4 mm pitch); ``rule``
    and its ``options`` (the ``[trainer.<rule>]`` table, None for none); ``trainer``:
    further ``[trainer]`` keys. ``[data]`` names only the dataset, so the split is the
    default one (split seed 0, validation fraction 0.1).
    """
    L = a.layers
    doc = {"name": f"bench-{rule}",
           "geometry": {"layer_shape": [a.grid, a.grid], "n_layers": L, "distance_m": a.distance, "pitch_m": 0.4e-3},
           "input": {"size_yx_m": [a.input_size, a.input_size]},
           "detectors": {"size_m": a.det_size, "spacing_m": a.det_spacing},
           "data": {"dataset": a.dataset},
           "trainer": {"rule": rule, "epochs": a.epochs, "batch_size": a.batch, "workers": a.workers,
                       "checkpoint_every": 10 ** 6, "seed": a.seed, **trainer}}
    if options is not None:
        doc["trainer"][rule] = options
    return doc


def pat_options(a):
    """PAT's options: gap errors of ``--pat-distance-error`` metres (alternating sign, one per
    gap, L+1) and layer shifts of ``--pat-shift`` pixels (alternating per layer and axis, (L, 2))."""
    o = dict(SETTINGS["pat"][0])
    d = a.pat_distance_error
    o["distance_error_m"] = [d * (-1) ** i for i in range(a.layers + 1)]
    o["shift_px"] = [[a.pat_shift * (-1) ** l, a.pat_shift * (-1) ** (l + 1)] for l in range(a.layers)]
    return o


def add_network_arguments(p, dataset="mnist", train=3000, val=500, epochs=3):
    """The network, data and run options :func:`base_doc` reads (shared with superpixels.py).

    ``--distance``, ``--input-size``, ``--det-size`` and ``--det-spacing`` are in metres;
    ``--train``, ``--val``, ``--test`` count images (0: the whole split where allowed).
    """
    p.add_argument("--dataset", default=dataset)
    p.add_argument("--grid", type=int, default=40)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--distance", type=float, default=16e-3)
    p.add_argument("--input-size", type=float, default=8e-3)
    p.add_argument("--det-size", type=float, default=1.6e-3)
    p.add_argument("--det-spacing", type=float, default=3.6e-3)
    p.add_argument("--train", type=int, default=train, help="training images (0: all)")
    p.add_argument("--val", type=int, default=val)
    p.add_argument("--test", type=int, default=0, help="test images (0: the whole test split)")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)


def main(argv=None):
    """Train every ``--rules`` rule on the same network and data; print the Markdown table (and write ``--json``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_network_arguments(p)
    p.add_argument("--floor-seeds", type=int, default=5)
    p.add_argument("--pat-distance-error", type=float, default=0.8e-3, help="metres, alternating sign per gap")
    p.add_argument("--pat-shift", type=float, default=0.3, help="pixels, alternating sign per layer and axis")
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from diffractive.simulate import input_fields
    from training.config import parse_config
    from training.datasets import design_split, load_split
    from training.model import D2NN, design_from_config
    from training.trainer import Trainer

    rules = [r.strip() for r in a.rules.split(",") if r.strip()]
    # Data to train from the configs of base_doc, loaded once and handed to every Trainer (data=): the
    # split those configs describe ([data] sets no split_seed / val_fraction: seed 0, fraction 0.1), so
    # it is the split each trained design records in its provenance. The Trainer's test accuracy uses te.
    # Designs evaluated here (the floor's random masks, backprop's design on PAT's physics) take their
    # images from design_split, the split the design was trained and validated on (for "test": the same te).
    tr = load_split(a.dataset, "train", limit=a.train or None, seed=0)
    va = load_split(a.dataset, "val", limit=a.val or None, seed=0)
    te = load_split(a.dataset, "test", limit=a.test or None)
    data = (tr, va, te)
    scale = (f"{a.dataset}: {len(tr[1])} train / {len(va[1])} val / {len(te[1])} test images; {a.layers} layers of "
             f"{a.grid}x{a.grid} at 0.4 mm, {a.distance * 1e3:g} mm gaps; {a.epochs} epochs of batch {a.batch}")
    print(scale, flush=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results, curves, extras = {}, {}, {}
    physics_of = {}

    def test_split(design):
        """The test images and labels ``design`` is evaluated on: its design_split, limited by ``--test``."""
        return design_split(design, a.dataset, "test", limit=a.test or None)

    def physics_accuracy(model, physics):
        """Test accuracy (fraction) of ``model``'s design with ``physics`` in place of the ideal stack."""
        xt, yt = test_split(model.design)
        correct = 0
        for s in range(0, len(yt), 256):
            f = input_fields(model.design, xt[s:s + 256])
            I = torch.from_numpy(physics.intensity(model.phase.detach().numpy(), f).astype(np.float32))
            pred = (model.readout(I) @ model.score_matrix).argmax(1).numpy()
            correct += int((pred == yt[s:s + 256]).sum())
        return correct / len(yt)

    for rule in rules:
        t0 = time.perf_counter()
        if rule == "floor":
            accs = []
            for seed in range(a.floor_seeds):
                cfg = parse_config(base_doc(a, seed=seed))
                model = D2NN(design_from_config(cfg), workers=a.workers)
                xt, yt = test_split(model.design)
                with torch.no_grad():
                    correct = 0
                    for s in range(0, len(yt), 256):
                        I = model(torch.from_numpy(xt[s:s + 256]))
                        correct += int(((model.readout(I) @ model.score_matrix).argmax(1).numpy()
                                        == yt[s:s + 256]).sum())
                accs.append(correct / len(yt))
            results[rule] = {"test_accuracy": float(np.mean(accs)), "spread": float(np.std(accs)), "evaluations": 0,
                             "seconds": 0.0, "note": f"random masks, mean +/- std of {a.floor_seeds} seeds"}
            print(f"{rule}: {results[rule]}", flush=True)
            continue
        name = rule
        real = "hsic" if rule.startswith("hsic") else rule
        options, over = SETTINGS[rule]
        options = pat_options(a) if rule == "pat" else dict(options)
        cfg = parse_config(base_doc(a, real, None if real == "backprop" else options, **over))
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(cfg, out, data=data, log=lambda *x: None)
            metrics = trainer.run()
        seconds = metrics["train_seconds"]
        steps = trainer.steps_per_epoch * len(metrics["history"])
        evals = getattr(trainer.rule, "evaluations", None)
        if evals is None:  # backprop: one forward (and one adjoint) per image
            evals = steps * a.batch
        per_epoch = evals / max(1, len(metrics["history"]))
        curves[name] = [{"epoch": h["epoch"], "evaluations": per_epoch * h["epoch"], "seconds": h["train_seconds"],
                         "val_accuracy": h["val_accuracy"]} for h in metrics["history"]]
        results[name] = {"test_accuracy": metrics["test_accuracy"], "evaluations": int(evals), "seconds": seconds,
                         "wall_seconds": time.perf_counter() - t0, "note": ""}
        if rule == "dfa":  # measured on the trainer's own validation images (va, as handed to it)
            xb, yb = torch.from_numpy(va[0][:64]), torch.from_numpy(va[1][:64])
            angles = trainer.rule.alignment(xb, yb)
            extras["dfa_alignment_deg"] = angles
            results[name]["note"] = "alignment with the gradient: " + ", ".join(f"{x:.0f}°" for x in angles)
        if real == "hsic":
            xb, yb = torch.from_numpy(va[0][:128]), torch.from_numpy(va[1][:128])
            stats = trainer.rule.layer_nhsic(xb, yb)
            extras[f"{rule}_nhsic_y"] = [s[1] for s in stats]
            results[name]["note"] = "nHSIC(Z_l, Y): " + ", ".join(f"{s[1]:.2f}" for s in stats)
        if rule == "backprop":
            physics_of["backprop_model"] = trainer.model
        if rule == "pat":
            physics = trainer.rule.physics
            results[name]["note"] = "on the mismatched physics"
            bp = physics_of.get("backprop_model")
            if bp is not None:
                bp_phys = physics_accuracy(bp, physics)
                bp_ideal = results["backprop"]["test_accuracy"]
                lost = bp_ideal - bp_phys
                rec = (metrics["test_accuracy"] - bp_phys) / lost if lost > 0 else float("nan")
                results["backprop on physics"] = {"test_accuracy": bp_phys, "evaluations": results["backprop"]["evaluations"],
                                                  "seconds": results["backprop"]["seconds"],
                                                  "note": "backprop's design, evaluated on PAT's mismatched physics"}
                results[name]["note"] = f"on the mismatched physics; recovers {100 * rec:.0f} % of backprop's loss"
                extras["pat_recovered_fraction"] = rec
            extras["pat_physics"] = {"distances_m": list(physics.geometry.distances_m),
                                     "shifts_px": physics.shifts_px.tolist(), "z_step_m": physics.z_step_m,
                                     "as_built": physics.as_built.to_json()}
        print(f"{name}: {results[name]}", flush=True)

    lines = [f"Scale: {scale}. CPU: {platform.processor() or platform.machine()}, "
             f"torch threads {torch.get_num_threads()}, physics workers {a.workers or 'auto'}.", "",
             "| rule | test accuracy | forward evaluations | train time (s) | notes |",
             "|---|---|---|---|---|"]
    order = [n for n in results if n != "backprop on physics"]
    if "backprop on physics" in results:
        order.insert(order.index("pat"), "backprop on physics")
    for name in order:
        r = results[name]
        acc = f"{100 * r['test_accuracy']:.1f} %" + (f" ± {100 * r['spread']:.1f}" if "spread" in r else "")
        ev = f"{r['evaluations']:,}" if r["evaluations"] else "0"
        lines.append(f"| {name} | {acc} | {ev} | {r['seconds']:.0f} | {r['note']} |")
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps({"scale": scale, "args": vars(a), "results": results, "curves": curves,
                                            "extras": extras}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
