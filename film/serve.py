"""``film serve``: a local web page (Gradio) to fuse your own pair with your own words.

The page and its API run the same code as the command line: uploads are read by film's own image reader (Gradio
hands over the uploaded file unchanged, ``type="filepath"``), text features come from ``film text``'s encoder,
and the outputs are written by ``film fuse``'s writer. So a pair fused on the page equals ``film text`` +
``film fuse`` of the same files and paragraphs, byte for byte.

Safety: it binds 127.0.0.1 unless told otherwise; it serves only files it wrote into its own temporary folders
(its request folders, and Gradio's cache: both removed on exit); requests are queued (one forward at a time,
a bounded queue) and every forward is preceded by ``film fuse``'s memory check.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from film.common.checkpoint import DEMO
from film.defaults import TASKS
from film.errors import FilmError
from film.fuse import FUSED_TITLE, WEIGHTS_NOTICE, weights_kind

# the modality names of each task's A and B images, and the folder names film's grid titles know them by
TASK_SIDES = {
    "IVF": (("infrared", "ir"), ("visible", "vi")),
    "MIF": (("MRI", "MRI"), ("CT / PET / SPECT", "CT")),
    "MEF": (("over-exposed", "over"), ("under-exposed", "under")),
    "MFF": (("near focus", "near"), ("far focus", "far")),
}
QUEUE_SIZE = 64  # requests waiting at most; more are refused by Gradio with "queue full"
KEEP_REQUESTS = 32  # finished requests' output folders kept (the page links to them); older ones are deleted
SYNTHETIC_NOTE = ("No text encoder is loaded, so this result used **synthetic text features** (seeded random "
                  "numbers, as `film fuse --random-text`): your paragraphs did not steer it. Start `film serve` with "
                  "`--encoder DIR` (a BLIP-2 Q-Former saved by `film text --save-encoder DIR`) to use them.")


def template_paragraph(task: str, side: str) -> str:
    """The task's template for one side, before a captioner has described the image."""
    from film.describe import paragraph

    return paragraph(task, side, "the scene")


def sample_pairs() -> dict[str, tuple[str, str, str]]:
    """'TASK/DATASET/name' -> (task, A path, B path) of every pair shipped in film/samples."""
    from film.common.images import find_ab_folders, find_datasets, match_pairs, samples_root

    root = samples_root()
    out = {}
    for ds in find_datasets(root):
        rel = os.path.relpath(ds, root)
        da, db = find_ab_folders(ds)
        for p in match_pairs(da, db):
            out[f"{rel}/{p.name}"] = (rel.split(os.sep)[0], p.a, p.b)
    return out


@dataclass
class Result:
    folder: str
    name: str
    gray: str
    grid: str
    features: str
    color: str | None
    metrics: dict
    seconds: float
    notes: list[str] = field(default_factory=list)
    parity: dict | None = None

    def files(self) -> list[str]:
        """The downloads, each under its own name (Gray/ and Color/ hold the same file name): <name>_gray.png,
        <name>_color.png (hard links to the written PNGs) and <name>.npy."""
        folder = os.path.join(self.folder, "out", "download")
        os.makedirs(folder, exist_ok=True)
        out = []
        for kind, path in (("gray", self.gray), ("color", self.color)):
            if path:
                dst = os.path.join(folder, f"{self.name}_{kind}.png")
                if not os.path.exists(dst):
                    os.link(path, dst)
                out.append(dst)
        return [*out, self.features]


class FuseService:
    """What the page does, without the page: load the network(s) and the text encoder once, fuse one uploaded
    pair at a time per backend, write its outputs into a request folder of its own."""

    def __init__(self, checkpoint: str | None, backend: str = "torch", encoder: str | None = None,
                 captioner: str | None = None, device: str = "auto", workdir: str | None = None):
        from film.api import load_fuser
        from film.backends.registry import check_name

        names = ("torch", "jittor") if backend == "both" else (check_name(backend),)
        self.fusers = {b: load_fuser(checkpoint, backend=b, device=device) for b in names}
        # with the demo weights, a pair of a task is fused with that task's demo weights (loaded on first use)
        self.task_fusers = {} if checkpoint == DEMO else None
        self.device = device
        first = next(iter(self.fusers.values()))
        self.cfg = first.cfg
        kind = weights_kind(first)  # the same title and notice as film fuse
        self.weights_note = WEIGHTS_NOTICE.get(kind, "")
        self.fused_title = FUSED_TITLE[kind]
        self.locks = {b: threading.Lock() for b in self.fusers}
        self.text_lock = threading.Lock()
        self.encoder = None
        if encoder != "none":
            from film.defaults import DEFAULT_ENCODER
            from film.text import load_encoder

            try:
                self.encoder = load_encoder(encoder or DEFAULT_ENCODER, "cpu")
            except FilmError:
                if encoder:  # asked for by name: a wrong folder is the user's error, said at start
                    raise
                # the default model is not here: synthetic features, said above every result (SYNTHETIC_NOTE)
        self.captioner_name = captioner
        self._captioner = None
        self.workdir = workdir or tempfile.mkdtemp(prefix="film-serve-")
        self._requests: list[str] = []
        self._count = 0

    # ----------------------------------------------------------------------------------------- text

    def features(self, para_a: str, para_b: str, name: str = "") -> tuple[np.ndarray, str | None]:
        """(1, L, 768) text features of the two paragraphs, and a note when they are synthetic (then seeded by the
        pair's ``name``, as film fuse --random-text seeds them: the same image as the command line's)."""
        from film.common.init import random_text_for

        if self.encoder is None:
            return random_text_for(name, self.cfg.text_dim)[None], SYNTHETIC_NOTE
        from film.text import encode_text

        with self.text_lock:
            return encode_text(para_a or "", para_b or "", encoder=self.encoder), None

    def draft(self, task: str, a_path: str | None, b_path: str | None) -> tuple[str, str]:
        """Draft paragraphs for both images with the captioner (film describe's templates)."""
        from film.describe import CAPTIONER_HINT, Captioner, paragraph

        if not self.captioner_name:
            raise FilmError("no captioning model: start film serve with --captioner DIR (" + CAPTIONER_HINT + ")")
        if not a_path or not b_path:
            raise FilmError("upload both images first")
        from film.common.images import read_bgr

        with self.text_lock:
            if self._captioner is None:
                self._captioner = Captioner(self.captioner_name)
            caps = [self._captioner.caption(read_bgr(p)[..., ::-1].copy()) for p in (a_path, b_path)]
        return paragraph(task, "A", caps[0]), paragraph(task, "B", caps[1])

    # ----------------------------------------------------------------------------------------- fuse

    def fuser(self, backend: str, task: str | None):
        """The backend's fuser for a pair of ``task``: that task's demo weights when the service runs "demo"."""
        if self.task_fusers is None or task not in TASKS:
            return self.fusers[backend]
        if (backend, task) not in self.task_fusers:
            from film.api import load_fuser

            self.task_fusers[backend, task] = load_fuser(DEMO, backend=backend, device=self.device, task=task)
        return self.task_fusers[backend, task]

    def _request_folder(self) -> str:
        self._count += 1
        folder = tempfile.mkdtemp(prefix=f"req{self._count:05d}-", dir=self.workdir)
        self._requests.append(folder)
        while len(self._requests) > KEEP_REQUESTS:
            shutil.rmtree(self._requests.pop(0), ignore_errors=True)
        return folder

    def fuse(self, a_path: str | None, b_path: str | None, para_a: str, para_b: str, task: str | None = None
             ) -> Result:
        """Fuse one uploaded pair. Every problem is a FilmError with film's own one-line reason."""
        from film.common.images import Pair, load_pair, read_gray, to_uint8
        from film.common.metrics import evaluate
        from film.common.pairs import Item
        from film.fuse import prepare_output, save_outputs
        from film.text import save_npy

        if not a_path or not b_path:
            raise FilmError("upload both images (A and B) first")
        for p in (a_path, b_path):
            if not os.path.isfile(p):
                raise FilmError(f"{os.path.basename(p)}: the upload is gone; upload it again")
        t0 = time.perf_counter()
        folder = self._request_folder()
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(a_path))[0])[:64] or "pair"
        # the uploads are copied unchanged under the folder names film's grid titles know (ir -> infrared, ...)
        sides = TASK_SIDES.get(task or "", (("A", "A"), ("B", "B")))
        copies = []
        for (_, sub), src in zip(sides, (a_path, b_path)):
            os.makedirs(os.path.join(folder, "in", sub), exist_ok=True)
            dst = os.path.join(folder, "in", sub, name + os.path.splitext(src)[1].lower())
            shutil.copyfile(src, dst)
            copies.append(dst)
        pair = Pair(name, copies[0], copies[1])
        try:  # film's reader: colour -> grey as the official code, 16-bit/RGBA refused
            xa, xb = load_pair(pair)
        except FilmError as e:  # its reason, naming the upload (A/x.png) rather than this server's folders
            raise FilmError(str(e).replace(os.path.join(folder, "in") + os.sep, "")) from None
        text, note = self.features(para_a, para_b, name)
        outs = {}
        for b in self.fusers:
            with self.locks[b]:  # one forward at a time per backend (the memory check runs inside fuse)
                outs[b] = self.fuser(b, task).fuse(xa, xb, text[0])
        first = next(iter(outs.values()))
        out = os.path.join(folder, "out")
        item = Item(name, xa, xb, text[0], pair)
        prepare_output(out, [item], color=True, grid=True)
        save_outputs(out, item, first, color=True, grid=True, title=self.fused_title)
        features = os.path.join(folder, "out", name + ".npy")
        save_npy(features, text)
        gray = os.path.join(folder, "out", "Gray", name + ".png")
        color = os.path.join(folder, "out", "Color", name + ".png")
        metrics = {}
        if min(xa.shape) >= 7:  # as film eval reads them: the fused PNG's grey values, the sources' official grey
            metrics = {k: float(v) for k, v in evaluate(to_uint8(first).astype(np.float32), read_gray(copies[0]),
                                                        read_gray(copies[1])).items()}
        parity = None
        if len(outs) == 2:
            (na, fa), (nb, fb) = outs.items()
            diff = to_uint8(fa) != to_uint8(fb)
            parity = {"backends": f"{na} vs {nb}", "max_abs": float(np.abs(fa - fb).max()),
                      "uint8_pixels_differing": int(diff.sum()), "pixels": int(diff.size)}
        notes = [n for n in (note, self.weights_note and f"Weights: {self.weights_note}.") if n]
        return Result(folder, name, gray, os.path.join(folder, "out", "grid", name + ".png"), features,
                      color if os.path.exists(color) else None, metrics, time.perf_counter() - t0, notes, parity)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def result_markdown(r: Result) -> str:
    lines = list(r.notes)
    lines.append(f"Fused `{r.name}` in {r.seconds:.2f} s.")
    if r.parity:
        p = r.parity
        lines.append(f"Live parity ({p['backends']}): max abs difference {p['max_abs']:.2e}; "
                     f"{p['uint8_pixels_differing']} of {p['pixels']} uint8 pixels differ.")
    return "\n\n".join(lines)


def build_app(service: FuseService):
    """The Gradio Blocks of the page. Element ids: a-image, b-image, a-text, b-text, fuse, fused-image (and
    task, sample, draft, message, fused-color, grid-image, metrics, downloads)."""
    import gradio as gr

    samples = sample_pairs()

    def on_task(task):
        return template_paragraph(task, "A"), template_paragraph(task, "B"), *_labels(task)

    def _labels(task):
        (la, _), (lb, _) = TASK_SIDES[task]
        return gr.update(label=f"A: {la}"), gr.update(label=f"B: {lb}")

    def on_sample(key):
        if not key:
            return gr.update(), gr.update(), gr.update()
        task, a, b = samples[key]
        return a, b, task

    def on_draft(task, a, b):
        try:
            pa, pb = service.draft(task, a, b)
            return pa, pb, ""
        except FilmError as e:
            return gr.update(), gr.update(), f"**Could not draft:** {e}"

    def on_fuse(a, b, pa, pb, task):
        try:
            r = service.fuse(a, b, pa, pb, task)
        except FilmError as e:
            return (f"**Not fused:** {e}", None, None, None, None, None)
        return (result_markdown(r), r.gray, r.color, r.grid, r.metrics, r.files())

    def api_fuse(a, b, pa, pb):
        try:
            r = service.fuse(a, b, pa, pb)
        except FilmError as e:
            raise gr.Error(str(e)) from None
        return r.gray, r.metrics

    (la, _), (lb, _) = TASK_SIDES["IVF"]
    with gr.Blocks(title="FILM image fusion", delete_cache=(600, 3600)) as app:
        gr.Markdown("# FILM: text-guided image fusion\nUpload two images of one scene (or pick a shipped pair), say "
                    "in words what each shows and what the fused image should keep, and press **Fuse**.")
        with gr.Row():
            task = gr.Radio(list(TASK_SIDES), value="IVF", label="task", elem_id="task")
            sample = gr.Dropdown([""] + sorted(samples), value="", label="or a shipped sample pair", elem_id="sample")
        with gr.Row():
            a_img = gr.Image(type="filepath", image_mode=None, label=f"A: {la}", elem_id="a-image", format="png")
            b_img = gr.Image(type="filepath", image_mode=None, label=f"B: {lb}", elem_id="b-image", format="png")
        with gr.Row():
            a_txt = gr.Textbox(template_paragraph("IVF", "A"), lines=4, label="paragraph about A", elem_id="a-text")
            b_txt = gr.Textbox(template_paragraph("IVF", "B"), lines=4, label="paragraph about B", elem_id="b-text")
        with gr.Row():
            draft = gr.Button("Draft paragraphs (captioner)", elem_id="draft")
            fuse = gr.Button("Fuse", variant="primary", elem_id="fuse")
        message = gr.Markdown(elem_id="message")
        with gr.Row():
            fused = gr.Image(type="filepath", format="png", label="fused (grey)", elem_id="fused-image",
                             interactive=False)
            color = gr.Image(type="filepath", format="png", label="fused (colour)", elem_id="fused-color",
                             interactive=False)
        grid = gr.Image(type="filepath", format="png", label="A | B | fused", elem_id="grid-image", interactive=False)
        with gr.Row():
            metrics = gr.JSON(label="the twelve metrics of this pair", elem_id="metrics")
            files = gr.File(label="downloads: fused PNG(s) and the text features .npy", file_count="multiple",
                            elem_id="downloads")
        # the API endpoint /fuse: (A file, B file, paragraph A, paragraph B) -> (fused PNG, metrics)
        api_button = gr.Button(visible=False)
        api_image = gr.Image(type="filepath", format="png", visible=False)
        api_metrics = gr.JSON(visible=False)

        task.change(on_task, task, [a_txt, b_txt, a_img, b_img], api_visibility="private")
        sample.change(on_sample, sample, [a_img, b_img, task], api_visibility="private")
        draft.click(on_draft, [task, a_img, b_img], [a_txt, b_txt, message], api_visibility="private",
                    concurrency_id="text", concurrency_limit=1)
        fuse.click(on_fuse, [a_img, b_img, a_txt, b_txt, task], [message, fused, color, grid, metrics, files],
                   api_visibility="private", concurrency_id="fuse", concurrency_limit=1)
        api_button.click(api_fuse, [a_img, b_img, a_txt, b_txt], [api_image, api_metrics], api_name="fuse",
                         concurrency_id="fuse", concurrency_limit=1)
    app.queue(max_size=QUEUE_SIZE)
    return app


def _gradio_cache() -> str:
    """Gradio's cache (uploads, the files it hands to the browser) in a temporary folder of this process, removed
    at exit; one per process, since Gradio reads GRADIO_TEMP_DIR whenever it checks an upload (a user's own
    setting wins)."""
    if not os.environ.get("GRADIO_TEMP_DIR"):
        import atexit

        folder = tempfile.mkdtemp(prefix="film-serve-gradio-")
        atexit.register(shutil.rmtree, folder, True)
        os.environ["GRADIO_TEMP_DIR"] = folder
    return os.environ["GRADIO_TEMP_DIR"]


SERVE_BACKENDS = ("torch", "jittor", "both")


def serve(checkpoint: str | None = "demo", *, backend: str = "torch", encoder: str | None = None,
          captioner: str | None = None, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          block: bool = True):
    """Start the page; returns (app, url) when ``block`` is False (tests), else serves until interrupted.
    ``backend``: torch, jittor, or both (live parity on the page)."""
    if backend not in SERVE_BACKENDS:
        raise FilmError(f"--backend: unknown {backend!r} (torch, jittor or both)")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise FilmError("film serve needs gradio: pip install 'film-fusion[serve]'") from None
    _gradio_cache()
    workdir = tempfile.mkdtemp(prefix="film-serve-")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        service = FuseService(checkpoint, backend, encoder, captioner, device, os.path.join(workdir, "requests"))
        os.makedirs(service.workdir, exist_ok=True)
        app = build_app(service)
        try:
            _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                                   footer_links=["api"])
        except OSError as e:
            raise FilmError(f"cannot serve on {host}:{port}: {e}") from None
    except BaseException:  # a bad checkpoint or encoder (FilmError), an interrupt: no folder left behind
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    app.film_workdir = workdir
    if not block:
        return app, url
    import sys

    print(f"film serve: {url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        app.close()
        shutil.rmtree(workdir, ignore_errors=True)
