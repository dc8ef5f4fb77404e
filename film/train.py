"""``film train``: pick the backend's Trainer and run the shared loop."""

from __future__ import annotations

from film.backends.registry import FRAMEWORKS, check_name, get_backend
from film.common.spec import OFFICIAL, FilmConfig
from film.common.training import RunConfig, StepConfig, resolve_run
from film.common.training import train as train_loop
from film.errors import FilmError


def make_trainer(backend: str, device: str, model_cfg=None):
    """The backend's Trainer, after the backend refused a launcher that is not its own."""
    impl = get_backend(backend, device)
    impl.check_launcher()
    return impl.make_trainer(device, model_cfg or OFFICIAL)


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


def launch(backend: str, device: str, nproc: int, argv: list[str], *, model_cfg: FilmConfig = OFFICIAL,
           step_cfg: StepConfig | None = None) -> int:
    """film train --nproc N: start N processes of the same command (``argv`` without --nproc) under the
    backend's launcher (torchrun or mpirun) and wait for them; returns their exit code."""
    import os
    import subprocess
    import sys

    if nproc < 1:
        raise FilmError("--nproc must be at least 1")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "OMPI_COMM_WORLD_SIZE" in os.environ:
        raise FilmError("--nproc starts the processes itself: do not combine it with torchrun or mpirun")
    check_name(backend, FRAMEWORKS)  # onnx runs exported models: inference only
    # importing the backend prepares it once here (Jittor compiles itself and its MPI ops), not in N racing
    # processes; the launcher (torchrun or mpirun) is the backend's
    impl = get_backend(backend, device)
    cmd = impl.launch_command(nproc, strip_nproc(argv))
    impl.prepare_launch(device, model_cfg, step_cfg or StepConfig())
    env = os.environ.copy()
    # N processes on the machine's cores: a thread pool of cores // N each, unless the user chose
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # the workers run `python -m film`, which puts the current folder first on sys.path: a folder holding a
    # clone named film/ would shadow the installed package. Python 3.11+ can leave the folder out.
    shadow = os.path.join(os.getcwd(), "film")
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isdir(shadow) and os.path.realpath(shadow) != os.path.realpath(here):
        if sys.version_info < (3, 11):
            raise FilmError(f"the folder {shadow} would shadow the film package in the {nproc} worker processes "
                            "(python -m film): run film train --nproc from another folder")
    env["PYTHONSAFEPATH"] = "1"
    print(f"film train: starting {nproc} processes: {' '.join(cmd[:6])} ...", flush=True)
    try:
        code = subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130
    if code:  # the launcher has stopped every process; its report and the failing rank's error are above
        why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        print(f"film train: the {nproc}-process job failed ({why}); the failing rank's error is above",
              file=sys.stderr, flush=True)
    return code


def train(
    h5: str | None = None,
    *,
    backend: str | None = None,
    out: str = "exp",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    step_size: int | None = None,
    gamma: float | None = None,
    grad_weight: float | None = None,
    ssim_weight: float | None = None,
    seed: int = 0,
    device: str = "auto",
    init: str | None = None,
    resume: str | None = None,
    max_steps: int | None = None,
    model_cfg: FilmConfig = OFFICIAL,
    recompute: str = "auto",
    micro_batch: int | None = None,
    fast: bool | None = None,
    heap_reuse: bool = False,
) -> str:
    """Train FILM with the official recipe (None = the official value) in either backend; returns the run
    folder (written by rank 0 alone under torchrun / mpirun). ``resume``: a run folder to continue exactly
    (its backend, H5 and recipe are taken from its param.json). How each step runs (the same numbers either way;
    docs/training.md): ``recompute`` (auto, none, blocks, all), ``micro_batch`` (None: planned to fit in memory),
    ``fast`` (the channels-last layout; None: on for CPU), ``heap_reuse`` (CPU: glibc keeps freed memory for
    reuse while training runs, about 2x a step: a process-wide malloc setting, so off unless asked for here;
    film train asks; film.common.heap)."""
    recipe = {k: v for k, v in (("batch_size", batch_size), ("lr", lr), ("step_size", step_size), ("gamma", gamma),
                                ("grad_weight", grad_weight), ("ssim_weight", ssim_weight)) if v is not None}
    step = StepConfig(seed=seed, recompute=recompute, fast=fast, heap_reuse=heap_reuse, micro_batch=micro_batch,
                      **recipe)
    cfg = RunConfig(h5=h5 or "", step=step, backend=backend or "torch", out=out, epochs=epochs, device=device,
                    init=init, resume=resume, max_steps=max_steps)
    run = resolve_run(cfg, None if model_cfg is OFFICIAL else model_cfg, backend_given=backend is not None)
    check_name(run.cfg.backend, FRAMEWORKS)  # onnx runs exported models: inference only
    trainer = make_trainer(run.cfg.backend, device, run.model_cfg)
    try:
        return train_loop(run, trainer)
    finally:
        trainer.close()


def is_main_process() -> bool:
    """False on the non-zero ranks of torchrun / mpirun (they print nothing but errors)."""
    import os

    return os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")) == "0"
