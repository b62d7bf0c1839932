"""The JSON API through FastAPI's test client, on the embedded shapes-64 model."""

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from kernel.cli import main
from kernel_serve.app import create_app
from kernel_serve.config import ServeConfig
from kernel_shapes_model.detect import detect
from serve_helpers import COLOUR_PROMPTS, pixels, png_parameters, png_text, wait_job


def _post(client, **body):
    r = client.post("/api/generate", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def test_a_job_gives_the_picture_kernel_generate_gives(api, tmp_path):
    job = _post(api, prompt=COLOUR_PROMPTS["red"], steps=5, seed=2)
    assert job["status"] in ("queued", "running") and job["params"]["width"] == 64
    done = wait_job(api.get, job["id"])
    assert done["status"] == "done" and done["progress"] == 1.0 and len(done["images"]) == 1
    png = api.get(done["images"][0])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    prompt, negative, params = png_text(png.content)
    assert (prompt, negative) == (COLOUR_PROMPTS["red"], "")
    assert params["Steps"] == "5" and params["Seed"] == "2" and params["Model"] == "shapes-64"
    assert params["Sampler"] == done["params"]["sampler"] == "EulerDiscreteScheduler"
    assert done["parameters"][0] == png_parameters(png.content)
    assert detect(pixels(png.content)).colour == "red"  # the embedded model's answer to the prompt
    # `kernel generate --from` the server's PNG makes the very same picture
    (tmp_path / "server.png").write_bytes(png.content)
    assert main(["generate", "--from", str(tmp_path / "server.png"), "--out", str(tmp_path / "cli.png"),
                 "--no-progress"]) == 0
    assert np.array_equal(pixels(tmp_path / "cli.png"), pixels(png.content))


def test_batch_sampler_and_negative_prompt_match_the_command_line(api, tmp_path):
    prompt, negative = COLOUR_PROMPTS["yellow"], "a red, round circle"
    job = _post(api, prompt=prompt, negative_prompt=negative, sampler="DPM++ 2M Karras", steps=3, seed=5,
                batch=2, guidance=3)
    done = wait_job(api.get, job["id"])
    assert done["status"] == "done" and len(done["images"]) == 2
    assert main(["generate", prompt, "--negative", negative, "--sampler", "DPM++ 2M Karras", "--steps", "3",
                 "--seed", "5", "--batch", "2", "--guidance", "3", "--out", str(tmp_path / "cli.png"),
                 "--no-progress"]) == 0
    for k, url in enumerate(done["images"]):
        data = api.get(url).content
        assert np.array_equal(pixels(data), pixels(tmp_path / f"cli-{k}.png")), k
        assert png_text(data) == png_text((tmp_path / f"cli-{k}.png").read_bytes())
        assert png_text(data)[2]["Seed"] == str(5 + k)


def test_progress_arrives_as_server_sent_events(api):
    job = _post(api, prompt=COLOUR_PROMPTS["blue"], steps=4, seed=0)
    seen = []
    with api.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                assert event == "job"
                seen.append(json.loads(line[5:]))
    progress = [s["progress"] for s in seen]
    assert seen[-1]["status"] == "done" and progress[-1] == 1.0
    assert progress == sorted(progress) and len(set(progress)) >= 3  # steps show up one by one
    assert any(s["status"] == "running" and 0 < s["progress"] < 1 for s in seen)


def test_history_is_newest_first_and_paginated(api):
    ids = [_post(api, prompt=f"a green star at the top left on a gray background {i}", steps=1, seed=i)["id"]
           for i in range(3)]
    wait_job(api.get, ids[-1])
    first = api.get("/api/jobs", params={"limit": 2}).json()
    assert first["limit"] == 2 and len(first["jobs"]) == 2 and first["total"] >= 3
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2]
    second = api.get("/api/jobs", params={"limit": 2, "offset": 2}).json()
    assert second["jobs"][0]["id"] == ids[0]
    done = api.get("/api/jobs", params={"status": "done", "limit": 100}).json()
    assert all(j["status"] == "done" for j in done["jobs"]) and set(ids) <= {j["id"] for j in done["jobs"]}


def test_samplers_models_health_and_config(api):
    assert api.get("/api/health").json() == {"status": "ok", "ready": True}
    samplers = api.get("/api/samplers").json()["samplers"]
    assert {"Euler a", "DPM++ 2M", "DDIM"} <= set(samplers)
    models = api.get("/api/models").json()
    assert models["default"] == "shapes-64"
    assert {"name": "shapes-64", "default": True, "loaded": True} in models["models"]
    config = api.get("/api/config").json()
    assert config["limits"] == {"max_steps": 150, "max_size": 2048, "max_batch": 8, "queue_limit": 64}
    assert api.get("/").text.startswith("<!doctype html>") and api.get("/static/app.js").status_code == 200
    assert "/api/generate" in api.get("/openapi.json").json()["paths"]


def test_cancel_stops_a_running_job_through_the_engine_interrupt(api):
    job = _post(api, prompt=COLOUR_PROMPTS["red"], steps=150, seed=0)
    running = wait_job(api.get, job["id"], until={"running"})
    while api.get(f"/api/jobs/{job['id']}").json()["progress"] == 0:  # a step has ended
        time.sleep(0.02)
    r = api.delete(f"/api/jobs/{job['id']}")
    assert r.status_code == 200
    cancelled = r.json()
    assert running["status"] == "running"
    assert cancelled["status"] == "cancelled" and cancelled["images"] == [] and cancelled["progress"] < 0.5
    again = api.delete(f"/api/jobs/{job['id']}")
    assert again.status_code == 409 and again.json()["field"] == "id"
    # the pipeline is reused and its interrupt flag does not leak into the next job
    after = wait_job(api.get, _post(api, prompt=COLOUR_PROMPTS["red"], steps=2, seed=0)["id"])
    assert after["status"] == "done" and len(after["images"]) == 1


BAD = [
    ({"prompt": "x", "colour": "red"}, 422, "colour"),
    ({}, 422, "prompt"),
    ({"prompt": 5}, 422, "prompt"),
    ({"prompt": "   "}, 422, "prompt"),
    ({"prompt": "x", "steps": "20"}, 422, "steps"),
    ({"prompt": "x", "steps": 2.5}, 422, "steps"),
    ({"prompt": "x", "steps": 0}, 422, "steps"),
    ({"prompt": "x", "steps": 151}, 422, "steps"),
    ({"prompt": "x", "seed": True}, 422, "seed"),
    ({"prompt": "x", "guidance": "high"}, 422, "guidance"),
    ({"prompt": "x", "width": 66}, 422, "width"),
    ({"prompt": "x", "width": 0}, 422, "width"),
    ({"prompt": "x", "height": 4096}, 422, "height"),
    ({"prompt": "x", "sampler": "Eulerr"}, 422, "sampler"),
    ({"prompt": "x", "model": "no-such-model"}, 422, "model"),
    ({"prompt": "x", "batch": 9}, 422, "batch"),
    ({"prompt": "x", "batch": 0}, 422, "batch"),
    ({"prompt": "x", "model": "../../etc"}, 400, "model"),
    ({"prompt": "x", "model": "/etc"}, 400, "model"),
    ({"prompt": "x", "model": "C:\\models\\sd"}, 400, "model"),
    (["prompt"], 422, "body"),
]


@pytest.mark.parametrize("body, status, field", BAD, ids=[f"{f}-{s}-{i}" for i, (_, s, f) in enumerate(BAD)])
def test_bad_requests_name_the_field(api, body, status, field):
    before = api.get("/api/jobs").json()["total"]
    r = api.post("/api/generate", json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and field in r.json()["detail"]
    assert api.get("/api/jobs").json()["total"] == before  # nothing was queued


def test_malformed_json_unknown_jobs_and_bad_queries(api):
    r = api.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body"
    for path in ("/api/jobs/" + "0" * 32, "/api/jobs/nope", "/api/jobs/" + "0" * 32 + "/images/0.png",
                 "/api/jobs/" + "0" * 32 + "/events"):
        r = api.get(path)
        assert r.status_code == 404 and r.json()["field"] == "id", path
    assert api.delete("/api/jobs/" + "f" * 32).status_code == 404
    done = wait_job(api.get, _post(api, prompt="a red circle", steps=1, seed=0)["id"])
    r = api.get(f"/api/jobs/{done['id']}/images/1.png")
    assert r.status_code == 404 and r.json()["field"] == "index"
    for query, field in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"offset": -1}, "offset"),
                         ({"status": "lost"}, "status"), ({"limit": "many"}, "limit")):
        r = api.get("/api/jobs", params=query)
        assert r.status_code == 422 and r.json()["field"] == field, query


def test_queue_limit_gives_429_and_queued_jobs_cancel_at_once(tmp_path):
    app = create_app(ServeConfig(outputs=tmp_path, queue_limit=2, preload=False))
    client = TestClient(app)  # no lifespan: no worker runs, so jobs stay queued
    first, second = (_post(client, prompt="a red circle", steps=1) for _ in range(2))
    assert (first["position"], second["position"]) == (0, 1)
    full = client.post("/api/generate", json={"prompt": "a red circle", "steps": 1})
    assert full.status_code == 429 and "queue is full" in full.json()["detail"] and full.headers["retry-after"]
    r = client.delete(f"/api/jobs/{first['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["position"] is None
    assert client.get(f"/api/jobs/{second['id']}").json()["position"] == 0
    assert _post(client, prompt="a red circle", steps=1)["position"] == 1
    history = client.get("/api/jobs").json()
    assert history["total"] == 3 and [j["status"] for j in history["jobs"]] == ["queued", "queued", "cancelled"]


def test_token_guards_every_endpoint_but_health(tmp_path):
    app = create_app(ServeConfig(outputs=tmp_path, token="s3cret", preload=False))
    client = TestClient(app)
    job_id = "0" * 32
    paths = [(m, p.replace("{id}", job_id).replace("{index}", "0")) for p, ops in app.openapi()["paths"].items()
             for m in ops]
    paths += [("get", "/docs"), ("get", "/openapi.json")]
    assert len(paths) >= 10
    for method, path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = client.request(method, path, headers=headers)
            if path == "/api/health":
                assert r.status_code == 200
            else:
                assert r.status_code == 401, (method, path, headers)
                assert r.json()["field"] == "Authorization" and r.headers["www-authenticate"] == "Bearer"
    ok = {"Authorization": "Bearer s3cret"}
    assert client.get("/api/jobs", headers=ok).status_code == 200
    assert client.get("/api/jobs/" + job_id, headers=ok).status_code == 404
    assert client.post("/api/generate", json={}, headers=ok).status_code == 422
    # the page's own files hold no data; the page asks for the token and sends it with every call
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200


def test_model_names_stay_inside_the_model_folders(tmp_path):
    from kernel_serve.errors import ApiError
    from kernel_serve.models import ModelCatalog
    from kernel_shapes_model import model_path

    models, outside = tmp_path / "models", tmp_path / "outside"
    (models / "org" / "mine").mkdir(parents=True)
    for item in model_path().iterdir():  # a model folder inside: links to the embedded model's files
        (models / "org" / "mine" / item.name).symlink_to(item)
    outside.mkdir()
    (outside / "model_index.json").write_text("{}")
    (models / "escape").symlink_to(outside, target_is_directory=True)
    catalog = ModelCatalog(None, (models,))
    assert catalog.resolve("org/mine").source == str((models / "org" / "mine").resolve())
    assert catalog.names() == ["shapes-64", "org/mine"]  # not "escape": it leads outside
    for name, status in (("escape", 400), ("org/../escape", 400), ("../outside", 400), (str(outside), 400),
                         ("~/x", 400), ("org/none", 422), ("org\\mine", 400)):
        with pytest.raises(ApiError) as err:
            catalog.resolve(name)
        assert (err.value.status, err.value.field) == (status, "model"), name
    app = create_app(ServeConfig(outputs=tmp_path / "out", model_dirs=(models,), preload=False))
    client = TestClient(app)
    r = client.post("/api/generate", json={"prompt": "x", "model": "escape"})
    assert r.status_code == 400 and r.json()["field"] == "model"
    r = client.post("/api/generate", json={"prompt": "x", "model": "org/mine", "steps": 1})
    assert r.status_code == 202 and r.json()["params"]["model"] == "org/mine"


def test_restart_marks_running_jobs_failed_and_requeues_waiting_ones(tmp_path):
    from kernel_serve.store import DIED, Job, JobStore

    store = JobStore(tmp_path / "db.sqlite3")
    jobs = [Job(id=c * 32, params={"n": i}, status=s) for i, (c, s) in enumerate(
        (("a", "done"), ("b", "running"), ("c", "queued"), ("d", "queued")))]
    for job in jobs:
        store.insert(job)
    store.close()
    store = JobStore(tmp_path / "db.sqlite3")
    assert [j.id[0] for j in store.recover()] == ["c", "d"]
    assert store.get("b" * 32).status == "failed" and store.get("b" * 32).error == DIED
    assert store.get("a" * 32).status == "done"
    page, total = store.page(0, 10)
    assert total == 4 and [j.id[0] for j in page] == ["d", "c", "b", "a"]
