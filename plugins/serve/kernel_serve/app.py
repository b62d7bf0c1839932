"""The FastAPI application: the JSON API, progress as server-sent events, and the web page.

    from kernel_serve.app import create_app
    app = create_app(ServeConfig(outputs="pictures"))   # then: uvicorn.run(app) or TestClient(app)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from kernel_serve.config import ServeConfig
from kernel_serve.errors import ApiError
from kernel_serve.schemas import ERRORS, GenerateRequest, JobOut, JobPage
from kernel_serve.service import Service
from kernel_serve.store import FINISHED, STATUSES, Job

STATIC = Path(__file__).resolve().parent / "static"
PUBLIC = ("/api/health",)  # and the page itself: "/" and /static/ hold no data, only the page's code


def _error(status: int, detail: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code=status, headers=headers)


class BearerToken:
    """ASGI middleware: every request but PUBLIC ones and the page's files needs ``Authorization: Bearer``."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    def _public(self, path: str) -> bool:
        return path in PUBLIC or path == "/" or path.startswith("/static/")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self._public(scope["path"]):
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, value = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self.token):
                response = _error(401, "Authorization: this server needs 'Authorization: Bearer TOKEN'",
                                  "Authorization", {"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _field(loc: tuple) -> str:
    """``steps`` for ``("body", "steps")``; ``body`` for the body as a whole (``("body", 12)`` is a JSON offset)."""
    parts = [p for p in loc if isinstance(p, str) and p not in ("body", "query", "path", "header")]
    return ".".join(parts) if parts else str(loc[0] if loc else "body")


def job_json(service: Service, job: Job) -> dict:
    return {"id": job.id, "status": job.status, "progress": round(job.progress, 4),
            "images": [f"/api/jobs/{job.id}/images/{k}.png" for k in range(len(job.images))],
            "parameters": [im["parameters"] for im in job.images], "error": job.error, "params": job.params,
            "position": service.position(job), "device": job.device, "created": job.created,
            "started": job.started, "finished": job.finished}


def create_app(config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    service = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)

    app = FastAPI(title="kernel serve", version="0.1.0", lifespan=lifespan,
                  description="Text to picture over kernel pipelines: a job queue, history and progress events. "
                              "See docs/serve.md.")
    app.state.service = service
    if config.token:
        app.add_middleware(BearerToken, token=config.token)

    # ------------------------------------------------------------ errors: {"detail", "field"}
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.detail, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = [{"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid")}
                  for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        body = {"detail": f"{first['field']}: {first['message']}", "field": first["field"], "errors": errors}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))

    # ------------------------------------------------------------ API
    @app.get("/api/health", tags=["server"])
    def health() -> dict:
        """Liveness (no token needed): ``ready`` once the default model is loaded on every device."""
        return {"status": "ok", "ready": service.ready}

    @app.get("/api/config", tags=["server"])
    def server_config() -> dict:
        """The limits requests are checked against, and the defaults of omitted fields."""
        from kernel_generate.command import DEFAULT_GUIDANCE, DEFAULT_STEPS

        return {"limits": {"max_steps": config.max_steps, "max_size": config.max_size,
                           "max_batch": config.max_batch, "queue_limit": config.queue_limit},
                "defaults": {"steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE, "batch": 1,
                             "model": service.catalog.default.name},
                "devices": [c.name for c in service.caches]}

    @app.get("/api/samplers", tags=["models"])
    def samplers() -> dict:
        """Sampler names (A1111 style) the ``sampler`` field takes (scheduler class names work too)."""
        from kernel.loading import sampler_names

        return {"samplers": sampler_names()}

    @app.get("/api/models", tags=["models"])
    def models() -> dict:
        """Models the ``model`` field takes: the default, installed models, folders in --model-dir."""
        loaded = {s for c in service.caches for s in c.loaded()}
        default = service.catalog.default
        items = []
        for name in service.catalog.names():
            try:
                source = service.catalog.resolve(name).source
            except ApiError:
                continue
            items.append({"name": name, "default": name == default.name, "loaded": source in loaded})
        return {"models": items, "default": default.name}

    @app.post("/api/generate", status_code=202, response_model=JobOut, tags=["jobs"],
              responses={**ERRORS, 429: {"model": ERRORS[422]["model"], "description": "the queue is full"}})
    def generate(body: GenerateRequest):
        """Queue a job; returns at once with its ``id`` (follow it at ``/api/jobs/{id}`` or ``/events``)."""
        job = service.submit(service.prepare(body.model_dump()))
        return JSONResponse(job_json(service, job), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})

    @app.get("/api/jobs", response_model=JobPage, tags=["jobs"], responses=ERRORS)
    def jobs(offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=100),
             status: str | None = Query(None, pattern="^(" + "|".join(STATUSES) + ")$")) -> dict:
        """The history, newest first."""
        page, total = service.page(offset, limit, status)
        return {"jobs": [job_json(service, j) for j in page], "total": total, "offset": offset, "limit": limit}

    @app.get("/api/jobs/{id}", response_model=JobOut, tags=["jobs"], responses=ERRORS)
    def job(id: str) -> dict:
        return job_json(service, service.get(id))

    @app.delete("/api/jobs/{id}", response_model=JobOut, tags=["jobs"],
                responses={**ERRORS, 409: {"model": ERRORS[422]["model"], "description": "already finished"}})
    def cancel(id: str) -> dict:
        """Cancel a waiting job, or stop a running one (the engine's interrupt); 409 when already finished."""
        return job_json(service, service.cancel(id))

    @app.get("/api/jobs/{id}/images/{index}.png", tags=["jobs"], response_class=FileResponse,
             responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "the PNG, with its "
                                        "A1111 `parameters` text chunk"}})
    def image(id: str, index: int):
        found = service.get(id)
        if not 0 <= index < len(found.images):
            raise ApiError(404, f"index: job {id} has {len(found.images)} picture(s), no picture {index}", "index")
        path = service.outputs / found.images[index]["file"]
        if not path.is_file():
            raise ApiError(404, f"index: picture {index} of job {id} is no longer in the outputs folder", "index")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/api/jobs/{id}/events", tags=["jobs"], responses={
        **ERRORS, 200: {"content": {"text/event-stream": {}},
                        "description": "`event: job` with the job's JSON at each change; closes when it ends"}})
    async def events(id: str, request: Request):
        """Progress as server-sent events: one ``job`` event per change, the last one with a finished status."""
        service.get(id)  # 404 before the stream starts

        async def stream():
            last = None
            while True:
                data = json.dumps(job_json(service, service.get(id)))
                if data != last:
                    last = data
                    yield f"event: job\ndata: {data}\n\n"
                    if json.loads(data)["status"] in FINISHED:
                        return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------ the page
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
