"""Take docs/img/serve.png: film serve (demo weights, no text encoder) fusing a shipped pair in headless Chromium,
as tests/test_serve.py drives it. Run: .venv/bin/python docs/img/serve_screenshot.py"""

import os
import sys

from playwright.sync_api import sync_playwright

from film.common.images import samples_root
from film.serve import serve

app, url = serve("demo", "torch", "none", None, "127.0.0.1", 7869, "cpu", block=False)
pair = [os.path.join(samples_root(), "IVF", "TNO", side, "07.png") for side in ("ir", "vi")]
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.png")
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(url)
    page.set_input_files("#a-image input[type=file]", pair[0])
    page.set_input_files("#b-image input[type=file]", pair[1])
    page.wait_for_selector("#b-image img", timeout=30000)
    page.click("#fuse")
    page.wait_for_selector("#fused-image img", timeout=300000)
    page.wait_for_timeout(1000)
    page.screenshot(path=out, full_page=True)
    browser.close()
app.close()
print(out, file=sys.stderr)
