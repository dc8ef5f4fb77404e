"""Keep freed memory for reuse while a CPU forward runs (glibc malloc settings, scoped).

A FILM forward at 480x640 allocates and frees ~100 feature maps of 20-150 MB. glibc serves every block over
its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it back on ``free``, so each map is
faulted in page by page, zeroed by the kernel, again and again: on the 2-core VMs we measure on, over half
of the torch forward was the kernel handing out pages (``sys`` time above ``user``). This is why PyTorch's
CPU performance guides preload jemalloc or tcmalloc. ``reuse_freed_memory`` gets the same effect in-process,
only while a forward runs: big blocks come from the heap (``M_MMAP_MAX=0``) and freed ones stay there for
the next map (``M_TRIM_THRESHOLD``); on exit glibc's defaults come back and ``malloc_trim`` returns the free
heap to the system. Measured (docs/parity.md, "Speed steps and their error"): the torch forward 1.5-2x
faster on this VM, peak RSS about +20 %. A no-op off glibc; ``FILM_HEAP=default`` turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_GLIBC_MMAP_MAX = 65536  # glibc's defaults, restored on exit
_GLIBC_TRIM_THRESHOLD = 128 * 1024
KEEP_BYTES = 2**31 - 1  # free memory kept at the top of the heap during a forward (mallopt takes an int)

_lock = threading.Lock()
_depth = [0]
_libc: list = []


def _glibc():
    if not _libc:
        lib = None
        try:
            name = ctypes.util.find_library("c")
            cand = ctypes.CDLL(name) if name else None
            if cand is not None and hasattr(cand, "mallopt") and hasattr(cand, "malloc_trim") and hasattr(
                cand, "gnu_get_libc_version"
            ):
                lib = cand
        except OSError:
            lib = None
        _libc.append(lib)
    return _libc[0]


def enabled() -> bool:
    return os.environ.get("FILM_HEAP", "reuse") != "default" and _glibc() is not None


@contextlib.contextmanager
def reuse_freed_memory():
    """Within the block, big allocations come from glibc's heap and freed ones are reused (nesting-safe)."""
    libc = _glibc() if enabled() else None
    if libc is None:
        yield
        return
    with _lock:
        if _depth[0] == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
        _depth[0] += 1
    try:
        yield
    finally:
        with _lock:
            _depth[0] -= 1
            if _depth[0] == 0:
                libc.mallopt(M_MMAP_MAX, _GLIBC_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
                libc.malloc_trim(0)
