"""The server's settings, given on the command line (``kernel serve --help``) or to :func:`create_app`.

This module imports nothing heavy: ``kernel serve`` checks its options before torch loads.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_STEPS = 150  # as A1111's webui
MAX_SIZE = 2048  # pixels on a side
MAX_BATCH = 8
QUEUE_LIMIT = 64  # waiting jobs; one more gets 429
DB_NAME = "kernel-serve.sqlite3"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What one server runs: its default model, where it writes, its limits and its token."""

    outputs: Path = Path("outputs")
    model: str | None = None  # folder, Hub id or installed model name; None: the embedded default
    model_dirs: tuple[Path, ...] = ()  # folders the API's ``model`` field may name models in
    devices: tuple[str, ...] = ()  # one worker per device; () : cuda if available, else cpu
    dtype: str | None = None  # None/"auto": float16 on CUDA, else float32 (as ``kernel generate``)
    token: str | None = None
    max_steps: int = MAX_STEPS
    max_size: int = MAX_SIZE
    max_batch: int = MAX_BATCH
    queue_limit: int = QUEUE_LIMIT
    max_models: int = 2  # loaded pipelines kept per device (least recently used goes first)
    preload: bool = True  # load the default model on every device at start

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_size", "max_batch", "queue_limit", "max_models"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty")
        object.__setattr__(self, "outputs", Path(self.outputs))
        object.__setattr__(self, "model_dirs", tuple(Path(d) for d in self.model_dirs))
        object.__setattr__(self, "devices", tuple(self.devices))


def is_local_host(host: str) -> bool:
    """True for addresses only this machine reaches (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token: anyone who reaches the port could use it."""
    if not is_local_host(host) and not token:
        raise ValueError(f"--host {host!r} is reachable from other machines; give --token TOKEN (or set "
                         f"KERNEL_SERVE_TOKEN) so that only holders of the token can use the server")
