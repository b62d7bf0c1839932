"""The web page in a real browser: Debian's Chromium driven by Playwright (no browser download needed).

Skipped, with the reason, where no Chromium is installed (``apt-get install chromium``; ``make test`` tries)
or Playwright is missing.  ``KERNEL_SERVE_SCREENSHOT=docs/serve.png`` also saves the README's screenshot.
"""

import os
import shutil
import time

import httpx
import pytest

from kernel_serve.app import create_app
from kernel_serve.config import ServeConfig
from kernel_shapes_model.detect import detect
from serve_helpers import COLOUR_PROMPTS, pixels, serve_in_thread, wait_job

CHROMIUM = next((p for p in (os.environ.get("KERNEL_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium found (apt-get install chromium, "
                                                         "or set KERNEL_CHROMIUM); the page needs a real browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_generate_reuse_and_cancel_in_chromium(tmp_path):
    start = time.monotonic()
    app = create_app(ServeConfig(outputs=tmp_path / "outputs"))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client, \
            sync_api.sync_playwright() as pw:
        # two earlier pictures for the history gallery
        for colour, seed in (("red", 0), ("blue", 3)):
            client.post("/api/generate", json={"prompt": COLOUR_PROMPTS[colour], "steps": 5, "seed": seed})
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 820})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url + "/")
        page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")

        # generate: type a prompt, press the button, wait for the picture
        page.fill("#prompt", COLOUR_PROMPTS["yellow"])
        page.fill("#steps", "5")
        page.fill("#seed", "1")
        page.click("#generate")
        page.wait_for_selector('#status[data-status="done"]', timeout=60_000)
        page.wait_for_function("(() => { const i = document.querySelector('#result img');"
                               " return i && i.complete && i.naturalWidth === 64; })()")
        job_id = page.get_attribute("#result", "data-job")
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["params"]["prompt"] == COLOUR_PROMPTS["yellow"] and job["params"]["seed"] == 1
        assert detect(pixels(client.get(job["images"][0]).content)).colour == "yellow"
        assert "Seed: 1" in page.inner_text("#result-params")
        assert page.inner_text("#percent") == "100%"

        # reuse the parameters of a picture from the history
        wait_job(client.get, client.get("/api/jobs").json()["jobs"][1]["id"])
        page.click("#refresh")
        page.wait_for_selector(f'.card[data-job="{job_id}"] img')
        page.wait_for_function("document.querySelectorAll('#history .card img').length === 3")
        page.fill("#prompt", "something else")
        page.fill("#seed", "99")
        page.fill("#steps", "7")
        page.click(f'.card[data-job="{job_id}"] button.reuse')
        assert page.input_value("#prompt") == COLOUR_PROMPTS["yellow"]
        assert (page.input_value("#seed"), page.input_value("#steps")) == ("1", "5")
        assert page.input_value("#sampler") == job["params"]["sampler"]
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("KERNEL_SERVE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["KERNEL_SERVE_SCREENSHOT"])

        # cancel a long job while it runs
        page.fill("#steps", "150")
        page.click("#generate")
        page.wait_for_function("document.querySelector('#status').dataset.status === 'running'"
                               " && document.querySelector('#progress').value > 0", timeout=60_000)
        page.click("#cancel")
        page.wait_for_selector('#status[data-status="cancelled"]', timeout=30_000)
        cancelled = client.get("/api/jobs").json()["jobs"][0]
        assert cancelled["status"] == "cancelled" and cancelled["images"] == []
        assert not errors, errors
        browser.close()
    assert time.monotonic() - start < 120  # about 15 s on an idle two-core machine
