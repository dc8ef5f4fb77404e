"""``film train``: pick the backend's Trainer and run the shared loop."""

from __future__ import annotations

from film.backends.registry import check_name, get_backend
from film.common.training import TrainConfig, train
from film.errors import FilmError


def make_trainer(backend: str, device: str, model_cfg=None):
    from film.common.spec import OFFICIAL

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
    run_dir = train(cfg, make_trainer(args.backend, args.device))
    print(f"run folder: {run_dir}")
    return 0
