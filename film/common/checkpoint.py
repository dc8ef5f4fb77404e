"""Checkpoints in every format, framework-free: read, unwrap, validate against the schema, write.

Formats
-------
``.pth``         PyTorch zip. Official training dict ``{'model','optimizer1','lr_schedule1','epoch','step'}``
                 with DataParallel ``module.`` keys, or a bare state dict, with or without the prefix.
``.pkl``         Jittor ``jt.save({'model': state_dict, ...})`` (pickle + sha1 trailer), or a bare state dict.
``.safetensors`` flat tensors; the model only (optimizer state has no flat layout), plus metadata.

Reading never executes code: see :mod:`film.common.safeio`.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from film.common.safeio import read_jittor_pkl, read_torch_zip, write_jittor_pkl, write_torch_zip
from film.common.spec import CHECKPOINT_KEYS, DATAPARALLEL_PREFIX, OFFICIAL, FilmConfig, param_schema
from film.defaults import TASKS
from film.errors import FilmError

FORMATS = {".pth": "pth", ".pt": "pth", ".bin": "pth", ".pkl": "pkl", ".safetensors": "safetensors"}
_MAX_LISTED = 12
_NAMED = 3  # tensors named per kind in a schema error (the rest counted): the message stays one line


@dataclass
class Checkpoint:
    """A validated FILM state dict (numpy float32, canonical names) plus what else the file held."""

    state_dict: OrderedDict[str, np.ndarray]
    extras: dict = field(default_factory=dict)  # optimizer1, lr_schedule1, epoch, step, ... when present
    source_format: str = ""
    cfg: FilmConfig = OFFICIAL  # the configuration the tensors were validated against


def detect_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".onnx":
        raise FilmError(f"{path}: an ONNX model made by film export holds a graph, not weights: run it with "
                        "--backend onnx (film fuse, load_fuser); convert and train from the checkpoint it came from")
    if ext not in FORMATS:
        raise FilmError(
            f"{path}: unknown checkpoint extension {ext!r} (expected one of {', '.join(FORMATS)})"
        )
    return FORMATS[ext]


def _read_pth(path: str) -> object:
    if zipfile.is_zipfile(path):
        return read_torch_zip(path)
    # Legacy (pre-1.6) torch serialization is a sequence of pickles; only torch can read it, and
    # only with weights_only=True so no code runs.
    try:
        import torch
    except ImportError:
        raise FilmError(
            f"{path}: not a zip-format PyTorch checkpoint (empty, truncated, or saved by torch<1.6, "
            "which needs torch to read: pip install 'film-fusion[torch]')"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types here (KeyError '101' for a text file: the first byte read
        # as a pickle opcode), all of which mean "unreadable"; their text is noise to a user
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):
            raise FilmError(f"{path}: not a readable PyTorch checkpoint: a damaged zip archive (truncated?)") from None
        raise FilmError(
            f"{path}: not a PyTorch checkpoint: neither a zip archive (torch >= 1.6) nor a legacy torch "
            f"pickle (the file starts with {head!r}); is it truncated, or another kind of file?"
        ) from None

    def to_np(x):
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().float().numpy() if x.dtype == torch.bfloat16 else x.detach().cpu().numpy()
        if isinstance(x, dict):
            return type(x)((k, to_np(v)) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return type(x)(to_np(v) for v in x)
        return x

    return to_np(obj)


def _read_safetensors(path: str) -> object:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError, UnicodeDecodeError, MemoryError) as e:
        raise FilmError(f"{path}: not a readable safetensors file ({str(e)[:200]})") from None
    meta = header.get("__metadata__", {}) or {}
    extras = {}
    for k in ("epoch", "step"):
        if k in meta:
            try:
                extras[k] = int(meta[k])
            except ValueError:
                pass
    extras.update({k: v for k, v in meta.items() if k.startswith("film_") and k != "film_config" and isinstance(v, str)})
    if "film_config" in meta:
        try:
            extras["film_config"] = FilmConfig.from_dict(json.loads(meta["film_config"]))
        except (ValueError, TypeError) as e:
            raise FilmError(f"{path}: unreadable film_config metadata ({e})") from None
    return {"model": OrderedDict(tensors), **extras}


def read_raw(path: str | os.PathLike) -> object:
    """The top-level object of a checkpoint file, tensors as numpy arrays."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if not os.path.exists(path):
        raise FilmError(f"{path}: no such file")
    if os.path.isdir(path):
        raise FilmError(f"{path}: is a folder, not a checkpoint file")
    if os.path.getsize(path) == 0:
        raise FilmError(f"{path}: empty file")
    if fmt == "pth":
        return _read_pth(path)
    if fmt == "pkl":
        return read_jittor_pkl(path)
    return _read_safetensors(path)


def unwrap(obj: object, path: str = "checkpoint") -> tuple[OrderedDict[str, np.ndarray], dict]:
    """Find the state dict (``obj['model']``, ``obj['state_dict']`` or ``obj`` itself) and strip ``module.``."""
    if not isinstance(obj, dict):
        raise FilmError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    extras: dict = {}
    sd = obj
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            sd = obj[key]
            extras = {k: v for k, v in obj.items() if k != key}
            break
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    bad = []
    for k, v in sd.items():
        if not isinstance(k, str):
            bad.append(repr(k))
            continue
        name = k[len(DATAPARALLEL_PREFIX) :] if k.startswith(DATAPARALLEL_PREFIX) else k
        if not isinstance(v, np.ndarray):
            bad.append(f"{k} ({type(v).__name__})")
            continue
        out[name] = v
    if bad:
        raise FilmError(f"{path}: entries that are not tensors: {', '.join(bad[:_MAX_LISTED])}")
    return out, extras


def validate(sd: dict, cfg: FilmConfig = OFFICIAL, path: str = "checkpoint") -> None:
    """Raise one :class:`FilmError` listing every missing, unexpected, mis-shaped or non-finite tensor."""
    schema = param_schema(cfg)
    missing = [k for k in schema if k not in sd]
    unexpected = [k for k in sd if k not in schema]
    wrong = [
        f"{k}: {tuple(sd[k].shape)} != {schema[k]}"
        for k in schema
        if k in sd and tuple(sd[k].shape) != schema[k]
    ]
    dtype = [f"{k}: {sd[k].dtype}" for k in schema if k in sd and not np.issubdtype(sd[k].dtype, np.floating)]
    nonfinite = [
        k
        for k in schema
        if k in sd and np.issubdtype(sd[k].dtype, np.floating) and not np.isfinite(sd[k]).all()
    ]
    if not (missing or unexpected or wrong or dtype or nonfinite):
        return

    def block(title, items):  # one line in all: how many, and the first few by name
        more = f" and {len(items) - _NAMED} more" if len(items) > _NAMED else ""
        return f"{title} ({len(items)}): " + ", ".join(items[:_NAMED]) + more

    found = len(schema) - len(missing)
    head = (
        f"{path}: does not match the FILM parameter schema ({found} of {len(schema)} expected tensors found)"
    )
    if found == 0:
        head = f"{path}: not a FILM checkpoint (none of the {len(schema)} expected tensors found)"
    parts = [block(title, items) for title, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", wrong),
        ("not floating point", dtype),
        ("NaN or inf values", nonfinite),
    ) if items]
    raise FilmError(f"{head}: " + "; ".join(parts))


def canonical_state_dict(state_dict: dict, cfg: FilmConfig, where: str = "state dict", to_numpy=np.asarray):
    """What both backends' ``load_state_dict`` load: ``module.`` stripped (DataParallel keys), validated
    against the schema (one FilmError listing every problem), float32 contiguous, in schema order."""
    if not isinstance(state_dict, dict):
        raise FilmError(f"{where}: expected a dict of tensors, got {type(state_dict).__name__}")
    arrays = {
        (k[len(DATAPARALLEL_PREFIX) :] if isinstance(k, str) and k.startswith(DATAPARALLEL_PREFIX) else k): to_numpy(v)
        for k, v in state_dict.items()
    }
    validate(arrays, cfg, where)
    return OrderedDict((k, np.ascontiguousarray(arrays[k], dtype=np.float32)) for k in param_schema(cfg))


def stored_config(path: str, extras: dict) -> FilmConfig | None:
    """The FilmConfig saved with a checkpoint: safetensors metadata, or the ``model_config`` of the run
    folder's param.json for ``<run>/model/ckpt_<epoch>.pth|.pkl`` written by film train; None if neither."""
    if isinstance(extras.get("film_config"), FilmConfig):
        return extras["film_config"]
    param = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "param.json")
    if os.path.basename(os.path.dirname(os.path.abspath(path))) == "model" and os.path.isfile(param):
        try:
            with open(param) as f:
                d = json.load(f).get("model_config")
            return FilmConfig.from_dict(d) if d is not None else None
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise FilmError(f"{param}: unreadable model_config ({e})") from None
    return None


# Checkpoint names every command accepts where it takes a checkpoint path (a file of that name: ./demo).
RANDOM, DEMO = "random", "demo"
# "demo-IVF", "demo-MIF", "demo-MEF", "demo-MFF": one task's demo weights (docs/training.md, "Demo weights")


def demo_file(name) -> str | None:
    """The shipped file a demo name stands for ("demo" -> demo.safetensors, "demo-IVF" (any case) ->
    demo-IVF.safetensors), or None for anything else."""
    if not isinstance(name, str):
        return None
    if name == DEMO:
        return "demo.safetensors"
    if name[:5].lower() == "demo-" and name[5:].upper() in TASKS:
        return f"demo-{name[5:].upper()}.safetensors"
    return None


def demo_task(name) -> str | None:
    """The task of a task demo name ("demo-mff" -> "MFF"), else None."""
    file = demo_file(name)
    return file[5:-len(".safetensors")] if file and file != "demo.safetensors" else None


def for_task(checkpoint, task: str | None):
    """The checkpoint ``task`` picks: "demo" with a task is that task's demo weights ("demo-TASK"); a task demo
    name of the same task, or no task, leaves the checkpoint as it is. Anything else with a task is refused: the
    task chooses among the demo weights, and any other checkpoint is one network already."""
    if task is None:
        return checkpoint
    if task not in TASKS:
        raise FilmError(f"unknown task {task!r}: one of {', '.join(TASKS)}")
    if checkpoint == DEMO:
        return f"demo-{task}"
    holds = demo_task(checkpoint)
    if holds == task:
        return checkpoint
    if holds:
        raise FilmError(f"{checkpoint} holds the {holds} weights but the task is {task}: "
                        f"use --checkpoint demo-{task}, or demo with the task")
    what = repr(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else "this checkpoint"
    raise FilmError(f"a task picks among the demo weights (--checkpoint demo); {what} is one network already: "
                    "leave the task out")


def demo_weights_path(name: str = DEMO) -> str:
    """The demo weights shipped in the package (``name``: "demo", all tasks, or "demo-TASK", one task's;
    film/weights/; docs/training.md, "Demo weights"): not the official FILM, trained briefly on public pairs with
    synthetic text."""
    file = demo_file(name)
    if file is None:
        raise FilmError(f"{name!r}: not a demo weights name (demo, or demo-TASK with TASK one of {', '.join(TASKS)})")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", file)
    if not os.path.isfile(path):
        raise FilmError(f"the demo weights are missing from this installation ({path}): reinstall film-fusion, or "
                        "pass a checkpoint file")
    return path


def load_checkpoint(path: str | os.PathLike, cfg: FilmConfig | None = None) -> Checkpoint:
    """Read any supported checkpoint, unwrap it, validate it against the schema, return float32 tensors.

    ``path``: a file, or ``"demo"`` / ``"demo-TASK"`` (the shipped demo weights, all tasks / one task's) or
    ``"random"`` (seeded random weights).
    cfg=None: the configuration stored with the weights (:func:`stored_config`), else the official one."""
    path = os.fspath(path)
    if path == RANDOM:
        from film.common.init import random_state_dict

        cfg = cfg or OFFICIAL
        return Checkpoint(random_state_dict(cfg, seed=0), {}, RANDOM, cfg)
    if demo_file(path):
        path = demo_weights_path(path)
    raw = read_raw(path)
    sd, extras = unwrap(raw, path)
    if cfg is None:
        cfg = stored_config(path, extras) or OFFICIAL
    extras.pop("film_config", None)
    validate(sd, cfg, path)
    schema = param_schema(cfg)
    ordered = OrderedDict((k, np.ascontiguousarray(sd[k], dtype=np.float32)) for k in schema)
    return Checkpoint(ordered, extras, detect_format(path), cfg)


def load_weights(checkpoint, cfg: FilmConfig | None = None) -> Checkpoint:
    """What a backend loads: a checkpoint path or name (``load_checkpoint``), None (= ``"random"``), or a state
    dict in memory (numpy or framework tensors with ``module.`` keys or not), validated against ``cfg`` (None:
    the stored configuration, else the official one)."""
    if checkpoint is None:
        checkpoint = RANDOM
    if not isinstance(checkpoint, dict):
        return load_checkpoint(checkpoint, cfg)
    cfg = cfg or OFFICIAL
    sd, extras = unwrap(checkpoint, "state dict")
    validate(sd, cfg, "state dict")
    return Checkpoint(sd, extras, "dict", cfg)


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: dict,
    extras: dict | None = None,
    cfg: FilmConfig = OFFICIAL,
    keep_optimizer: bool = False,
) -> None:
    """Write a validated state dict in the format given by ``path``'s extension, atomically.

    ``.pth``: the official training dict; keys carry the DataParallel ``module.`` prefix so the official
    ``test.py`` loads it into ``nn.DataParallel(Net())`` unchanged. ``optimizer1``/``lr_schedule1`` are
    the stored ones when ``keep_optimizer`` and present, else ``None``.
    ``.pkl``: ``{'model': state_dict}`` as ``jt.save`` writes it (plus optimizer state if kept).
    ``.safetensors``: the state dict, ``epoch``/``step`` in metadata.
    """
    path = os.fspath(path)
    fmt = detect_format(path)
    validate(state_dict, cfg, "state dict to save")
    extras = dict(extras or {})
    schema = param_schema(cfg)
    sd = OrderedDict((k, np.ascontiguousarray(state_dict[k])) for k in schema)
    if fmt == "pth":
        obj = OrderedDict()
        obj["model"] = OrderedDict((DATAPARALLEL_PREFIX + k, v) for k, v in sd.items())
        for key in CHECKPOINT_KEYS[1:]:
            if key in ("optimizer1", "lr_schedule1") and not keep_optimizer:
                obj[key] = None
            else:
                obj[key] = extras.get(key)
        write_torch_zip(path, obj)
    elif fmt == "pkl":
        obj = {"model": dict(sd)}
        for key in ("epoch", "step"):
            if extras.get(key) is not None:
                obj[key] = extras[key]
        if keep_optimizer:
            for key in ("optimizer1", "lr_schedule1"):
                if extras.get(key) is not None:
                    obj[key] = extras[key]
        write_jittor_pkl(path, obj)
    else:
        from safetensors.numpy import save_file

        from film.common.atomic import atomic_path

        # the network's configuration travels with the weights (as HF's config.json does); load_fuser reads it
        meta = {"format": "pt", "producer": "film-fusion", "film_config": json.dumps(cfg.to_dict())}
        for key in ("epoch", "step"):
            if isinstance(extras.get(key), (int, np.integer)):
                meta[key] = str(int(extras[key]))
        for key, value in extras.items():  # film's own notes (e.g. film_demo: what the demo weights are)
            if key.startswith("film_") and key != "film_config" and isinstance(value, str):
                meta[key] = value
        with atomic_path(path) as tmp:
            save_file(dict(sd), tmp, metadata=meta)


def convert(src: str, dst: str, cfg: FilmConfig | None = None, keep_optimizer: bool = False) -> Checkpoint:
    """Convert between any two formats; the tensors are copied bit for bit. cfg=None: the configuration
    stored with the weights, else the official one."""
    if os.path.abspath(src) == os.path.abspath(dst):
        raise FilmError(f"{dst}: output would overwrite the input")
    detect_format(dst)
    from film.common.atomic import check_output_file

    check_output_file(dst)  # an unwritable output is refused before the input is read
    ck = load_checkpoint(src, cfg)
    save_checkpoint(dst, ck.state_dict, ck.extras, ck.cfg, keep_optimizer=keep_optimizer)
    return ck
