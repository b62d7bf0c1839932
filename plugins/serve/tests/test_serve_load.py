"""Load: 30 requests posted at once from six threads over HTTP (uvicorn in this process)."""

import threading
import time
from pathlib import Path

import httpx
import numpy as np

from kernel_serve.app import create_app
from kernel_serve.config import ServeConfig
from serve_helpers import COLOUR_PROMPTS, png_text, pixels, serve_in_thread

KINDS = [{"prompt": COLOUR_PROMPTS["red"], "steps": 1, "seed": 1},
         {"prompt": COLOUR_PROMPTS["yellow"], "steps": 1, "seed": 2, "sampler": "Euler a"},
         {"prompt": COLOUR_PROMPTS["blue"], "steps": 1, "seed": 3, "sampler": "DPM++ 2M"}]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _references():
    """What ``kernel generate`` draws for each kind (its own functions, on a pipeline of its own)."""
    import kernel
    from kernel_generate.command import _device_and_dtype, _load_pipeline, render, resolve_model

    name, source = resolve_model(None)
    device, dtype, _ = _device_and_dtype(None, None)
    pipe = _load_pipeline(name, source, dtype, device)
    pipe.set_progress_bar_config(disable=True)
    base, own = dict(pipe.scheduler.config), type(pipe.scheduler).__name__
    out = []
    for body in KINDS:
        pipe.scheduler = kernel.sampler(body.get("sampler", own), base)
        out.append(np.asarray(render(pipe, body["prompt"], "", steps=body["steps"], guidance=5.0, seed=body["seed"],
                                     width=64, height=64).convert("RGB")))
    return out


def test_thirty_concurrent_requests_finish_in_order_with_the_right_pictures(tmp_path):
    references = _references()
    requests = [i % 3 for i in range(30)]
    accepted: dict[int, httpx.Response] = {}
    app = create_app(ServeConfig(outputs=tmp_path / "outputs"))
    with serve_in_thread(app) as url:
        barrier = threading.Barrier(6)

        def post(indices):
            with httpx.Client(base_url=url, timeout=60) as client:
                barrier.wait()
                for i in indices:
                    accepted[i] = client.post("/api/generate", json=KINDS[requests[i]])

        threads = [threading.Thread(target=post, args=(range(t, 30, 6),)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(accepted) == list(range(30)) and all(r.status_code == 202 for r in accepted.values())
        kind_of = {accepted[i].json()["id"]: requests[i] for i in range(30)}
        rss = []
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                done = client.get("/api/jobs", params={"limit": 100, "status": "done"}).json()["total"]
                if done >= 10 and not rss:
                    rss.append(_rss_mb())  # warmed up: every sampler has run
                if done == 30:
                    break
                time.sleep(0.1)
            rss.append(_rss_mb())
            history = client.get("/api/jobs", params={"limit": 100}).json()
            assert history["total"] == 30
            submitted = history["jobs"][::-1]  # newest first: reversed, the order the server took them
            for before, after in zip(submitted[:-1], submitted[1:], strict=True):
                assert before["finished"] <= after["started"], "one worker runs the jobs one after another, in order"
            for job in submitted:
                kind = KINDS[kind_of[job["id"]]]
                assert job["status"] == "done" and job["params"]["prompt"] == kind["prompt"]
                data = client.get(job["images"][0]).content
                assert png_text(data)[2]["Seed"] == str(kind["seed"])
                assert np.array_equal(pixels(data), references[kind_of[job["id"]]]), job["id"]
    assert rss[-1] - rss[0] < 40, f"RSS grew from {rss[0]:.0f} MB to {rss[-1]:.0f} MB over the last 20 jobs"
