"""Make docs/img/demo_grid.png: the README's A | B | fused grid of the demo weights (film fuse --grid on the
shipped samples; one infrared-visible, one MRI-PET and one multi-focus pair, each scaled to the same width).
Run: .venv/bin/python docs/img/demo_grid.py"""

import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np

WIDTH = 676
ROWS = ["IVF/RoadScene", "MIF/MRI_PET", "MFF/Lytro"]  # sample folders, one grid row (the first pair) each
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "film", "fuse", "--checkpoint", "demo", "--random-text", "--pairs",
                    os.path.join(ROOT, "film", "samples"), "-o", tmp, "--grid"], check=True)
    grids = []
    for row in ROWS:
        folder = os.path.join(tmp, "grid", row)
        name = sorted(os.listdir(folder))[0]
        g = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
        grids.append(cv2.resize(g, (WIDTH, round(g.shape[0] * WIDTH / g.shape[1])), interpolation=cv2.INTER_AREA))
    out = os.path.join(HERE, "demo_grid.png")
    cv2.imwrite(out, np.concatenate(grids, axis=0), [cv2.IMWRITE_PNG_COMPRESSION, 9])
print(out, file=sys.stderr)
