"""Reduced precision for inference (opt-in, off by default): which precisions exist, and where they may run.

``float32`` is the default and the only precision tested against the official network. ``bf16`` runs the
convolutions and matrix products in bfloat16 (torch autocast) on CPUs with native bf16 instructions
(AVX512-BF16 or AMX) and on CUDA GPUs; ``fp16`` on CUDA GPUs only. Elsewhere they are refused in one line: on a
CPU without native bf16, torch emulates it and runs slower than float32, so the option would only cost accuracy.
What bf16 costs and buys on CPU (speed, PSNR against float32, Qabf/VIFF): docs/parity.md, "Reduced precision".
"""

from __future__ import annotations

from film.errors import FilmError

PRECISIONS = ("float32", "bf16", "fp16")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    return any(f in (cpu_flags() if flags is None else flags) for f in _BF16_FLAGS)


def check_precision(precision: str, device_type: str, backend: str, *, reduced: bool = True,
                    flags: set[str] | None = None) -> str:
    """``precision`` if it may run on ``device_type`` ('cpu' / 'cuda') with ``backend`` (``reduced``: whether that
    backend implements reduced precision at all), else a FilmError."""
    if precision not in PRECISIONS:
        raise FilmError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "float32":
        return precision
    if not reduced:
        raise FilmError(f"precision {precision}: only the torch backend runs reduced precision; the {backend} "
                        "backend runs float32 (leave --precision at float32)")
    if device_type == "cuda":
        return precision
    if precision == "fp16":
        raise FilmError("precision fp16 runs on CUDA GPUs only; on a CPU use bf16 (where the CPU has native bf16) "
                        "or float32")
    if not cpu_has_native_bf16(flags):
        raise FilmError("precision bf16 needs a CPU with native bf16 instructions (AVX512-BF16 or AMX), which this "
                        "CPU does not have: torch would emulate it, slower than float32; use float32")
    return precision
