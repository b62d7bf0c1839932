"""``kernel serve`` as a real process on a free local port: end to end, then killed during a job and restarted.

One test, so that the two server starts it needs are all it costs.
"""

import json

import httpx
import numpy as np

from kernel.cli import main
from kernel_shapes_model.detect import detect
from serve_helpers import COLOUR_PROMPTS, ServerProcess, pixels, png_text, wait_job


def test_real_process_end_to_end_then_killed_and_restarted_keeps_the_history(tmp_path):
    outputs = tmp_path / "outputs"
    first = ServerProcess(outputs).start()
    try:
        with httpx.Client(base_url=first.url, timeout=30) as client:
            # end to end: the page, the API description, a job followed through its events, its PNG
            assert client.get("/api/health").json() == {"status": "ok", "ready": True}
            assert "<title>kernel serve</title>" in client.get("/").text
            assert client.get("/static/app.css").status_code == 200
            assert "/api/jobs/{id}/events" in client.get("/openapi.json").json()["paths"]
            r = client.post("/api/generate", json={"prompt": COLOUR_PROMPTS["blue"], "steps": 5, "seed": 3})
            assert r.status_code == 202 and r.headers["location"] == f"/api/jobs/{r.json()['id']}"
            done_id = r.json()["id"]
            statuses = []
            with client.stream("GET", f"/api/jobs/{done_id}/events") as events:
                for line in events.iter_lines():
                    if line.startswith("data:"):
                        statuses.append(json.loads(line[5:])["status"])
            assert statuses[-1] == "done" and "running" in statuses
            picture = client.get(client.get(f"/api/jobs/{done_id}").json()["images"][0]).content
            # killed (SIGKILL: no chance to clean up) during a job, with another one waiting
            long = client.post("/api/generate", json={"prompt": COLOUR_PROMPTS["red"], "steps": 150}).json()
            waiting = client.post("/api/generate", json={"prompt": COLOUR_PROMPTS["blue"], "steps": 1,
                                                         "seed": 4}).json()
            wait_job(client.get, long["id"], until={"running"})
    finally:
        first.kill()
    assert detect(pixels(picture)).colour == "blue" and png_text(picture)[2]["Seed"] == "3"
    (tmp_path / "served.png").write_bytes(picture)
    assert main(["generate", "--from", str(tmp_path / "served.png"), "--out", str(tmp_path / "again.png"),
                 "--no-progress"]) == 0
    assert np.array_equal(pixels(tmp_path / "again.png"), pixels(picture))  # the CLI makes the same picture

    second = ServerProcess(outputs).start()
    try:
        with httpx.Client(base_url=second.url, timeout=30) as client:
            died = client.get(f"/api/jobs/{long['id']}").json()
            assert died["status"] == "failed" and "stopped while this job was running" in died["error"]
            kept = client.get(f"/api/jobs/{done_id}").json()
            assert kept["status"] == "done" and client.get(kept["images"][0]).content == picture
            rerun = wait_job(client.get, waiting["id"])  # accepted but never started: it runs now
            assert rerun["status"] == "done" and png_text(client.get(rerun["images"][0]).content)[2]["Seed"] == "4"
            history = client.get("/api/jobs").json()
            assert [j["id"] for j in history["jobs"]] == [waiting["id"], long["id"], done_id]
    finally:
        second.stop()
    assert second.proc.returncode == 0, second.log()  # Ctrl-C stops it cleanly
