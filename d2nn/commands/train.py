"""``d2nn train``: train a design from a TOML config and write the design folder."""
from __future__ import annotations

from . import UserError


def register(sub):
    """Add the ``train`` subcommand to ``sub`` (the ``d2nn`` subparsers); its ``func`` is :func:`run`."""
    p = sub.add_parser("train", help="train a design from a TOML config",
                       description="Train a diffractive network described by CONFIG.toml and write a design folder "
                                   "(design.json, phases.npz, metrics.json, metrics.csv, figures/) to --out. "
                                   "Checkpoints go to OUT/checkpoints/; --resume continues an interrupted run. "
                                   "Started by torchrun (torchrun --nproc-per-node N -m d2nn train ...), it trains "
                                   "across the N processes: backprop and pat data parallel (trainer.batch_size is "
                                   "the global batch), es and ga by population; rank 0 alone writes OUT "
                                   "(docs/training.md).")
    p.add_argument("config", help="TOML config (see designs/*.toml and docs/training.md)")
    p.add_argument("--out", required=True, help="design folder to write")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--force", action="store_true", help="start over in a non-empty OUT")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: CUDA torch and the CuPy physics core")
    p.add_argument("--epochs", type=int, default=None, help="override trainer.epochs")
    p.add_argument("--as-built", metavar="FIT.json", default=None,
                   help="train through this stack as built (the fit.json of 'd2nn diagnose', or a measure-sim "
                        ".truth.json); sets [robustness] as_built (docs/diagnose.md)")
    p.add_argument("--freeze-layers", metavar="N,N,...", default=None,
                   help="keep these layers (1 = nearest the input) as in [model] init_from, the printed design, and "
                        "train the others; sets [robustness] freeze_layers")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``d2nn train`` with the parsed ``args``; returns the exit code (0)."""
    import torch  # noqa: PLC0415

    from training.config import load_config  # noqa: PLC0415
    from training.trainer import Trainer  # noqa: PLC0415

    # library errors (ConfigError, TrainingError, DatasetMissing, ...) are D2NNErrors: d2nn.cli prints them
    cfg = load_config(args.config)
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError(f"--epochs must be positive, got {args.epochs}")
        cfg.trainer.epochs = args.epochs
    if args.as_built is not None or args.freeze_layers is not None:
        from pathlib import Path  # noqa: PLC0415

        from training.config import check_redesign  # noqa: PLC0415

        if args.as_built is not None:  # relative to where the command runs, not to the config file
            cfg.robustness.as_built = str(Path(args.as_built).resolve())
        if args.freeze_layers is not None:
            try:
                cfg.robustness.freeze_layers = [int(v) for v in args.freeze_layers.split(",") if v.strip()]
            except ValueError:
                raise UserError(f"--freeze-layers must be layer numbers separated by commas (1,2,3), got "
                                f"{args.freeze_layers!r}") from None
            if not cfg.robustness.freeze_layers:
                raise UserError("--freeze-layers names no layer")
        check_redesign(cfg)
    if args.device == "cuda":
        from diffractive.backend import cupy_available  # noqa: PLC0415

        if not torch.cuda.is_available() or not cupy_available():
            raise UserError("--device cuda needs CUDA torch and CuPy with a GPU (pip install 'd2nn[gpu]'); "
                            "use --device cpu")
    import torch.distributed as dist  # noqa: PLC0415

    try:
        # under torchrun the Trainer joins the job's process group (training.rules.distributed)
        trainer = Trainer(cfg, args.out, resume=args.resume, force=args.force, device=args.device)
        trainer.run()
    finally:
        # leave the group on success and on failure alike: a rank that stops closes its
        # connections, so the others fail at their next collective instead of waiting for it
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0
