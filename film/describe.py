"""``film describe``: a first draft of one paragraph per source image, to read and edit before ``film text``.

FILM's own paragraphs came from a pipeline of BLIP-2 captions, GRiT dense captions, SAM regions and
ChatGPT (paper Sec. 3.1); none of it is packaged. This is a practical stand-in: an image-captioning model
through transformers (default ``Salesforce/blip-image-captioning-base``) captions each source image, and a
template per task and modality wraps the caption in a paragraph in the style of FILM's (what the image is,
what this modality shows well and badly, what the fusion should keep). The drafts are a starting point:
the paragraphs matter to the fused result, so read and edit them.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from film.common.atomic import atomic_write_bytes, check_can_make_dirs, make_dirs
from film.common.images import match_pairs, read_bgr
from film.defaults import DEFAULT_CAPTIONER, MIF_B, TASKS
from film.errors import FilmError
from film.text import from_pretrained, load_config, need_transformers, quiet_transformers, torch_device

# {caption} is the captioner's sentence. One template per task and side; MIF's B side by modality.
TEMPLATES = {
    ("IVF", "A"): (
        "This is an infrared image of {caption}. It records thermal radiation, so warm objects such as people, "
        "animals and running vehicles stand out as bright regions even in darkness, smoke or fog, while the "
        "textures and fine details of the background are weak and blurred. The fused image should keep these "
        "bright thermal targets and their outlines."
    ),
    ("IVF", "B"): (
        "This is a visible image of {caption}. It records reflected light, with rich textures, sharp edges and "
        "the details of roads, buildings, trees and the sky, but targets in shadow, at night or behind smoke "
        "can be hard to see. The fused image should keep these textures and details."
    ),
    ("MIF", "A"): (
        "This is an MRI image of {caption}. It shows soft tissue with high contrast and clear anatomical "
        "structure, such as the boundaries between grey matter, white matter and fluid, but little of the "
        "dense tissue or of the metabolic function. The fused image should keep these soft-tissue structures."
    ),
    ("MIF", "CT"): (
        "This is a CT image of {caption}. Bone and other dense structures appear bright with sharp "
        "boundaries, while soft tissue shows little contrast. The fused image should keep the dense structures "
        "and their edges."
    ),
    ("MIF", "PET"): (
        "This is a PET image of {caption}. Its colours show metabolic activity: bright regions mark high "
        "activity such as active tissue or lesions, at low spatial resolution and with little anatomical "
        "detail. The fused image should keep these functional regions and their intensity."
    ),
    ("MIF", "SPECT"): (
        "This is a SPECT image of {caption}. Its colours show blood flow and functional activity in coarse "
        "regions, with little anatomical detail. The fused image should keep these functional regions and "
        "their intensity."
    ),
    ("MEF", "A"): (
        "This is an over-exposed image of {caption}. Dark regions and shadows are clearly visible with their "
        "details, while bright regions such as the sky, lamps and windows are saturated and washed out. The "
        "fused image should keep the details of the dark regions."
    ),
    ("MEF", "B"): (
        "This is an under-exposed image of {caption}. Bright regions such as the sky, lamps and windows keep "
        "their colours and details, while dark regions and shadows are nearly black. The fused image should "
        "keep the details of the bright regions."
    ),
    ("MFF", "A"): (
        "This is a near-focus image of {caption}. Objects close to the camera are sharp, with clear edges and "
        "textures, while the far background is blurred. The fused image should keep the sharp foreground."
    ),
    ("MFF", "B"): (
        "This is a far-focus image of {caption}. The distant background is sharp, with clear edges and "
        "textures, while objects close to the camera are blurred. The fused image should keep the sharp "
        "background."
    ),
}


def paragraph(task: str, side: str, caption: str, modality: str | None = None) -> str:
    """The draft paragraph for one image: the template of (task, side) around the caption."""
    key = (task, (modality or "CT") if task == "MIF" and side == "B" else side)
    if key not in TEMPLATES:
        raise FilmError(f"no template for task {task!r}, side {side!r}")
    caption = " ".join(str(caption).split()).strip(" .") or "a scene"
    return TEMPLATES[key].format(caption=caption)


CAPTIONER_HINT = (
    "on a machine with internet: film describe --save-captioner DIR (the captioning model and its processor, "
    "~1 GB), copy DIR here and pass --captioner DIR"
)


class Captioner:
    """An image-captioning model (BLIP) through transformers: image -> one sentence."""

    def __init__(self, name: str = DEFAULT_CAPTIONER, device: str = "cpu", max_new_tokens: int = 30):
        transformers = need_transformers()
        device = torch_device(device)
        with quiet_transformers():
            load_config(name, "BLIP captioning model", "blip", DEFAULT_CAPTIONER, CAPTIONER_HINT)
            self.processor = from_pretrained(transformers.AutoProcessor, name, "captioner processor", CAPTIONER_HINT)
            self.model = from_pretrained(transformers.BlipForConditionalGeneration, name, "captioner",
                                          CAPTIONER_HINT)
        self.model.to(device).eval()
        self.device, self.max_new_tokens = device, max_new_tokens

    def save(self, folder: str) -> None:
        """The captioning model and its processor in a folder, for an offline machine (--captioner DIR)."""
        from film.text import save_pretrained

        save_pretrained(folder, [self.model, self.processor], "the captioner")

    def caption(self, rgb: np.ndarray) -> str:
        import torch

        inputs = self.processor(images=rgb, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return self.processor.decode(ids[0], skip_special_tokens=True).strip()


def describe_folders(a_dir: str, b_dir: str, *, task: str, out_dir: str, captioner: str = DEFAULT_CAPTIONER,
                     device: str = "cpu", b_modality: str | None = None, overwrite: bool = False,
                     progress: bool = True) -> tuple[int, float]:
    """Write OUT/A/<name>.txt and OUT/B/<name>.txt, a draft paragraph per source image of every pair."""
    if task not in TASKS:
        raise FilmError(f"unknown task {task!r}: one of {', '.join(TASKS)}")
    if b_modality is not None and (task != "MIF" or b_modality not in MIF_B):
        raise FilmError(f"--b-modality is for --task MIF, one of {', '.join(MIF_B)}")
    pairs = match_pairs(a_dir, b_dir)
    if not overwrite:
        existing = [os.path.join(out_dir, s, p.name + ".txt") for p in pairs for s in ("A", "B")]
        existing = [p for p in existing if os.path.exists(p)]
        if existing:
            raise FilmError(f"{existing[0]}: exists (edited paragraphs are not overwritten; --overwrite to redo)")
    images = [(p.name, side, read_bgr(path)) for p in pairs for side, path in (("A", p.a), ("B", p.b))]
    for side in ("A", "B"):
        check_can_make_dirs(os.path.join(out_dir, side))
    model = Captioner(captioner, device)  # may fail (offline, no model): no folder is made before it loads
    for side in ("A", "B"):
        make_dirs(os.path.join(out_dir, side))
    from tqdm import tqdm

    t0 = time.time()
    for name, side, bgr in tqdm(images, desc="describe", unit="img", file=sys.stderr, disable=None if progress else True):
        text = paragraph(task, side, model.caption(np.ascontiguousarray(bgr[..., ::-1])), b_modality)
        atomic_write_bytes(os.path.join(out_dir, side, name + ".txt"), (text + "\n").encode("utf-8"))
    return len(pairs), time.time() - t0
