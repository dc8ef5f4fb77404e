"""``film export``: one ONNX model of FILM for every image size and text length, checked with onnxruntime.

The graph is the torch backend's network in the official NCHW order, exported with ``torch.onnx.export``
(torch.export, opset 18) with dynamic batch N, height H, width W and text length L. The fixed 288x384 token
grid is in the graph as it is in the weights; the nearest resizes to it and back are index arithmetic on the
input's shape (torch's float32 rule min(floor(dst * (in / out)), in - 1), ``film/backends/torch/ops.py``
``exporting``), not the maps of the size traced at export. Inputs ``imageA``, ``imageB`` (N, 1, H, W) float32
in [0, 1], ``text`` (N, L, 768); output ``fused`` (N, 1, H, W), the network's sigmoid output (before the
official min-max stretch), as ``Fuser.fuse`` returns it. The model's metadata holds the FilmConfig, the
checkpoint's SHA-256 and the film version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time

import numpy as np

from film.common.checkpoint import RANDOM, demo_file, demo_weights_path, load_checkpoint
from film.defaults import OPSET
from film.errors import FilmError

INPUTS = ("imageA", "imageB", "text")
OUTPUT = "fused"
CHECK_FACTOR, CHECK_FLOOR = 2.0, 1e-5  # check(): within 2 x max(torch's own float32 error, 1e-5) of float64


def _need_onnx():
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter)
    except ImportError:
        raise FilmError("film export needs onnx and onnxscript: pip install 'film-fusion[onnx]'") from None


def _sha256(checkpoint: str) -> str:
    if checkpoint == RANDOM:
        return "random (seeded random weights, film.common.init.random_state_dict seed 0)"
    path = demo_weights_path(checkpoint) if demo_file(checkpoint) else checkpoint
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_target(output: str) -> None:
    """One FilmError, before any work, for an output film export cannot write: not an .onnx name, or a refused
    location."""
    from film.common.atomic import check_output_file

    if not output.endswith(".onnx"):
        raise FilmError(f"{output}: the output of film export is an .onnx file")
    check_output_file(output)


def export(checkpoint: str, output: str, *, opset: int = OPSET) -> dict:
    """Write the ONNX model of ``checkpoint`` (any format film reads, ``demo`` or ``random``) to ``output``
    (atomically); returns its metadata."""
    _need_onnx()
    check_target(output)
    from film.common.atomic import atomic_path

    ck = load_checkpoint(checkpoint)  # refuses a bad file in one line, before any export work
    import torch

    from film import __version__
    from film.backends.torch import ops
    from film.backends.torch.core import build_model, set_fast

    model = set_fast(build_model(ck.cfg, ck.state_dict, "cpu"), False).eval()

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, imageA, imageB, text):  # noqa: N803 - the ONNX input names
            return self.net(imageA, imageB, text)

    rng = np.random.default_rng(0)
    # sizes other than 0 and 1 (torch.export specialises those) and not the token grid
    example = (torch.from_numpy(rng.random((2, 1, 37, 53), dtype=np.float32)),
               torch.from_numpy(rng.random((2, 1, 37, 53), dtype=np.float32)),
               torch.from_numpy(rng.standard_normal((2, 13, ck.cfg.text_dim)).astype(np.float32)))
    n, h, w, L = (torch.export.Dim(k, min=1, max=m) for k, m in (("N", 1024), ("H", 16384), ("W", 16384),
                                                                  ("L", 4096)))
    dynamic = {"imageA": {0: n, 2: h, 3: w}, "imageB": {0: n, 2: h, 3: w}, "text": {0: n, 1: L}}
    meta = {"film_config": json.dumps(ck.cfg.to_dict()), "film_checkpoint_sha256": _sha256(checkpoint),
            "film_checkpoint": os.path.basename(str(checkpoint)), "film_version": __version__,
            "film_exported": time.strftime("%Y-%m-%d"), "film_output": "sigmoid output before the min-max stretch"}
    import io
    import warnings

    with ops.exporting(), torch.no_grad(), warnings.catch_warnings(), _quiet_logger("torch.onnx"), \
            contextlib.redirect_stdout(io.StringIO()):  # the exporter's own progress lines
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(Exported(), example, dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
                                        input_names=list(INPUTS), output_names=[OUTPUT], verbose=False)
        except Exception as e:  # the exporter's errors are long: one line
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise FilmError(f"exporting to ONNX failed: {type(e).__name__}: {first}") from None
    import onnx

    proto = program.model_proto
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    with atomic_path(output) as tmp:
        onnx.save_model(proto, tmp)
    return meta


@contextlib.contextmanager
def _quiet_logger(name: str):
    """The exporter logs a warning line per torchvision operator it cannot register ("torchvision is not
    installed. Skipping torchvision::nms"): noise for a FILM export, which uses none of them. Errors still show."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def read_metadata(path: str) -> dict:
    import onnx

    try:
        m = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise FilmError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    return {p.key: p.value for p in m.metadata_props}


def check(model_path: str, checkpoint: str, limit: int | None = None,
          on_row=None) -> tuple[bool, list[tuple[str, float, float, float]]]:
    """The exported model (onnxruntime) on the shipped samples at their own sizes, with seeded synthetic text,
    against the float64 network of the same weights (the torch modules in double precision): per pair
    (name, |onnxruntime - float64|, |torch float32 - float64|, |onnxruntime - torch float32|), and whether every pair is within float32
    rounding: at most 2 x max(torch's own float32 error, 1e-5). The graph sums the attention norms and products
    over H*W in float64 (film/backends/torch/ops.py ``qk_cosine``), so it usually lands nearer float64 than the
    torch backend, which keeps the official code's float32 order there."""
    import torch

    from film.api import load_fuser
    from film.common.images import samples_root
    from film.common.pairs import collect_pairs

    torch_fuser = load_fuser(checkpoint, backend="torch", device="cpu", fast=False)
    onnx_fuser = load_fuser(model_path, backend="onnx", device="cpu")
    ref = torch_fuser.impl.float64_reference(torch_fuser.model)
    rows = []
    for it in collect_pairs(pairs=samples_root(), random_text_seed0=0, text_dim=torch_fuser.cfg.text_dim,
                            limit=limit):
        with torch.no_grad():
            f64 = ref(*(torch.from_numpy(np.asarray(x, np.float64)[None, None]) for x in (it.a, it.b)),
                      torch.from_numpy(np.asarray(it.text, np.float64)[None]))[0, 0].numpy()
        y_onnx, y_torch = (f.fuse(it.a, it.b, it.text) for f in (onnx_fuser, torch_fuser))
        rows.append((f"{it.name} ({it.a.shape[1]}x{it.a.shape[0]})", float(np.abs(y_onnx - f64).max()),
                     float(np.abs(y_torch - f64).max()), float(np.abs(y_onnx - y_torch).max())))
        if on_row is not None:  # each pair takes a minute or more on 2 cores: say so as they come
            on_row(rows[-1])
    ok = all(d_onnx <= CHECK_FACTOR * max(d_torch, CHECK_FLOOR) for _, d_onnx, d_torch, _ in rows)
    return ok, rows


def export_checked(checkpoint: str, output: str, *, opset: int = OPSET, on_exported=None, on_row=None,
                   limit: int | None = None) -> tuple[dict, bool, list]:
    """``export`` then ``check``: the model is written under a temporary name beside ``output`` and kept as
    ``output`` only when the check passes (an earlier ``output`` stays otherwise). ``on_exported(meta, path)``
    runs between the two, ``on_row`` after each checked pair. Returns (metadata, ok, rows)."""
    import os

    check_target(output)  # a refused name or location fails here, in one line, before the export
    target = os.path.join(os.path.dirname(os.path.abspath(output)),
                          f".film-check-{os.getpid()}-{os.path.basename(output)}")
    try:
        meta = export(checkpoint, target, opset=opset)
        if on_exported is not None:
            on_exported(meta, target)
        ok, rows = check(target, checkpoint, limit=limit, on_row=on_row)
        if ok:
            os.replace(target, output)
        return meta, ok, rows
    finally:
        if os.path.exists(target):
            os.unlink(target)
