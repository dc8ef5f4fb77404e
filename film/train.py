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
    from film.backends.jittor.runtime import mpi_world_size

    if backend == "torch" and mpi_world_size() > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # every rank would train alone on the whole batch and write into one run folder
        raise FilmError(
            f"started by mpirun ({mpi_world_size()} processes): mpirun runs the jittor backend; for torch use "
            "torchrun --nproc_per_node N -m film train ..., or film train --nproc N"
        )
    get_backend(backend, device)
    if backend == "torch":
        from film.backends.torch.train import Trainer
    else:
        from film.backends.jittor.train import Trainer
    return Trainer(device, model_cfg or OFFICIAL)


def launch_command(args, argv: list[str]) -> list[str]:
    """The command that runs ``film train`` (``argv`` without --nproc) in ``args.nproc`` processes:
    torchrun for torch, OpenMPI's mpirun for Jittor."""
    import os
    import shutil
    import sys

    n = args.nproc
    if args.backend == "torch":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                "-m", "film", *argv]
    from film.backends.jittor.runtime import MPI_INSTALL_HINT, mpicc

    mpirun = shutil.which("mpirun")
    if mpirun is None or mpicc() is None:
        missing = "mpirun" if mpirun is None else "mpicc"
        raise FilmError(f"--nproc {n} with the jittor backend runs under MPI, but {missing} is not on PATH: {MPI_INSTALL_HINT}")
    cmd = [mpirun, "-np", str(n)]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")  # OpenMPI refuses root without it
    if n > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")  # more ranks than cores: allowed, slower
    return cmd + [sys.executable, "-m", "film", *argv]


def strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def run_launcher(args, argv: list[str]) -> int:
    """film train --nproc N: start N processes of the same command and wait for them."""
    import os
    import subprocess

    cmd = launch_command(args, strip_nproc(argv))
    if args.backend == "jittor":  # compile Jittor (and its MPI ops) once here, not in N racing processes
        from film.backends.jittor.runtime import configure_env, warm_up

        configure_env(args.device)
        warm_up()
    env = os.environ.copy()
    # N processes on the machine's cores: a thread pool of cores // N each, unless the user chose
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    print(f"film train: starting {args.nproc} processes: {' '.join(cmd[:6])} ...", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def run_train(args, argv: list[str] | None = None) -> int:
    check_name(args.backend)
    if getattr(args, "nproc", None) is not None:
        if args.nproc < 1:
            raise FilmError("--nproc must be at least 1")
        if args.nproc > 1:
            import os

            if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "OMPI_COMM_WORLD_SIZE" in os.environ:
                raise FilmError("--nproc starts the processes itself: do not combine it with torchrun or mpirun")
            return run_launcher(args, list(argv or []))
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
    from film.common.spec import OFFICIAL, TINY

    trainer = make_trainer(args.backend, args.device, TINY if getattr(args, "config", None) == "tiny" else OFFICIAL)
    try:
        run_dir = train(cfg, trainer)
    finally:
        if args.backend == "torch" and getattr(trainer, "world", 1) > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if getattr(trainer, "rank", 0) == 0:
        print(f"run folder: {run_dir}")
    return 0
