"""The torch backend's CPU workspace (film/backends/torch/workspace.py): a library fuse reuses its feature maps
without changing the host's malloc, gives the same numbers as torch's default allocator, and gives its memory
back. Judged from outside the module: resident memory read from /proc, glibc's own accounting (mallinfo2) and a
second process run with torch's default allocator (FILM_TORCH_WORKSPACE=0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_heap import _PROBE, HOST_BLOCK  # glibc's mallinfo2, resident memory from a probe process

pytestmark = pytest.mark.torch

_RUN = """
import json, os, sys, numpy as np
import film
rng = np.random.default_rng(7)
a, b = rng.random((2, 200, 264), dtype=np.float32)
t = rng.standard_normal((11, 768)).astype(np.float32)
f = film.load_fuser("random", backend="torch", device="cpu")
out = f.fuse(a, b, t)
np.save(sys.argv[1], out)
from film.backends.torch import workspace
print(json.dumps({"status": workspace.status(), **workspace.stats()}))
"""


def _run(code: str, *args, env_extra: dict | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("FILM_TORCH_WORKSPACE", "FILM_HEAP")}
    env.update(env_extra or {})
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_same_numbers_as_torchs_default_allocator(tmp_path):
    """The workspace only changes where maps live: bit-identical to a run with torch's own allocator."""
    on, off = tmp_path / "on.npy", tmp_path / "off.npy"
    s_on = json.loads(_run(_RUN, str(on)).splitlines()[-1])
    s_off = json.loads(_run(_RUN, str(off), env_extra={"FILM_TORCH_WORKSPACE": "0"}).splitlines()[-1])
    assert s_on["status"] == "on" and s_on["maps"] > 0 and s_on["reuses"] > s_on["maps"]
    assert s_off["status"].startswith("off")
    assert np.array_equal(np.load(on), np.load(off))


_HOST = _PROBE + HOST_BLOCK + """
import json
import film, torch
res = {"before": host_block()}
rng = np.random.default_rng(0)
a = rng.random((320, 400), dtype=np.float32)
f = film.load_fuser("random", backend="torch", device="cpu")
f.fuse(a, a, rng.standard_normal((9, 768)).astype(np.float32))
res["after"] = host_block()
grown = lib.mallinfo2().hblkhd; y = torch.empty(96 * 2**20 // 4); res["torch_mmapped"] = lib.mallinfo2().hblkhd - grown
del y
from film.backends.torch import workspace
res["kept"] = workspace.stats()["kept_bytes"]
r0 = rss(); res["released"] = f.release_memory(); res["rss_drop"] = r0 - rss()
print(json.dumps(res))
"""


def test_host_program_keeps_glibcs_behaviour_and_gets_the_memory_back():
    """Around a library fuse, a block the host frees leaves resident memory (glibc's default), a big torch
    tensor made by the host outside a forward is still glibc's mmap (the workspace only passes through), and
    release_memory gives the kept maps back to the system."""
    got = json.loads(_run(_HOST).splitlines()[-1])
    mb = 2**20
    assert got["before"] >= 190 * mb and got["after"] >= 190 * mb, got
    assert got["torch_mmapped"] >= 96 * mb, got
    assert got["kept"] > 100 * mb and got["released"] == got["kept"], got
    assert got["rss_drop"] >= got["kept"] // 2, got


def test_refused_build_falls_back_to_torchs_allocator(tmp_path):
    """No C++ compiler: fusing still works with torch's default allocator, and status() says why."""
    code = _RUN
    out = _run(code, str(tmp_path / "x.npy"), env_extra={"CXX": "/nonexistent/c++", "XDG_CACHE_HOME": str(tmp_path)})
    s = json.loads(out.splitlines()[-1])
    assert s["status"].startswith("could not be built"), s
    assert np.load(tmp_path / "x.npy").shape == (200, 264)


_SIZES = """
import json, numpy as np
import film
from film.backends.torch import workspace
rng = np.random.default_rng(1)
t = rng.standard_normal((9, 768)).astype(np.float32)
f = film.load_fuser("random", backend="torch", device="cpu")
res = []
for h, w in ((160, 200), (160, 200), (240, 300), (160, 200)):
    a = rng.random((h, w), dtype=np.float32)
    f.fuse(a, a, t)
    res.append(workspace.stats())
print(json.dumps(res))
"""


def test_kept_maps_follow_the_last_image_size():
    """The same size again maps nothing new; another size leaves only its own maps kept (no pile-up over a
    folder of many sizes)."""
    s = json.loads(_run(_SIZES).splitlines()[-1])
    assert s[1]["maps"] == s[0]["maps"] and s[1]["kept_bytes"] == s[0]["kept_bytes"], s  # all reused
    assert s[2]["maps"] > s[1]["maps"], s
    # without dropping, every block of the first size would stay kept beside the new ones
    new_bytes = s[2]["mapped_total"] - s[1]["mapped_total"]
    assert s[2]["kept_bytes"] < s[1]["kept_bytes"] + new_bytes, s
    assert s[3]["maps"] > s[2]["maps"], s  # the small size's maps were given back, so they are mapped again
