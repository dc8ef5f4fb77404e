"""The training loop, framework-free: run folder, data order, LR schedule, logging, checkpoints cadence.

A backend supplies a small ``Trainer`` (film/backends/<name>/train.py) with the framework work:
build, optimizer, one step, save/load. Both backends therefore see the same batches in the same order
(a numpy permutation per epoch from the seed) and the same learning rate at every step.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np

from film.common.atomic import TEMP_PREFIX, guarded_write, make_dirs
from film.common.data import H5Pairs
from film.common.images import write_png
from film.common.spec import CHECKPOINT_KEYS, OFFICIAL, OFFICIAL_RECIPE, FilmConfig
from film.defaults import KEEP_STEP_CHECKPOINTS, SAVE_EVERY
from film.errors import FilmError


@dataclass(frozen=True)
class StepConfig:
    """How one training step runs: the official recipe's values (``OFFICIAL_RECIPE``, same field names) and how
    the step is executed (recompute, layout, heap, micro-batches: the same numbers either way, docs/training.md).
    A backend's Trainer reads only this."""

    batch_size: int = OFFICIAL_RECIPE.batch_size  # the global batch (split over the processes of a run)
    lr: float = OFFICIAL_RECIPE.lr
    step_size: int = OFFICIAL_RECIPE.step_size  # StepLR, in epochs
    gamma: float = OFFICIAL_RECIPE.gamma
    grad_weight: float = OFFICIAL_RECIPE.grad_weight
    ssim_weight: float = OFFICIAL_RECIPE.ssim_weight
    seed: int = 0  # the init drawn without --init, and the data order
    recompute: str = "auto"  # none | blocks | all (film.common.recompute); auto: the backend's measured default
    fast: bool | None = None  # the backend's fast layout (channels-last); None: the device's default
    heap_reuse: bool = True  # CPU: glibc keeps freed memory for reuse while the trainer lives (film.common.heap)
    micro_batch: int | None = None  # samples per forward/backward, gradients added up; None: the whole share


@dataclass(frozen=True)
class RunConfig:
    """What to train and where: the run around its ``StepConfig``. ``resolve_run`` settles it (the run's own
    recipe on --resume), ``train`` then runs it; neither changes it afterwards."""

    h5: str
    step: StepConfig = StepConfig()
    backend: str = "torch"
    out: str = "exp"  # the parent folder of run folders
    epochs: int | None = None  # None: the official 150, or on --resume the run's own (resolve_run settles it)
    device: str = "auto"
    init: str | None = None  # start from these weights (any format); None: drawn from step.seed
    resume: str | None = None  # a run folder to continue
    max_steps: int | None = None  # stop early (smoke tests, benchmarks)
    save_every: int = SAVE_EVERY  # a resumable mid-epoch checkpoint every this many steps (0: end of epochs only)

    def params(self) -> dict:
        """param.json's recipe: one flat vocabulary, the fields of both configs (film train's flags)."""
        d = {k: v for k, v in asdict(self).items() if k != "step"}
        return {**d, **asdict(self.step)}


RECIPE_FIELDS = ("batch_size", "lr", "step_size", "gamma", "grad_weight", "ssim_weight", "seed")  # kept on --resume


class Run(NamedTuple):
    """A resolved run (``resolve_run``): the settled config, the network configuration, and, for --resume, the
    run folder and its param.json as read (once)."""

    cfg: RunConfig
    model_cfg: FilmConfig
    run_dir: str | None  # --resume's folder; None for a new run (named when it starts)
    params: dict | None  # --resume: the run's param.json


def resolve_run(cfg: RunConfig, model_cfg: FilmConfig | None = None, *, backend_given: bool = True) -> Run:
    """Settle a run before anything is built. A new run is checked and returned as it is. For ``cfg.resume``
    the run folder's param.json is read once: the run's backend (``backend_given``: whether ``cfg.backend`` was
    asked for; a different one is refused), network configuration (unless ``model_cfg`` is given), H5 (unless
    given), recipe (RECIPE_FIELDS) and epochs (unless given). ``cfg.epochs`` None becomes the official 150 or the
    run's own."""
    if cfg.step.batch_size < 1:
        raise FilmError("--batch-size must be at least 1")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise FilmError("--epochs must be at least 1")
    if not cfg.step.lr > 0:
        raise FilmError("--lr must be positive")
    if cfg.step.micro_batch is not None and cfg.step.micro_batch < 1:
        raise FilmError("--micro-batch must be at least 1")
    if cfg.save_every < 0:
        raise FilmError("--save-every must be 0 (end of epochs only) or more")
    from film.common.recompute import MODES

    if cfg.step.recompute != "auto" and cfg.step.recompute not in MODES:
        raise FilmError(f"recompute {cfg.step.recompute!r}: choose auto or one of {', '.join(MODES)}")
    params = None
    if cfg.resume:
        params = read_run_params(cfg.resume)
        run_backend = params.get("backend", "torch")
        if backend_given and cfg.backend != run_backend:
            raise FilmError(f"{cfg.resume}: a {run_backend} run; resume it with --backend {run_backend} (or without "
                            "--backend), or start a new run from its weights with --init")
        if model_cfg is None and isinstance(params.get("model_config"), dict):
            try:
                model_cfg = FilmConfig.from_dict(params["model_config"])
            except (TypeError, ValueError) as e:
                raise FilmError(f"{cfg.resume}: param.json has an unreadable model_config ({e})") from None
        step = replace(cfg.step, **{k: params[k] for k in RECIPE_FIELDS if k in params})
        cfg = replace(cfg, backend=run_backend, step=step, h5=cfg.h5 or params.get("h5") or "",
                      epochs=cfg.epochs if cfg.epochs is not None else params.get("epochs", OFFICIAL_RECIPE.epochs))
    if not cfg.h5:
        raise FilmError("--h5 TRAIN.h5 is required")
    if cfg.epochs is None:
        cfg = replace(cfg, epochs=OFFICIAL_RECIPE.epochs)
    return Run(cfg, model_cfg or OFFICIAL, cfg.resume, params)


@dataclass
class StepPlan:
    """How a training step will run on this machine (``plan_step``)."""

    micro_batch: int
    recompute: str
    heap_reuse: bool
    need_bytes: int | None = None  # estimated peak resident memory of one process
    avail_bytes: int | None = None  # what this process may use (MemAvailable / processes on the machine)

    def describe(self, batch: int) -> str:
        chunks = "" if self.micro_batch >= batch else f" in micro-batches of {self.micro_batch}"
        mem = ""
        if self.need_bytes is not None and self.avail_bytes is not None:
            mem = f", estimated peak {self.need_bytes / 2**30:.1f} of {self.avail_bytes / 2**30:.1f} GiB available"
        return (f"batch {batch}{chunks}, recompute {self.recompute}, heap reuse {'on' if self.heap_reuse else 'off'}"
                f"{mem}")


def _local_processes() -> int:
    for k in ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        try:
            return max(1, int(os.environ[k]))
        except (KeyError, ValueError):
            continue
    return 1


def measured_train_memory(table: dict, backend: str, recompute: str, heap_reuse: bool) -> tuple[int, int]:
    """A backend's ``train_memory``: its measured (fixed bytes, bytes per pixel) for this recompute mode and heap
    policy (its ``TRAIN_MEMORY``, from scripts/calibrate_train_memory.py), or one FilmError naming what is missing."""
    try:
        return table[(recompute, bool(heap_reuse))]
    except KeyError:
        raise FilmError(f"the {backend} backend has no measured training memory for --recompute {recompute} with "
                        f"heap reuse {'on' if heap_reuse else 'off'} (scripts/calibrate_train_memory.py)") from None


def train_memory_need(fixed: int, per_px: int, batch: int, h: int, w: int, token_grid: tuple[int, int]) -> int:
    """Estimated peak resident memory of a training step: fixed + batch x per-pixel x max(H x W, token grid)
    (the cross-attention runs on the token grid whatever the image size); the two constants are each backend's
    ``train_memory``, measured by scripts/calibrate_train_memory.py."""
    return int(fixed + batch * per_px * max(h * w, token_grid[0] * token_grid[1]))


def plan_step(be, cfg: StepConfig, batch: int, h: int, w: int, device: str,
              token_grid: tuple[int, int] = OFFICIAL.token_grid) -> StepPlan:
    """Pick the micro-batch and the heap policy of a training step so that its estimated peak memory fits.

    ``be``: the backend (its ``resolve_recompute`` and measured ``train_memory``: peak resident memory = fixed +
    micro-batch x per-pixel x max(H x W, the 288x384 token grid), docs/training.md). ``batch``: samples per
    step in this process. Fastest first: the heap reuse on (about 2x a step on CPU, but glibc's heap then holds
    about twice the live maps) with the largest micro-batch that fits, then without it. Micro-batches give the
    same mean-loss gradient only when the loss is a mean over samples, i.e. without the LpLssim term (its
    L2 norm is a square root over the whole batch): then the batch runs whole or is refused. An explicit
    ``cfg.micro_batch`` or recompute mode that does not fit is refused with one line naming what fits."""
    from film.common.heap import enabled as heap_enabled
    from film.common.heap import is_on as heap_is_on
    from film.common.memory import available_memory

    mode = be.resolve_recompute(cfg.recompute, device)
    want = cfg.micro_batch
    if want is not None and want < 1:
        raise FilmError("--micro-batch must be at least 1")
    heap = device == "cpu" and heap_enabled() and (cfg.heap_reuse or heap_is_on())
    exact = not cfg.ssim_weight
    avail = available_memory() if device == "cpu" and os.environ.get("FILM_SKIP_MEMORY_CHECK") != "1" else None
    if avail is None:
        return StepPlan(min(batch, want or batch), mode, heap)
    avail //= _local_processes()

    def need(m: int, rc: str, hp: bool) -> int:
        return train_memory_need(*be.train_memory(rc, hp), m, h, w, token_grid)

    sizes = [min(batch, want)] if want else ([batch] if not exact else list(range(batch, 0, -1)))
    for hp in ([True, False] if heap else [False]):
        for m in sizes:
            if need(m, mode, hp) <= avail:
                return StepPlan(m, mode, hp, need(m, mode, hp), avail)
    # nothing fits as asked: say what would
    gib = 2**30
    first = sizes[-1]
    msg = (f"a training step at {h}x{w} with {first} sample(s) per forward and --recompute {mode} needs about "
           f"{need(first, mode, False) / gib:.1f} GiB, but this process has {avail / gib:.1f} GiB")
    fits = [m for m in range(batch, 0, -1) if need(m, mode, False) <= avail]
    if want and fits and exact:
        return_hint = f": use --micro-batch {fits[0]}"
    elif not exact and fits:
        return_hint = f": use --batch-size {fits[0]} (with the LpLssim term a batch cannot be split)"
    elif mode != "all" and need(1, "all", False) <= avail:
        return_hint = ": use --recompute all"
    else:
        return_hint = ": use smaller images (film prepare --small), a machine with more memory, or a GPU"
    raise FilmError(msg + return_hint + " (FILM_SKIP_MEMORY_CHECK=1 to try anyway)")


def lr_at(cfg: StepConfig, epoch: int) -> float:
    """StepLR: lr * gamma ** (epoch // step_size) for 0-based epoch."""
    return cfg.lr * cfg.gamma ** (epoch // cfg.step_size)


def steplr_state(cfg: StepConfig, epoch: int) -> dict:
    """The ``lr_schedule1`` a torch ``StepLR`` (step_size, gamma over the recipe's lr) would hold after the
    0-based ``epoch``, i.e. stepped epoch + 1 times, as its ``state_dict()`` (torch 2.x keys); written by both
    backends' checkpoints, so no trainer keeps a scheduler just to serialise it."""
    return {
        "step_size": cfg.step_size,
        "gamma": cfg.gamma,
        "base_lrs": [cfg.lr],
        "last_epoch": epoch + 1,
        "_step_count": epoch + 2,
        "_is_initial": False,
        "_get_lr_called_within_step": False,
        "_last_lr": [lr_at(cfg, epoch + 1)],
    }


def epoch_size(n: int, batch_size: int, drop_last: bool = True) -> int:
    """How many of ``n`` samples one epoch uses (drop_last drops the incomplete last batch)."""
    return (n // batch_size) * batch_size if drop_last else n


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = True
) -> list[np.ndarray]:
    """The sample indices of every batch of one epoch: a permutation from (seed, epoch), so a resumed
    run and the other backend see exactly the same order."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    stop = epoch_size(n, batch_size, drop_last)
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def epoch_order(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = True) -> list[int]:
    """The flat sample order of one epoch (what the torch/Jittor dataset adapters' samplers yield)."""
    return [int(i) for batch in epoch_batches(n, batch_size, seed, epoch, shuffle, drop_last) for i in batch]


def load_batch(data: H5Pairs, idx: np.ndarray):
    items = [data[int(i)] for i in idx]
    shapes = {it[0].shape for it in items}
    if len(shapes) > 1:
        raise FilmError(
            f"{data.path}: a batch mixes image sizes {sorted(shapes)}: use --batch-size 1 or an H5 made with --small"
        )
    tshapes = {it[2].shape for it in items}
    if len(tshapes) > 1:
        raise FilmError(f"{data.path}: a batch mixes text feature shapes {sorted(tshapes)}")
    a = np.stack([it[0] for it in items]).astype(np.float32)
    b = np.stack([it[1] for it in items]).astype(np.float32)
    t = np.stack([it[2].reshape(it[2].shape[-2:]) for it in items]).astype(np.float32)
    return a, b, t, [it[3] for it in items]


def load_targets(data: H5Pairs, idx: np.ndarray) -> np.ndarray | None:
    """The batch's known fused images (B,1,H,W) when the H5 has a ``target`` group, else None."""
    if not data.has_target:
        return None
    return np.stack([data.target(int(i)) for i in idx]).astype(np.float32)


def run_name(cfg: RunConfig) -> str:
    ts = time.strftime("%y_%m_%d_%H_%M", time.localtime())
    st = cfg.step
    g = int(st.grad_weight) if float(st.grad_weight).is_integer() else st.grad_weight
    return f"{ts}_epochs_{cfg.epochs}_lr_{st.lr}_stepsize_{st.step_size}_bs_{st.batch_size}_gradweight_{g}_gamma_{st.gamma}"


def read_run_params(run_dir: str) -> dict:
    """A run folder's param.json (the recipe ``film train`` wrote), or one FilmError naming the folder."""
    try:
        with open(os.path.join(run_dir, "param.json")) as f:
            params = json.load(f)
    except (OSError, ValueError) as e:
        raise FilmError(f"{run_dir}: not a run folder (param.json missing or unreadable: {e})") from None
    if not isinstance(params, dict):
        raise FilmError(f"{run_dir}: param.json holds a {type(params).__name__}, not film train's recipe")
    return params


@contextlib.contextmanager
def resume_state_errors(path: str):
    """Malformed optimizer/scheduler state in a checkpoint -> one FilmError naming the file."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise FilmError(
            f"{path}: optimizer/scheduler state unreadable ({type(e).__name__}: {e}); "
            "start a new run with --init instead"
        ) from None


def resume_checkpoint(
    ck: object, path: str, model_cfg, cfg: StepConfig, to_numpy=lambda v: v
) -> tuple[dict, StepConfig]:
    """The validated weights of a training checkpoint (the official dict layout, either backend) and ``cfg`` with
    the schedule the checkpoint's scheduler was built with (lr, StepLR step size and gamma). ``to_numpy``
    converts the backend's tensors."""
    from film.common.checkpoint import unwrap, validate

    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ck, dict) or ck.get(k) is None]
    if missing:
        raise FilmError(f"{path}: not a resumable training checkpoint (missing {', '.join(missing)})")
    if not isinstance(ck["model"], dict):
        raise FilmError(f"{path}: 'model' is a {type(ck['model']).__name__}, not a state dict")
    sd, _ = unwrap({"model": {k: to_numpy(v) for k, v in ck["model"].items()}}, path)
    validate(sd, model_cfg, path)
    with resume_state_errors(path):
        sched = ck["lr_schedule1"]
        if "base_lrs" in sched:
            lr = sched["base_lrs"][0]
        else:
            group = ck["optimizer1"]["param_groups"][0]
            lr = group.get("initial_lr", group["lr"])
        recipe = replace(cfg, lr=float(lr), step_size=int(sched.get("step_size", OFFICIAL_RECIPE.step_size)),
                         gamma=float(sched.get("gamma", OFFICIAL_RECIPE.gamma)))
    return sd, recipe


def resume_position(ck: dict, path: str) -> dict:
    """Where a checkpoint stands: {"epoch", "step", "batch"} (0-based epoch; batch: batches done of that epoch
    for a mid-epoch checkpoint, None for one written at the end of the epoch)."""
    with resume_state_errors(path):
        batch = ck.get("batch")
        return {"epoch": int(ck["epoch"]), "step": int(ck["step"]), "batch": None if batch is None else int(batch)}


def checkpoints(run_dir: str, kind: str, ext: str) -> list[tuple[str, int]]:
    """A run's model/<kind>_<n><ext> files with their n, oldest first: kind "ckpt" (the end of epoch n, the
    official layout) or "step" (mid-epoch, after n steps)."""
    found = []
    for p in glob.glob(os.path.join(run_dir, "model", f"{kind}_*{ext}")):
        m = re.fullmatch(re.escape(kind) + r"_(\d+)" + re.escape(ext), os.path.basename(p))
        if m:
            found.append((p, int(m.group(1))))
    return sorted(found, key=lambda f: f[1])


def step_checkpoints(run_dir: str, ext: str) -> list[tuple[str, int]]:
    """The mid-epoch checkpoints model/step_<step><ext> of a run, oldest first."""
    return checkpoints(run_dir, "step", ext)


def newest_checkpoint(run_dir: str, ext: str) -> str | None:
    """What --resume continues from: the newest mid-epoch checkpoint if any (they are removed once their epoch's
    ckpt_<epoch> is written), else the last epoch's. Half-written files are never candidates: every checkpoint
    is written under a temporary name and renamed when complete."""
    steps = step_checkpoints(run_dir, ext)
    if steps:
        return steps[-1][0]
    found = latest_checkpoint(run_dir, ext)
    return found[0] if found else None


def remove_files(paths) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            os.unlink(p)


def latest_checkpoint(run_dir: str, ext: str) -> tuple[str, int] | None:
    """The last epoch's checkpoint model/ckpt_<epoch><ext> and its epoch, or None."""
    found = checkpoints(run_dir, "ckpt", ext)
    return found[-1] if found else None


class TrainerBase:
    """What both backends' Trainers share (the interface: film/backends/base.py ``Trainer``): the memory plan,
    the heap policy, the init, and the micro-batch loop of a step. A backend supplies ``_chunk`` (forward and
    backward of part of a batch) and ``_update`` (the optimizer step), and the rest of the interface."""

    rank, world = 0, 1
    _heap = None
    impl = None  # the Backend module, set by its make_trainer

    def hold_heap(self, cfg: StepConfig, on_cpu: bool) -> None:
        """With ``cfg.heap_reuse`` on CPU: glibc keeps freed memory for reuse from now until ``close`` (a training
        step frees and allocates the same ~100 MB maps hundreds of times; faulting them in again each time was
        over half of a step, docs/training.md). Process-wide while the trainer lives: see film.common.heap."""
        from film.common.heap import reuse_freed_memory

        if self._heap is None and on_cpu and cfg.heap_reuse:
            self._heap = reuse_freed_memory()
            self._heap.__enter__()

    def plan(self, cfg: StepConfig, batch: int, h: int, w: int) -> StepPlan:
        """plan_step for this trainer's backend and device (``self.impl``: the backend module)."""
        if self.impl is None:
            raise RuntimeError("a Trainer made by its backend's make_trainer knows its backend; this one was not")
        return plan_step(self.impl, cfg, batch, h, w, self.device_type, self.model_cfg.token_grid)

    def release_heap(self) -> None:
        if self._heap is not None:
            heap, self._heap = self._heap, None
            heap.__exit__(None, None, None)

    def setup(self, cfg: StepConfig, init: str | None = None) -> None:
        """Model and optimizer from ``init`` (any checkpoint format) or drawn from ``cfg.seed``; a bad init fails
        here, before a run folder exists."""
        from film.common.checkpoint import load_checkpoint
        from film.common.init import official_init_state_dict

        if init:
            sd = load_checkpoint(init, self.model_cfg).state_dict
        else:  # the same numbers in every backend for the same seed (each framework's own init differs)
            sd = official_init_state_dict(self.model_cfg, seed=cfg.seed)
        self.build(cfg, sd)

    def step(self, a: np.ndarray, b: np.ndarray, t: np.ndarray, cfg: StepConfig,
             target: np.ndarray | None = None) -> tuple[float, dict, np.ndarray]:
        """One optimizer step on the batch (a, b, t): (loss, {term: value}, fused); ``target``: the batch's known
        fused images, if any (the loss then aims at them, ``film.common.loss.fusion_loss``). With
        ``cfg.micro_batch`` = m < batch, the batch runs in chunks of m whose gradients add up (each chunk's mean
        loss weighted by its share of the batch: the same mean-loss gradient, since FILM treats samples
        independently), so memory follows m, not the batch. Under several processes the logged loss is the global batch's."""
        n = len(a)
        m = min(n, cfg.micro_batch or n)
        starts = list(range(0, n, m))
        total, outs, names = None, [], ()
        for k, s in enumerate(starts):
            rep, names, fused = self._chunk(a[s : s + m], b[s : s + m], t[s : s + m], len(a[s : s + m]) / n,
                                            k == 0, k == len(starts) - 1, cfg,
                                            None if target is None else target[s : s + m])
            total = rep if total is None else total + rep
            outs.append(fused)
        report = self._update(total)
        return report[0], dict(zip(names, report[1:])), np.concatenate(outs) if len(outs) > 1 else outs[0]

    def _chunk(self, a, b, t, share: float, first: bool, last: bool, cfg: StepConfig, target=None):
        """Forward and backward of one chunk, its loss scaled by ``share`` and added to the gradients (``first``,
        ``last``: the batch's first and last chunk; ``target``: its known fused images or None). Returns (the
        framework vector [loss, *terms] x share, the term names, the fused numpy batch)."""
        raise NotImplementedError

    def _update(self, total) -> list[float]:
        """The optimizer step after the chunks; ``total`` (summed ``_chunk`` vectors), averaged over the processes,
        as floats."""
        raise NotImplementedError


LOSS_RECORD = "losses.jsonl"  # a run folder's per-step record: RunLog writes it, --resume trims it


def drop_records_after(run_dir: str, steps: int) -> int:
    """On --resume: drop losses.jsonl's records of steps the checkpoint does not hold (a run killed mid-epoch
    logged them; its resumed run logs those steps again, and film curves would draw both). Returns how many."""
    from film.common.atomic import atomic_write_bytes

    path = os.path.join(run_dir, LOSS_RECORD)
    if not os.path.isfile(path):
        return 0
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by the kill
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] < steps:
            keep.append(line if line.endswith(b"\n") else line + b"\n")
    dropped = len(lines) - len(keep)
    if dropped:
        atomic_write_bytes(path, b"".join(keep))
        print(f"film train: {path}: dropped {dropped} records past the checkpoint's step {steps}", file=sys.stderr,
              flush=True)
    return dropped


class RunLog:
    """log.txt (the official format) plus TensorBoard scalars when the backend offers a writer
    (``trainer.scalar_writer(run_dir)``: torch's SummaryWriter when tensorboard is installed); this module
    itself imports no framework."""

    def __init__(self, run_dir: str, writer=None):
        self.path = os.path.join(run_dir, "log.txt")
        self.steps = os.path.join(run_dir, LOSS_RECORD)  # one JSON line per step, full precision (film curves)
        self.writer = writer

    def step(self, record: dict) -> None:
        with guarded_write(self.steps, "the loss record"), open(self.steps, "a") as f:
            f.write(json.dumps(record) + "\n")

    def record(self, step: int, epoch: int, batch: int, per_epoch: int, epochs: int, loss: float, parts: dict,
               lr: float) -> None:
        """One step: the official log line, its losses.jsonl record (full precision) and TensorBoard scalars."""
        self.line(f"[Epoch {epoch + 1}/{epochs}] [Batch {batch}/{per_epoch}] [loss: {loss:f}] "
                  f"[loss_in: {parts['loss_in']:f}] [loss_grad: {parts['loss_grad']:f}] [lr: {lr:g}]")
        self.step({"step": step, "epoch": epoch + 1, "batch": batch, "loss": loss, **parts, "lr": lr,
                   "time": time.time()})
        self.scalars(step, {"loss/total": loss, **{f"loss/{k}": v for k, v in parts.items()}, "lr": lr})

    def line(self, msg: str, echo: bool = False) -> None:
        with guarded_write(self.path, "the training log"), open(self.path, "a") as f:
            f.write(msg + "\n")
        if echo:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def save_pictures(
    run_dir: str, epoch: int, a: np.ndarray, b: np.ndarray, f: np.ndarray, names: list[str]
) -> None:
    """pic_fusion/ckpt_<epoch>/<name>.png: A | B | F side by side (the official train.py saves these)."""
    folder = make_dirs(os.path.join(run_dir, "pic_fusion", f"ckpt_{epoch}"))
    for i, name in enumerate(names):
        row = np.hstack([a[i, 0], b[i, 0], f[i, 0]])
        write_png(os.path.join(folder, f"{name}.png"), np.clip(np.round(row * 255), 0, 255).astype(np.uint8))


def copy_code(run_dir: str, backend: str) -> None:
    """code/: the sources that produced this run (the official train.py copies itself and the net)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dst = make_dirs(os.path.join(run_dir, "code"))
    for rel in (
        "common/forward.py",
        "common/loss.py",
        "common/spec.py",
        "common/training.py",
        f"backends/{backend}/model.py",
        f"backends/{backend}/ops.py",
        f"backends/{backend}/train.py",
        f"backends/{backend}/kernels.py",  # Jittor's own kernels (torch has none)
    ):
        if not os.path.isfile(os.path.join(root, rel)):
            continue
        target = os.path.join(dst, rel.replace("/", "__"))
        with guarded_write(target, "a copy of the code"):
            shutil.copyfile(os.path.join(root, rel), target)


def open_data(cfg: RunConfig, trainer) -> tuple[H5Pairs, int, int]:
    """The run's H5, checked against the network and the batch: (data, largest H, largest W)."""
    world = trainer.world
    if cfg.step.batch_size % world:
        raise FilmError(f"--batch-size {cfg.step.batch_size} is not divisible by the {world} processes")
    data = H5Pairs(cfg.h5)
    try:
        sizes = data.check(trainer.model_cfg.text_dim)
        if cfg.step.batch_size > 1 and len(set(sizes.values())) > 1:
            raise FilmError(
                f"{cfg.h5}: samples of {len(set(sizes.values()))} different sizes cannot be batched by "
                f"{cfg.step.batch_size}: use --batch-size 1 or an H5 made with film prepare --small")
        if len(data) < cfg.step.batch_size:
            raise FilmError(f"{cfg.h5}: {len(data)} samples, fewer than one batch of {cfg.step.batch_size} (drop_last)")
    except BaseException:
        data.close()
        raise
    h, w = (max(s[i] for s in sizes.values()) for i in (0, 1))
    return data, h, w


class Start(NamedTuple):
    """Where a run starts (``start_run``)."""

    cfg: RunConfig  # as planned for this machine
    run_dir: str
    epoch: int  # the 0-based epoch to run first
    skip: int  # batches of that epoch already done (a mid-epoch checkpoint)
    step: int  # steps done in all


RUN_DIR_ENV = "FILM_RUN_DIR"  # film train --nproc: the run folder every worker (and every restart) uses


def elastic_resume(run_dir: str | None, exts: tuple[str, ...] = (".pth", ".pkl")) -> str | None:
    """Under film train --nproc the launcher names the run folder (RUN_DIR_ENV); a worker restarted by torchrun's
    elastic agent finds its own run there and resumes it: the folder when it holds a checkpoint, else None."""
    if run_dir and os.path.isfile(os.path.join(run_dir, "param.json")):
        if any(newest_checkpoint(run_dir, ext) for ext in exts):
            return run_dir
    return None


def start_run(run: Run, trainer, h: int, w: int) -> Start:
    """Plan the step for this machine (one line refuses a step that cannot fit), then build the trainer: from
    the newest checkpoint of ``run.run_dir`` (--resume: mid-epoch or end of epoch), or new (its init, a new run
    folder with param.json and code/)."""
    cfg, main = run.cfg, trainer.rank == 0
    plan = trainer.plan(cfg.step, cfg.step.batch_size // trainer.world, h, w)
    cfg = replace(cfg, step=replace(cfg.step, micro_batch=plan.micro_batch, heap_reuse=plan.heap_reuse,
                                    recompute=plan.recompute))
    if run.run_dir:
        start = resume_from(run, cfg, trainer)
    else:
        start = begin_new(cfg, trainer)
    if main:  # after the run folder exists: a refused output location stays a one-line error
        print(f"film train: {plan.describe(cfg.step.batch_size // trainer.world)}", file=sys.stderr, flush=True)
    return start


def resume_from(run: Run, cfg: RunConfig, trainer) -> Start:
    run_dir, main = run.run_dir, trainer.rank == 0
    path = newest_checkpoint(run_dir, trainer.ext)
    if path is None:
        raise FilmError(f"{run_dir}: no model/ckpt_<epoch>{trainer.ext} or step_<step>{trainer.ext} to resume from")
    pos = trainer.load_resume(path, cfg.step)
    epoch, skip = (pos["epoch"] + 1, 0) if pos["batch"] is None else (pos["epoch"], pos["batch"])
    if epoch >= cfg.epochs:
        raise FilmError(f"{run_dir}: already trained {epoch} of {cfg.epochs} epochs: pass --epochs N with "
                        f"N > {epoch} to train it further (the StepLR schedule continues)")
    saved_epochs = run.params.get("epochs")
    if main:
        drop_records_after(run_dir, pos["step"])
        remove_files(glob.glob(os.path.join(run_dir, "model", TEMP_PREFIX + "*")))  # writes cut short by a kill
        if saved_epochs is not None and cfg.epochs != saved_epochs:
            write_params(run_dir, {**run.params, "epochs": cfg.epochs})
            print(f"film train: {run_dir}: {saved_epochs} -> {cfg.epochs} epochs", file=sys.stderr, flush=True)
        print(f"film train: resuming {path} (epoch {epoch + 1}, step {pos['step']})", file=sys.stderr, flush=True)
    return Start(cfg, run_dir, epoch, skip, pos["step"])


def begin_new(cfg: RunConfig, trainer) -> Start:
    trainer.setup(cfg.step, cfg.init)  # a bad --init fails here, before a run folder exists
    run_dir = os.environ.get(RUN_DIR_ENV) or os.path.join(cfg.out, run_name(cfg))
    if trainer.world > 1 and not os.environ.get(RUN_DIR_ENV):
        run_dir = trainer.share(run_dir)  # the name holds a timestamp: take rank 0's
    if trainer.rank == 0:
        from film.common.init import INIT_DESCRIPTION

        make_dirs(os.path.join(run_dir, "model"), "run folder")
        drop_records_after(run_dir, 0)  # a restarted job whose first attempt died before its first checkpoint
        # one vocabulary: the configs' field names, which are film train's flags and what --resume reads back
        # (the official param.json's epoch/optim_step/optim_gamma/gradweight are epochs/step_size/gamma/
        # grad_weight here; docs/training.md, "Run folder")
        write_params(run_dir, {
            **cfg.params(),
            "world_size": trainer.world,
            "model_config": trainer.model_cfg.to_dict(),  # read back by load_fuser for model/ckpt_*
            "init_drawn": f"from {cfg.init}" if cfg.init else f"{INIT_DESCRIPTION}, seed {cfg.step.seed}",
        })
        copy_code(run_dir, cfg.backend)
    trainer.barrier()  # the folder exists before any rank writes into it
    return Start(cfg, run_dir, 0, 0, 0)


def write_params(run_dir: str, params: dict) -> None:
    from film.common.atomic import atomic_write_bytes

    atomic_write_bytes(os.path.join(run_dir, "param.json"), json.dumps(params, indent=2).encode())


def save_step_checkpoint(trainer, run_dir: str, epoch: int, step: int, batch: int) -> None:
    """A mid-epoch checkpoint model/step_<step>; then only the newest KEEP_STEP_CHECKPOINTS stay (the older ones
    are removed after the new one is complete, so a failed write keeps the last good one)."""
    trainer.save(os.path.join(run_dir, "model", f"step_{step}{trainer.ext}"), epoch, step, batch)
    if trainer.rank == 0:
        remove_files(p for p, _ in step_checkpoints(run_dir, trainer.ext)[:-KEEP_STEP_CHECKPOINTS])


def save_epoch_checkpoint(trainer, run_dir: str, epoch: int, step: int) -> None:
    """model/ckpt_<epoch> in the official layout; the mid-epoch checkpoints before it are then superseded."""
    trainer.save(os.path.join(run_dir, "model", f"ckpt_{epoch + 1}{trainer.ext}"), epoch, step)
    if trainer.rank == 0:
        remove_files(p for p, _ in step_checkpoints(run_dir, trainer.ext))


def train(run: Run | RunConfig, trainer) -> str:
    """Run (or resume) training; returns the run folder. ``run``: a resolved run (``resolve_run``; a RunConfig is
    resolved here), ``trainer``: a backend Trainer.

    Under torchrun / mpirun the trainer has ``world`` > 1: every rank runs this loop on its share of each
    batch, and only rank 0 writes the run folder (param.json, code/, log, pictures, checkpoints)."""
    from tqdm import tqdm

    if isinstance(run, RunConfig):
        run = resolve_run(run, trainer.model_cfg)
    rank, world, main = trainer.rank, trainer.world, trainer.rank == 0
    data, h, w = open_data(run.cfg, trainer)
    log = bar = None
    try:
        cfg, run_dir, start_epoch, skip, step = start_run(run, trainer, h, w)
        st = cfg.step
        share = st.batch_size // world
        per_epoch = len(data) // st.batch_size
        log = RunLog(run_dir, trainer.scalar_writer(run_dir)) if main else None
        bar = tqdm(total=cfg.epochs * per_epoch, initial=start_epoch * per_epoch + skip, desc=f"train [{cfg.backend}]",
                   unit="step", file=sys.stderr, disable=None if main else True, dynamic_ncols=True)
        for epoch in range(start_epoch, cfg.epochs):
            lr = lr_at(st, epoch)
            trainer.set_lr(lr)
            t0 = time.time()
            batches = epoch_batches(len(data), st.batch_size, st.seed, epoch)
            for i in range(skip if epoch == start_epoch else 0, per_epoch):
                idx = batches[i][rank * share : (rank + 1) * share]
                a, b, t, names = load_batch(data, idx)
                loss, parts, fused = trainer.step(a, b, t, st, load_targets(data, idx))
                if not math.isfinite(loss):
                    last = newest_checkpoint(run_dir, trainer.ext)
                    keep = f"; the last good checkpoint is {last}" if last else ""
                    raise FilmError(f"loss became {loss} at epoch {epoch + 1}, step {step}: training stopped{keep}")
                if main:
                    log.record(step, epoch, i, per_epoch, cfg.epochs, loss, parts, lr)
                    if i <= 1:
                        save_pictures(run_dir, epoch + 1, a, b, fused, names)
                step += 1
                bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch + 1)
                bar.update(1)
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    break
                if cfg.save_every and step % cfg.save_every == 0 and i + 1 < per_epoch:
                    save_step_checkpoint(trainer, run_dir, epoch, step, i + 1)
            save_epoch_checkpoint(trainer, run_dir, epoch, step)
            if main:
                log.line(f"This Epoch takes time: {time.time() - t0:.1f}s")
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        data.close()
    return run_dir
