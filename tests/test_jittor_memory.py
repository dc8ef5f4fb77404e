"""The Jittor backend in library use keeps the blocks its allocator frees for the next forward of the same size
(film/backends/jittor/backend.py), without changing the host's malloc: judged from outside, by resident memory
read from /proc in a probe process, and by the fused images themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_heap import HOST_BLOCK  # resident memory read by a probe process

pytestmark = pytest.mark.jittor

_PROBE = HOST_BLOCK + """
import json, sys
import film
res = {"before": host_block()}
rng = np.random.default_rng(0)
t = rng.standard_normal((9, 768)).astype(np.float32)
big, small = rng.random((320, 400), dtype=np.float32), rng.random((160, 200), dtype=np.float32)
f = film.load_fuser("random", backend="jittor", device="cpu")
r = [rss()]
out1 = f.fuse(big, big, t); r.append(rss())
out2 = f.fuse(big, big, t); r.append(rss())
res["after"] = host_block()
f.fuse(small, small, t); r.append(rss())
out3 = f.fuse(big, big, t); r.append(rss())
np.save(sys.argv[1], np.stack([out1, out2, out3]))
res["rss"] = r
r0 = rss(); res["released"] = f.release_memory(); res["rss_drop"] = r0 - rss()
print(json.dumps(res))
"""


def test_library_fuse_keeps_its_blocks_for_the_next_one_and_gives_them_back(jb, tmp_path):
    """A second fuse of the same size adds no resident memory (the first one's blocks are reused), a fuse of
    another size gives the last size's blocks back first, the outputs are the same each time, a block the host
    frees still leaves resident memory (glibc's defaults untouched), and release_memory gives the blocks back."""
    env = {k: v for k, v in os.environ.items() if k != "FILM_HEAP"}
    r = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "out.npy")], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    mb = 2**20
    assert got["before"] >= 190 * mb and got["after"] >= 190 * mb, got
    start, first, second, small, again = got["rss"]
    grown = first - start
    assert grown > 200 * mb, got  # a 320x400 forward's maps
    assert second - first < grown // 10, got  # reused, not mapped again
    assert small < second - grown // 3, got  # the 320x400 blocks went back before the 160x200 forward
    assert got["released"] > 100 * mb and got["rss_drop"] >= got["released"] // 2, got
    outs = np.load(tmp_path / "out.npy")
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
