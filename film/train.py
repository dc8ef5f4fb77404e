"""``film train``: pick the backend's Trainer and run the shared loop."""

from __future__ import annotations

from film.backends.registry import FRAMEWORKS, check_name, get_backend
from film.common.spec import OFFICIAL, FilmConfig
from film.common.training import (
    RUN_DIR_ENV,
    RunConfig,
    StepConfig,
    elastic_resume,
    resolve_run,
)
from film.common.training import train as train_loop
from film.defaults import SAVE_EVERY
from film.errors import FilmError


def make_trainer(backend: str, device: str, model_cfg=None):
    """The backend's Trainer, after the backend refused a launcher that is not its own."""
    impl = get_backend(backend, device)
    impl.check_launcher()
    return impl.make_trainer(device, model_cfg or OFFICIAL)


def strip_launch_flags(argv: list[str], flags: tuple[str, ...] = ("--nproc", "--max-restarts")) -> list[str]:
    """The worker's command: ``argv`` without the launcher's own flags (and their values)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out


def launch(backend: str, device: str, nproc: int, argv: list[str], *, model_cfg: FilmConfig = OFFICIAL,
           step_cfg: StepConfig | None = None, run_dir: str | None = None, max_restarts: int = 0) -> int:
    """film train --nproc N: start N processes of the same command (``argv`` without --nproc) under the
    backend's launcher (torchrun or mpirun) and wait for them; returns their exit code. ``run_dir``: the run
    folder every worker uses (a restarted worker resumes from its newest checkpoint); ``max_restarts``: how
    often torchrun's elastic agent restarts the group after a worker failed (torch only)."""
    import os
    import subprocess
    import sys

    if nproc < 1:
        raise FilmError("--nproc must be at least 1")
    if max_restarts < 0:
        raise FilmError("--max-restarts must be 0 or more")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "OMPI_COMM_WORLD_SIZE" in os.environ:
        raise FilmError("--nproc starts the processes itself: do not combine it with torchrun or mpirun")
    check_name(backend, FRAMEWORKS)  # onnx runs exported models: inference only
    # importing the backend prepares it once here (Jittor compiles itself and its MPI ops), not in N racing
    # processes; the launcher (torchrun or mpirun) is the backend's
    impl = get_backend(backend, device)
    cmd = impl.launch_command(nproc, strip_launch_flags(argv), max_restarts=max_restarts,
                              export=(RUN_DIR_ENV,) if run_dir else ())
    impl.prepare_launch(device, model_cfg, step_cfg or StepConfig())
    env = os.environ.copy()
    # N processes on the machine's cores: a thread pool of cores // N each, unless the user chose
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if run_dir:
        env[RUN_DIR_ENV] = os.path.abspath(run_dir)
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
        code, report = relay(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE))
    except KeyboardInterrupt:
        return 130
    if code:  # the launcher has stopped every process; its report and the failing rank's error are above
        why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        rank, how = failed_rank(report)
        who = f"rank {rank} failed{': ' + how if how else ''}" if rank is not None else f"the launcher ended with {why}"
        restarts = f" after {max_restarts} restart(s)" if max_restarts else ""
        again = f": resume it with film train --resume {run_dir} --nproc {nproc}" if run_dir else ""
        above = "" if how.startswith("killed") else "; its error is above"
        print(f"film train: the {nproc}-process job failed{restarts} ({who}{above}){again}",
              file=sys.stderr, flush=True)
    return code


def relay(proc, keep: int = 1 << 16) -> tuple[int, str]:
    """Pass a launcher's stderr through as it comes (the workers' lines and progress bars), leaving out the
    launcher's own logging and traceback (``launcher_noise``: film says what failed in one line at the end), and
    keep the last ``keep`` characters of all of it; returns (exit code, that tail)."""
    import os
    import sys

    tail, pending, noise = b"", b"", False
    keep_all = os.environ.get("FILM_DEBUG") == "1"  # every traceback, the workers' and the launcher's
    fd = proc.stderr.fileno()
    while True:
        chunk = os.read(fd, 4096)
        tail = (tail + chunk)[-keep:]
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = []
        for line in lines:
            noise = not keep_all and launcher_noise(line.decode("utf-8", "replace"), noise)
            if not noise:
                out.append(line + b"\n")
        if b"\r" in pending or not chunk:  # a progress bar's redraw (or the end): as it comes
            out.append(pending)
            pending = b""
        sys.stderr.buffer.write(b"".join(out))
        sys.stderr.flush()
        if not chunk:
            break
    return proc.wait(), tail.decode("utf-8", "replace")


def launcher_noise(line: str, inside: bool) -> bool:
    """Whether a line of torchrun's stderr is its own: its agent's log lines ("E1203 12:00:00.000 123
    torch/distributed/elastic/...") and the traceback and failure summary it ends with (``inside``: the previous
    line was one of those). The workers' one-line errors pass."""
    import re

    if line.startswith("Traceback (most recent call last):") or re.match(r"[IWE]\d{4} [\d:.]+ \d+ \S*torch/distributed/", line):
        return True
    if inside:  # the traceback and the ChildFailedError summary run to the end of the launcher's output
        return not line.startswith("film train:")
    return False


def failed_rank(report: str) -> tuple[int | None, str]:
    """The rank a launcher's failure report names, and how it ended: torchrun's "Root Cause" block (rank,
    exitcode), OpenMPI's "process rank N ... exited on signal S" or "Process name: [[job,N]]", or film's own
    "rank N: error" line. (None, "") when the report names none."""
    import re
    import signal

    def died(code: int) -> str:
        if code < 0:
            try:
                return f"killed by signal {-code} ({signal.Signals(-code).name})"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    # torchrun lists every failed worker; one killed by a signal is the cause (its peers then fail on the lost
    # connection, sometimes first, or get torchrun's own SIGTERM), else its "Root Cause"
    entry = r"\brank\s*:\s*(\d+)[^\n]*\n(?:[^\n]*\n)??\s*exitcode\s*:\s*(-?\d+)"
    failures = [(int(r), int(c)) for r, c in re.findall(entry, report)]
    killed = [f for f in failures if f[1] < 0 and f[1] != -signal.SIGTERM]
    m = re.search(r"Root Cause.*?\brank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", report, re.S)
    if killed or m:
        rank, code = killed[0] if killed else (int(m.group(1)), int(m.group(2)))
        return rank, died(code)
    m = re.search(r"process rank (\d+)[^\n]*?exited on signal (\d+)", report)
    if m:
        return int(m.group(1)), died(-int(m.group(2)))
    for pattern in (r"process rank (\d+)", r"Process name: \[\[\d+,(\d+)\]", r"\brank (\d+): (?:internal )?error"):
        m = re.search(pattern, report, re.S)
        if m:
            return int(m.group(1)), ""
    return None, ""


def run_config(
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
    save_every: int = SAVE_EVERY,
    recompute: str = "auto",
    micro_batch: int | None = None,
    fast: bool | None = None,
    heap_reuse: bool = False,
) -> RunConfig:
    """The RunConfig of film train's options (None = the official value; ``backend`` None: torch, or on --resume the
    run's own). ``resume``: a run folder to continue exactly (its backend, H5 and recipe are taken from its
    param.json). How each step runs (the same numbers either way; docs/training.md): ``recompute`` (auto, none,
    blocks, all), ``micro_batch`` (None: planned to fit in memory), ``fast`` (the channels-last layout; None: on for
    CPU), ``heap_reuse`` (CPU: glibc keeps freed memory for reuse while training runs, about 2x a step: a
    process-wide malloc setting, so off unless asked for here; film train asks; film.common.heap). ``save_every``: a
    resumable mid-epoch checkpoint every this many steps (0: at the end of each epoch only)."""
    recipe = {k: v for k, v in (("batch_size", batch_size), ("lr", lr), ("step_size", step_size), ("gamma", gamma),
                                ("grad_weight", grad_weight), ("ssim_weight", ssim_weight)) if v is not None}
    step = StepConfig(seed=seed, recompute=recompute, fast=fast, heap_reuse=heap_reuse, micro_batch=micro_batch,
                      **recipe)
    return RunConfig(h5=h5 or "", step=step, backend=backend or "torch", out=out, epochs=epochs, device=device,
                     init=init, resume=resume, max_steps=max_steps, save_every=save_every)


def train(h5: str | None = None, *, model_cfg: FilmConfig = OFFICIAL, **options) -> str:
    """Train FILM with the official recipe in either backend; returns the run folder (written by rank 0 alone under
    torchrun / mpirun). ``options``: those of :func:`run_config` (backend, epochs, lr, resume, ...). Under film
    train --nproc a worker restarted by torchrun resumes the launcher's run folder on its own."""
    import os

    options["resume"] = options.get("resume") or elastic_resume(os.environ.get(RUN_DIR_ENV))
    cfg = run_config(h5, **options)
    run = resolve_run(cfg, None if model_cfg is OFFICIAL else model_cfg, backend_given=options.get("backend") is not None)
    check_name(run.cfg.backend, FRAMEWORKS)  # onnx runs exported models: inference only
    trainer = make_trainer(run.cfg.backend, cfg.device, run.model_cfg)
    try:
        return train_loop(run, trainer)
    finally:
        trainer.close()


def is_main_process() -> bool:
    """False on the non-zero ranks of torchrun / mpirun (they print nothing but errors)."""
    import os

    return os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")) == "0"
