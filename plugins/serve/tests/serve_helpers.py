"""Helpers for the kernel-serve tests: a real ``kernel serve`` process, an in-thread server, PNG reading."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from kernel_generate.command import parse_infotext

KERNEL = Path(sys.executable).with_name("kernel")
FINISHED = {"done", "failed", "cancelled"}
# The embedded model answers these with the named colour at 5 steps (the default Euler sampler, seeds 0-3),
# as the detector of kernel-shapes-model reads it.
COLOUR_PROMPTS = {"red": "a large red circle at the center on a white background",
                  "blue": "a large blue square at the center on a black background",
                  "yellow": "a large yellow square at the center on a black background"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_parameters(data: bytes) -> str:
    """The PNG's A1111 ``parameters`` text chunk."""
    with Image.open(io.BytesIO(data)) as im:
        return im.info["parameters"]


def png_text(data: bytes) -> tuple[str, str, dict[str, str]]:
    return parse_infotext(png_parameters(data))


def pixels(data_or_path) -> np.ndarray:
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(source) as im:
        return np.asarray(im.convert("RGB"))


def wait_job(get, job_id: str, timeout: float = 120.0, until=FINISHED) -> dict:
    """Poll ``get(url)`` (a client's get) until the job's status is in ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        job = get(f"/api/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
        time.sleep(0.05)


class ServerProcess:
    """``kernel serve`` as a real process on a free local port."""

    def __init__(self, outputs: Path, *args: str, log: Path | None = None):
        self.outputs, self.args = Path(outputs), args
        self.log_path = log or self.outputs.with_name(self.outputs.name + ".log")
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 120.0) -> "ServerProcess":
        for _ in range(3):  # a port taken between free_port() and the bind: try another
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self._log = open(self.log_path, "ab")
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen([str(KERNEL), "serve", "--port", str(port), "--outputs", str(self.outputs),
                                          "--log-level", "warning", *self.args], stdout=self._log,
                                         stderr=subprocess.STDOUT, env=env)
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"kernel serve did not start; its log:\n{self.log()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(self.url + "/api/health", timeout=2).json().get("ready"):
                    return True
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()


@contextlib.contextmanager
def serve_in_thread(app):
    """Run ``app`` with uvicorn in a thread of this process; yields its base URL."""
    import uvicorn

    for _ in range(3):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if server.started:
            break
    else:
        raise RuntimeError("uvicorn did not start")
    url = f"http://127.0.0.1:{port}"
    try:
        while not httpx.get(url + "/api/health").json()["ready"]:
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
