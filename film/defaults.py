"""Defaults that the library and the ``film`` parser both read, defined once (no framework, no model import)."""

from __future__ import annotations

TASKS = ("IVF", "MIF", "MEF", "MFF")  # the four fusion tasks of FILM
MIF_B = ("CT", "PET", "SPECT")  # what the B image of a medical pair may be
DEFAULT_ENCODER = "Salesforce/blip2-itm-vit-g"  # film text: the BLIP-2 model whose Q-Former encodes paragraphs
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"  # film describe: drafts a paragraph per image
OPSET = 18  # film export: run by onnxruntime >= 1.14 and TensorRT >= 8.6 (README, "Export")
