"""Text features for your own image pairs: the BLIP-2 Q-Former text encoder, as FILM's VLF features were made.

FILM is guided by text features of shape (L, 768): per source image, a paragraph describing it is encoded by
the *frozen BLIP-2 text encoder* (paper Fig. 2; official README: "implicit features corresponding to the text
(via BLIP2)"), and the two sequences are concatenated along the tokens, A then B. Width 768 is the Q-Former's
BERT width: LAVIS ``Blip2Qformer.extract_features(mode="text")`` returns ``Qformer.bert(...).last_hidden_state``
(not the 256-d projection). In transformers (>= 4.45) the same encoder is ``Blip2TextModelWithProjection``
with the checkpoint ``Salesforce/blip2-itm-vit-g`` (converted from the LAVIS "pretrain" Q-Former); we use its
``last_hidden_state`` in float32, the tokenizer without ``token_type_ids``, no truncation below the 512
positions the encoder has. Verified vs inferred: README "Fuse your own images".

Needs torch and transformers (``pip install 'film-fusion[text]'``); ``import film`` does not import them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np

from film.common.atomic import TEMP_PREFIX, atomic_path, check_can_make_dirs, make_dirs
from film.defaults import DEFAULT_ENCODER
from film.errors import FilmError

TEXT_DIM = 768
MAX_POSITIONS = 512  # the Q-Former's position embeddings: a longer paragraph cannot be encoded whole

_DOWNLOAD_HINT = (
    "on a machine with internet: film text --save-encoder DIR (keeps only the Q-Former text part, ~0.7 GB), "
    "copy DIR here and pass --encoder DIR"
)


def need_transformers():
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError:
        raise FilmError(
            "film text needs torch and transformers: pip install 'film-fusion[text]' (transformers >= 4.45)"
        ) from None
    if not hasattr(transformers, "Blip2TextModelWithProjection"):
        raise FilmError(
            f"transformers {transformers.__version__} has no Blip2TextModelWithProjection: pip install 'transformers>=4.45'"
        )
    return transformers


@contextlib.contextmanager
def quiet_transformers():
    """transformers logs every unused vision weight of the full BLIP-2 checkpoint: not the user's concern."""
    from transformers.utils import logging as tlog

    level = tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()  # "Loading weights" bars: film prints its own progress
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def _hub_reachable(timeout: float = 5.0) -> bool:
    """A quick TCP check of the Hugging Face endpoint, so that an offline machine gets an answer in seconds
    instead of huggingface_hub's retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def from_pretrained(cls, name: str, what: str, hint: str = _DOWNLOAD_HINT, **kw):
    """``cls.from_pretrained(name)`` from a folder, the Hugging Face cache, or (when reachable) the hub;
    every failure becomes one FilmError that says what to do (``hint``: how to get the model offline)."""
    local = os.path.isdir(name)
    if not local and (os.path.sep in name and not name.count("/") == 1 or name.startswith((".", "~"))):
        raise FilmError(f"{name}: no such folder (the {what} must be a folder or a Hugging Face model name)")
    try:
        if local:
            return cls.from_pretrained(name, **kw)
        try:
            return cls.from_pretrained(name, local_files_only=True, **kw)
        except OSError:
            if not _hub_reachable():
                raise FilmError(
                    f"{what} {name!r} is not in the Hugging Face cache and the hub cannot be reached: " + hint
                ) from None
            return cls.from_pretrained(name, **kw)
    except FilmError:
        raise
    except Exception as e:  # OSError (no config.json), ValueError (other model type), KeyError, ...
        first = str(e).strip().splitlines()[0][:240] if str(e).strip() else type(e).__name__
        raise FilmError(f"{name}: not a usable transformers {what} ({first})") from None


def torch_device(device: str) -> str:
    """'auto' -> cuda when torch sees a GPU, else cpu; a cuda request without a GPU is one FilmError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FilmError(f"device {device!r} requested but torch sees no CUDA GPU")
    return device


def load_config(name: str, what: str, model_type: str, example: str, hint: str = _DOWNLOAD_HINT):
    """The transformers config of ``name``, refused unless its model_type is ``model_type``."""
    transformers = need_transformers()
    config = from_pretrained(transformers.AutoConfig, name, what, hint)
    if getattr(config, "model_type", None) != model_type:
        raise FilmError(
            f"{name}: a {getattr(config, 'model_type', '?')!r} model, not a {what} of type {model_type!r} "
            f"(e.g. {example})"
        )
    return config


@dataclass
class TextEncoder:
    """The BLIP-2 Q-Former text encoder: paragraph -> float32 (L, 768), L = its tokens incl. [CLS] and [SEP]."""

    model: object
    tokenizer: object
    device: str
    name: str

    def tokenize(self, paragraphs: list[str], max_tokens: int | None = None):
        """Padded batch; truncated to ``max_tokens`` if given, else only at the encoder's position limit (512
        for BLIP-2), with a warning: LAVIS would fail there."""
        positions = getattr(getattr(self.model.config, "qformer_config", None), "max_position_embeddings", MAX_POSITIONS)
        limit = max_tokens or min(MAX_POSITIONS, positions)
        if not max_tokens:
            for p, ids in zip(paragraphs, self.tokenizer(paragraphs)["input_ids"]):
                if len(ids) > limit:
                    print(f"film text: warning: a paragraph of {len(ids)} tokens is cut to {limit}: {p[:60]}...",
                          file=sys.stderr)
        return self.tokenizer(
            paragraphs,
            return_tensors="pt",
            return_token_type_ids=False,  # the Q-Former embeddings take input ids only
            truncation=True,
            max_length=limit,
            padding="max_length" if max_tokens else "longest",
        )

    def encode(self, paragraphs: list[str], max_tokens: int | None = None, batch_size: int = 8) -> list[np.ndarray]:
        """Each paragraph encoded on its own (batched with padding, pads cut off again unless ``max_tokens``)."""
        import torch

        out: list[np.ndarray | None] = [None] * len(paragraphs)
        order = sorted(range(len(paragraphs)), key=lambda i: len(paragraphs[i]))  # similar lengths per batch
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start : start + max(1, batch_size)]
            tok = self.tokenize([paragraphs[i] for i in idx], max_tokens)
            with torch.inference_mode():
                hidden = self.model(
                    input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
                ).last_hidden_state.float().cpu().numpy()
            lengths = tok["attention_mask"].sum(1).tolist()
            for row, i in enumerate(idx):
                n = hidden.shape[1] if max_tokens else int(lengths[row])
                out[i] = np.ascontiguousarray(hidden[row, :n], dtype=np.float32)
        return out  # type: ignore[return-value]

    def save(self, folder: str) -> None:
        """Keep only the text encoder and its tokenizer (safetensors), for an offline machine."""
        save_pretrained(folder, [self.model, self.tokenizer], "the encoder")


def save_pretrained(folder: str, parts: list, what: str) -> None:
    """``save_pretrained`` of every part (model: safetensors; tokenizer/processor) into a new folder, written
    next to it and renamed: a failure leaves no half-written folder."""
    parent = os.path.dirname(os.path.abspath(folder))
    make_dirs(parent)
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise FilmError(f"{folder}: exists and is not empty (give a new or empty folder)")
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent)
    try:
        with quiet_transformers():
            for part in parts:
                kw = {"safe_serialization": True} if hasattr(part, "config") else {}
                part.save_pretrained(tmp, **kw)
        if os.path.isdir(folder):
            os.rmdir(folder)
        os.replace(tmp, folder)
    except OSError as e:
        raise FilmError(f"{folder}: could not write {what} ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_encoder(encoder: str = DEFAULT_ENCODER, device: str = "cpu") -> TextEncoder:
    """Load only the Q-Former text part (``Blip2TextModelWithProjection``) and its tokenizer, float32, eval."""
    transformers = need_transformers()
    import torch

    device = torch_device(device)
    with quiet_transformers():
        q = load_config(encoder, "BLIP-2 Q-Former text encoder", "blip-2", DEFAULT_ENCODER).qformer_config
        if q.hidden_size != TEXT_DIM:
            raise FilmError(f"{encoder}: text encoder width {q.hidden_size}, FILM needs {TEXT_DIM} (the Q-Former's BERT width)")
        if not getattr(q, "use_qformer_text_input", False):
            raise FilmError(
                f"{encoder}: its Q-Former config has use_qformer_text_input=False, so it has no text layers "
                f"(use the image-text-matching checkpoint {DEFAULT_ENCODER})"
            )
        model, info = from_pretrained(
            transformers.Blip2TextModelWithProjection, encoder, "text encoder", dtype=torch.float32,
            output_loading_info=True,
        )
        missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
        if missing:  # transformers would silently leave them random
            raise FilmError(f"{encoder}: the checkpoint lacks {len(missing)} text-encoder weights, e.g. {missing[:3]}")
        tokenizer = from_pretrained(transformers.AutoTokenizer, encoder, "tokenizer")
    model.to(device).eval()
    return TextEncoder(model, tokenizer, device, encoder)


def _as_encoder(encoder, device: str) -> TextEncoder:
    return encoder if isinstance(encoder, TextEncoder) else load_encoder(encoder or DEFAULT_ENCODER, device)


def check_paragraph(text: str, where: str) -> str:
    if not isinstance(text, str):
        raise FilmError(f"{where}: expected a paragraph of text, got {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        raise FilmError(f"{where}: empty paragraph")
    return text


def encode_text(a_paragraph: str, b_paragraph: str, *, encoder=DEFAULT_ENCODER, device: str = "cpu",
                max_tokens: int | None = None) -> np.ndarray:
    """FILM text features of one pair: A's and B's paragraphs encoded separately, concatenated A then B.

    encoder: a model name or folder, or a :class:`TextEncoder` from :func:`load_encoder` (reuse it for many
    pairs). Returns float32 (1, L_A + L_B, 768): what ``film fuse --text``, ``film prepare --text`` and the
    H5 files take. ``max_tokens``: pad/truncate each side to that many tokens (for batching in training).
    """
    enc = _as_encoder(encoder, device)
    a, b = enc.encode([check_paragraph(a_paragraph, "A"), check_paragraph(b_paragraph, "B")], max_tokens)
    return np.concatenate([a, b], axis=0)[None]


def read_paragraphs(folder: str, side: str) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise FilmError(f"{folder}: no such folder ({side} paragraphs)")
    out = {}
    for fn in sorted(os.listdir(folder)):
        if not fn.endswith(".txt"):
            continue
        path = os.path.join(folder, fn)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise FilmError(f"{path}: not UTF-8 text") from None
        except OSError as e:
            raise FilmError(f"{path}: cannot read ({e.strerror or e})") from None
        out[fn[:-4]] = check_paragraph(text, path)
    if not out:
        raise FilmError(f"{folder}: no <name>.txt paragraphs ({side})")
    return out


def pair_paragraphs(a_dir: str, b_dir: str) -> list[tuple[str, str, str]]:
    """[(name, A paragraph, B paragraph)], every problem found before any encoding."""
    a, b = read_paragraphs(a_dir, "A"), read_paragraphs(b_dir, "B")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        parts = ([f"no B paragraph for {', '.join(only_a[:5])}"] if only_a else []) + (
            [f"no A paragraph for {', '.join(only_b[:5])}"] if only_b else []
        )
        raise FilmError(f"{a_dir} / {b_dir}: " + "; ".join(parts))
    return [(n, a[n], b[n]) for n in sorted(a)]


def save_npy(path: str, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def encode_folders(a_dir: str, b_dir: str, out_dir: str, *, encoder=DEFAULT_ENCODER, device: str = "cpu",
                   batch_size: int = 8, max_tokens: int | None = None, progress: bool = True) -> tuple[int, float]:
    """For every <name>.txt in both folders write OUT/<name>.npy, float32 (1, L_A + L_B, 768)."""
    if batch_size < 1:
        raise FilmError("--batch-size must be at least 1")
    if max_tokens is not None and not 2 <= max_tokens <= MAX_POSITIONS:
        raise FilmError(f"--max-tokens must be between 2 and {MAX_POSITIONS}")
    pairs = pair_paragraphs(a_dir, b_dir)  # bad input is found before the (slow) encoder load
    check_can_make_dirs(out_dir)
    enc = _as_encoder(encoder, device)  # may fail (offline, no model): no folder is made before it loads
    make_dirs(out_dir)
    from tqdm import tqdm

    t0 = time.time()
    bar = tqdm(total=len(pairs), desc="text", unit="pair", file=sys.stderr, disable=None if progress else True)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        feats = enc.encode([p for _, a, b in chunk for p in (a, b)], max_tokens, batch_size=2 * batch_size)
        for k, (name, _, _) in enumerate(chunk):
            save_npy(os.path.join(out_dir, name + ".npy"), np.concatenate(feats[2 * k : 2 * k + 2])[None])
        bar.update(len(chunk))
    bar.close()
    return len(pairs), time.time() - t0
