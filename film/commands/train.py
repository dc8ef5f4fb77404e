"""``film train``: the official recipe in either backend, on one process or many (film.train)."""

from __future__ import annotations

import argparse
import sys

from film.commands.options import add_config, model_config
from film.common.spec import OFFICIAL, OFFICIAL_RECIPE
from film.defaults import KEEP_STEP_CHECKPOINTS, SAVE_EVERY


def register(sub) -> None:
    t = sub.add_parser("train", help="train FILM with the official recipe in either backend")
    t.add_argument("--backend", default=None,
                   help="torch (default) or jittor (with --resume: the run's own)")
    t.add_argument("--h5", help="training H5 made by film prepare (with --resume: taken from the run)")
    r = OFFICIAL_RECIPE  # the help's defaults are the recipe's own values, never restated here
    t.add_argument("--epochs", type=int, default=None,
                   help=f"default {r.epochs} (official); with --resume, a larger number extends a run (default: the "
                   "run's own)")
    t.add_argument("--batch-size", type=int, default=None, help=f"default {r.batch_size} (official)")
    t.add_argument("--lr", type=float, default=None, help=f"default {r.lr:g} (official)")
    t.add_argument("--step-size", type=int, default=None, help=f"StepLR step in epochs, default {r.step_size}")
    t.add_argument("--gamma", type=float, default=None, help=f"StepLR gamma, default {r.gamma:g}")
    t.add_argument("--grad-weight", type=float, default=None,
                   help=f"Sobel-gradient loss coefficient, default {r.grad_weight:g}")
    t.add_argument("--ssim-weight", type=float, default=None,
                   help=f"weight of the LpLssim loss, default {r.ssim_weight:g} (0: skipped)")
    t.add_argument("--out", default="exp", help="parent folder of run folders (default exp/)")
    t.add_argument("--seed", type=int, default=0, help="data order and init seed")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--init", help="start from this checkpoint (any format, either framework)")
    t.add_argument("--resume", help="run folder to continue (model, optimizer, scheduler, epoch, step)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    t.add_argument("--recompute", choices=("auto", "none", "blocks", "all"), default="auto",
                   help="activation recomputation: none keeps every map (the official code's ~16 GB at batch 2, "
                   "288x384), blocks recomputes each Restormer block, all also each cross-attention branch "
                   "(default auto: the backend's measured choice, torch all, Jittor blocks, about 0.4x the official "
                   "peak memory; the same numbers either way)")
    t.add_argument("--micro-batch", type=int, default=None,
                   help="samples per forward/backward, their gradients added up (the same mean-loss step); "
                   "default: the whole batch, or the largest part that fits in memory")
    t.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="the backends' channels-last layout (default: on for CPU; --no-fast trains in the "
                   "official NCHW order, about 2x slower on CPU)")
    t.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="data-parallel over N processes on this machine: starts torchrun (torch) or mpirun (jittor) with "
        "the same command; --batch-size stays the global batch",
    )
    t.add_argument("--max-restarts", type=int, default=0, metavar="K",
                   help="with --nproc and the torch backend: torchrun's elastic agent restarts the processes up to K "
                   "times after one fails, and they resume from the newest checkpoint (default 0)")
    t.add_argument("--save-every", type=int, default=SAVE_EVERY, metavar="N",
                   help=f"a resumable checkpoint every N steps within an epoch, model/step_<step> (the newest "
                   f"{KEEP_STEP_CHECKPOINTS} kept; ckpt_<epoch> at each epoch's end as always); default {SAVE_EVERY}: "
                   "a write takes 0.1-0.25 s against ~10 s a step on 2 CPU cores (under 0.1 %%; at most ~5 %% on a GPU); "
                   "0: at the end of epochs only")
    add_config(t)
    t.set_defaults(func=run)


def run(args) -> int:
    from film.train import is_main_process, launch, run_config, train

    options = dict(backend=args.backend, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   step_size=args.step_size, gamma=args.gamma, grad_weight=args.grad_weight,
                   ssim_weight=args.ssim_weight, seed=args.seed, device=args.device, init=args.init, resume=args.resume,
                   max_steps=args.max_steps, recompute=args.recompute, micro_batch=args.micro_batch, fast=args.fast,
                   heap_reuse=True, save_every=args.save_every)
    if args.nproc is not None and args.nproc != 1:
        import os

        from film.common.training import resolve_run, run_name

        # the run's own backend and recipe on --resume
        run = resolve_run(run_config(args.h5, **options), backend_given=args.backend is not None)
        run_dir = args.resume
        if not run_dir:  # named here once: every worker, and every worker torchrun restarts, uses it; a second
            base = run_dir = os.path.join(args.out, run_name(run.cfg))  # job in the same minute gets its own
            n = 1
            while os.path.exists(run_dir):
                n += 1
                run_dir = f"{base}_{n}"
        return launch(run.cfg.backend, args.device, args.nproc, sys.argv[1:] if args.argv is None else args.argv,
                      model_cfg=model_config(args, OFFICIAL), step_cfg=run.cfg.step, run_dir=run_dir,
                      max_restarts=args.max_restarts)
    if args.max_restarts:
        from film.errors import FilmError

        raise FilmError("--max-restarts restarts the processes of film train --nproc N (N > 1)")
    run_dir = train(args.h5, model_cfg=model_config(args, OFFICIAL), **options)
    if is_main_process():
        print(f"run folder: {run_dir}")
    return 0
