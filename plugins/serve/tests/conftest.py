"""Fixtures of the kernel-serve tests (helpers live in serve_helpers.py)."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """A started server (workers running, default model loaded) behind FastAPI's test client."""
    from fastapi.testclient import TestClient

    from kernel_serve.app import create_app
    from kernel_serve.config import ServeConfig

    app = create_app(ServeConfig(outputs=tmp_path_factory.mktemp("api") / "outputs"))
    with TestClient(app) as client:
        while not client.get("/api/health").json()["ready"]:
            time.sleep(0.05)
        yield client
