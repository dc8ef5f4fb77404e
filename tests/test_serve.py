"""`film serve` end to end: a server started here on a free port (random weights, the tiny BLIP-2 text encoder of
test_text.py), driven through its API with gradio_client and through the page in a real browser (Debian's
Chromium via Playwright). The reference is the command line: `film text` + `film fuse` of the same files."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import urllib.request

import cv2
import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
pytest.importorskip("transformers")
from gradio_client import Client, handle_file  # noqa: E402
from test_text import make_encoder  # noqa: E402

from film.cli import main  # noqa: E402
from film.common.images import samples_root  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PARAS = ("A warm person on the road in the dark.", "The visible image shows a car, a tree and the sky.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("enc") / "qformer")


@pytest.fixture(scope="module")
def server(encoder, tb):
    from film.serve import serve

    app, url = serve("random", backend="torch", encoder=encoder, port=_free_port(), device="cpu", block=False)
    yield url, app
    app.close()
    shutil.rmtree(app.film_workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A real infrared/visible crop pair (the visible one in colour), in film's folder layout."""
    root = tmp_path_factory.mktemp("pair")
    src = os.path.join(samples_root(), "IVF", "RoadScene")
    for sub in ("ir", "vi"):
        os.makedirs(root / sub)
        img = cv2.imread(os.path.join(src, sub, "FLIR_07809.jpg"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(root / sub / "p1.png"), img[100:148, 120:184])
    return root


def _cli_fused(tmp_path, pair, encoder, paras=PARAS) -> np.ndarray:
    """film text + film fuse of the pair: the grey PNG the command line writes."""
    for side, text in zip(("A", "B"), paras):
        os.makedirs(tmp_path / "txt" / side, exist_ok=True)
        (tmp_path / "txt" / side / "p1.txt").write_text(text)
    assert main(["text", "--a-text", str(tmp_path / "txt" / "A"), "--b-text", str(tmp_path / "txt" / "B"),
                 "-o", str(tmp_path / "feat"), "--encoder", str(encoder)]) == 0
    assert main(["fuse", "--checkpoint", "random", "--backend", "torch", "--device", "cpu", "--a", str(pair / "ir"),
                 "--b", str(pair / "vi"), "--text", str(tmp_path / "feat"), "-o", str(tmp_path / "out")]) == 0
    return cv2.imread(str(tmp_path / "out" / "Gray" / "p1.png"), cv2.IMREAD_UNCHANGED)


def _api(client, pair, paras=PARAS, a=None, b=None):
    a = a or str(pair / "ir" / "p1.png")
    b = b or str(pair / "vi" / "p1.png")
    return client.predict(handle_file(a), handle_file(b), paras[0], paras[1], api_name="/fuse")


def test_api_equals_film_text_and_fuse(client, pair, encoder, tmp_path):
    path, metrics = _api(client, pair)
    got = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    want = _cli_fused(tmp_path, pair, encoder)
    assert got.dtype == np.uint8 and got.shape == want.shape == (48, 64)
    np.testing.assert_array_equal(got, want)
    # the official Evaluator's SD is the standard deviation of the fused image (restated with numpy)
    assert set(metrics) == {"EN", "SD", "SF", "AG", "MI", "MSE", "CC", "PSNR", "SCD", "VIFF", "Qabf", "SSIM"}
    assert metrics["SD"] == pytest.approx(float(np.std(want.astype(np.float64))), rel=1e-6)


def test_paragraphs_steer_the_result(client, pair):
    """Other words, other features, another image (the encoder is really used, not synthetic text)."""
    a, _ = _api(client, pair)
    b, _ = _api(client, pair, ("Nothing but the sky and a tree.", "Only the road."))
    assert not np.array_equal(cv2.imread(a), cv2.imread(b))


def test_eight_concurrent_requests_all_correct(client, pair):
    """Queued requests (one forward at a time) each get their own answer: the same as asked alone."""
    variants = [(f"A person near the car {i}.", f"The sky and the tree {i}.") for i in range(4)]
    alone = [cv2.imread(_api(client, pair, v)[0], cv2.IMREAD_UNCHANGED) for v in variants]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def one(i):
        try:
            c = Client(client.src, verbose=False)
            results[i] = cv2.imread(_api(c, pair, variants[i % 4])[0], cv2.IMREAD_UNCHANGED)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert sorted(results) == list(range(8))
    for i, img in results.items():
        np.testing.assert_array_equal(img, alone[i % 4])


@pytest.mark.parametrize("bad, reason", [("16bit", "16-bit"), ("rgba", "alpha"), ("size", "but B is")])
def test_bad_uploads_get_the_reason_and_the_server_goes_on(client, pair, tmp_path, bad, reason):
    a = str(pair / "ir" / "p1.png")
    b = str(pair / "vi" / "p1.png")
    img = cv2.imread(a, cv2.IMREAD_GRAYSCALE)
    path = str(tmp_path / "bad.png")
    if bad == "16bit":
        cv2.imwrite(path, img.astype(np.uint16) * 257)
    elif bad == "rgba":
        cv2.imwrite(path, np.dstack([img, img, img, np.full_like(img, 128)]))
    else:
        cv2.imwrite(path, img[:40])
    with pytest.raises(Exception, match=reason):
        _api(client, pair, a=path, b=b)
    assert cv2.imread(_api(client, pair)[0]).shape[:2] == (48, 64)


def test_serve_refuses_a_busy_port_and_a_bad_backend(capsys, encoder):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["serve", "--checkpoint", "random", "--encoder", "none", "--port", str(port), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot serve on 127.0.0.1" in err and "Traceback" not in err
    assert main(["serve", "--backend", "tensorflow"]) == 2
    assert "--backend: unknown 'tensorflow'" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no browser: apt-get install chromium (CI installs it)")
def test_page_in_a_real_browser(server, pair, encoder, tmp_path):
    """Headless Chromium: upload A and B, type the paragraphs, press Fuse, read the displayed image back: it equals
    the command line's PNG. A 16-bit upload puts film's reason on the page, and the next request is answered."""
    sync_api = pytest.importorskip("playwright.sync_api")
    url = server[0]
    want = _cli_fused(tmp_path, pair, encoder)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url)

            def fuse(a, b):
                page.set_input_files("#a-image input[type=file]", a)
                page.set_input_files("#b-image input[type=file]", b)
                page.wait_for_selector("#a-image img", timeout=30000)
                page.wait_for_selector("#b-image img", timeout=30000)
                page.fill("#a-text textarea", PARAS[0])
                page.fill("#b-text textarea", PARAS[1])
                page.click("#fuse")

            fuse(str(pair / "ir" / "p1.png"), str(pair / "vi" / "p1.png"))
            page.wait_for_selector("#fused-image img", timeout=120000)
            src = page.get_attribute("#fused-image img", "src")
            data = urllib.request.urlopen(src if src.startswith("http") else url.rstrip("/") + src).read()
            shown = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(shown, want)
            assert "Fused" in page.inner_text("#message")
            if os.environ.get("FILM_SERVE_SCREENSHOT"):
                page.screenshot(path=os.environ["FILM_SERVE_SCREENSHOT"], full_page=True)

            bad = str(tmp_path / "deep.png")
            cv2.imwrite(bad, cv2.imread(str(pair / "ir" / "p1.png"), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 257)
            page.reload()
            fuse(bad, str(pair / "vi" / "p1.png"))
            page.wait_for_function("document.querySelector('#message').innerText.includes('Not fused')",
                                   timeout=60000)
            assert "16-bit" in page.inner_text("#message")
        finally:
            browser.close()
    assert cv2.imread(_api(Client(url, verbose=False), pair)[0]).shape[:2] == (48, 64)


def test_both_backends_show_live_parity(pair, tb, jb):
    """--backend both: every request runs torch and Jittor; the page's numbers are those of the two networks
    called directly through film.load_fuser."""
    from film.api import load_fuser
    from film.common.images import Pair, load_pair
    from film.common.init import random_text_for
    from film.serve import FuseService

    svc = FuseService("random", "both", "none", device="cpu")
    try:
        r = svc.fuse(str(pair / "ir" / "p1.png"), str(pair / "vi" / "p1.png"), "x", "y", "IVF")
        files = r.files()  # each download under its own name (Gray/p1.png and Color/p1.png used to be two p1.png)
        assert [os.path.basename(f) for f in files] == ["p1_gray.png", "p1_color.png", "p1.npy"]
        assert [open(f, "rb").read() for f in files[:2]] == [open(f, "rb").read() for f in (r.gray, r.color)]
    finally:
        svc.close()
    xa, xb = load_pair(Pair("p1", str(pair / "ir" / "p1.png"), str(pair / "vi" / "p1.png")))
    t = random_text_for("p1", 768)  # the page seeds synthetic text by the pair's name, as film fuse --random-text
    ft, fj = (load_fuser("random", backend=b, device="cpu").fuse(xa, xb, t) for b in ("torch", "jittor"))
    assert r.parity["max_abs"] == pytest.approx(float(np.abs(ft - fj).max()), rel=1e-6, abs=1e-9)
    assert r.parity["max_abs"] < 1e-4 and r.parity["pixels"] == 48 * 64
    assert any("synthetic text features" in n for n in r.notes)


def test_demo_weights_follow_the_task_chosen_on_the_page(pair, tb):
    """film serve with the demo weights: a pair fused under a task gets that task's demo weights (the same image
    as film.load_fuser("demo-TASK") gives), and no task the all-task demo weights."""
    from film.api import load_fuser
    from film.common.images import Pair, load_pair, read_gray, to_uint8
    from film.common.init import random_text_for
    from film.serve import FuseService

    svc = FuseService("demo", "torch", "none", device="cpu")
    xa, xb = load_pair(Pair("p1", str(pair / "ir" / "p1.png"), str(pair / "vi" / "p1.png")))
    t = random_text_for("p1", 768)
    try:
        for task, ck in (("MFF", "demo-MFF"), ("IVF", "demo-IVF"), (None, "demo")):
            r = svc.fuse(str(pair / "ir" / "p1.png"), str(pair / "vi" / "p1.png"), "x", "y", task)
            want = to_uint8(load_fuser(ck, backend="torch", device="cpu").fuse(xa, xb, t))
            assert np.array_equal(read_gray(r.gray), want.astype(np.float32)), task
    finally:
        svc.close()
