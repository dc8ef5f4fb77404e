"""Defaults that the library and the ``film`` parser both read, defined once (no framework, no model import)."""

from __future__ import annotations

TASKS = ("IVF", "MIF", "MEF", "MFF")  # the four fusion tasks of FILM
MIF_B = ("CT", "PET", "SPECT")  # what the B image of a medical pair may be
DEFAULT_ENCODER = "Salesforce/blip2-itm-vit-g"  # film text: the BLIP-2 model whose Q-Former encodes paragraphs
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"  # film describe: drafts a paragraph per image
OPSET = 18  # film export: run by onnxruntime >= 1.14 and TensorRT >= 8.6 (README, "Export")
# film train --save-every's default: a mid-epoch checkpoint every 50 steps. Writing one (24 MB of weights and Adam
# state) took 0.09 s in torch and 0.25 s in Jittor (measured, 2 CPU cores) against ~10 s for a step on 2 CPU cores
# (under 0.1 %) and ~0.1-0.2 s on a GPU (at most ~5 %); a killed CPU run loses at most ~8 minutes, not an epoch.
SAVE_EVERY = 50
KEEP_STEP_CHECKPOINTS = 2  # the newest mid-epoch checkpoints kept (the previous one survives a damaged newest)
