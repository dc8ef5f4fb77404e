"""``film train``: pick the backend's Trainer and run the shared loop."""

from __future__ import annotations

from film.backends.registry import check_name, get_backend
from film.common.training import TrainConfig, read_run_params, train
from film.errors import FilmError


def make_trainer(backend: str, device: str, model_cfg=None):
    import os

    from film.common.spec import OFFICIAL

    if backend == "jittor" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FilmError(
            "torchrun starts the torch backend only; Jittor's multi-process training runs under mpirun "
            "(see docs/training.md)"
        )
    get_backend(backend, device)
    if backend == "torch":
        from film.backends.torch.train import Trainer
    else:
        from film.backends.jittor.train import Trainer
    return Trainer(device, model_cfg or OFFICIAL)


def run_train(args) -> int:
    check_name(args.backend)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise FilmError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr is not None and not args.lr > 0:
        raise FilmError("--lr must be positive")
    if not args.h5 and args.resume:  # a resumed run reads the H5 it was started with
        args.h5 = read_run_params(args.resume).get("h5")
    if not args.h5:
        raise FilmError("--h5 TRAIN.h5 is required")
    cfg = TrainConfig(
        h5=args.h5,
        backend=args.backend,
        out=args.out,
        seed=args.seed,
        device=args.device,
        init=args.init,
        resume=args.resume,
        max_steps=args.max_steps,
    )
    for k in ("epochs", "batch_size", "lr", "step_size", "gamma", "grad_weight", "ssim_weight"):
        v = getattr(args, k)
        if v is not None:
            setattr(cfg, k, v)
    trainer = make_trainer(args.backend, args.device)
    try:
        run_dir = train(cfg, trainer)
    finally:
        if getattr(trainer, "world", 1) > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if getattr(trainer, "rank", 0) == 0:
        print(f"run folder: {run_dir}")
    return 0
