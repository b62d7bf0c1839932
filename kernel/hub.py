"""Where files come from: a local folder, or a Hub repository through ``huggingface_hub``.

A local path never touches the network.  ``org/name`` sources go through
``huggingface_hub`` so its cache, ``HF_HUB_OFFLINE``, ``revision``, ``token``,
``cache_dir`` and ``local_files_only`` all work as users expect, and only the
files a caller asks for (``allow_patterns``) are downloaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")


def split_hub_kwargs(kwargs: dict) -> dict:
    """Pop the Hub keyword arguments out of ``kwargs``."""
    return {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}


def is_local(source: str | os.PathLike) -> bool:
    return Path(source).expanduser().exists()


def _check_repo_id(source: str) -> None:
    if not isinstance(source, str) or not _REPO_ID.match(source) or source.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"{source!r} is neither an existing local folder nor a Hub repository id of the form 'org/name'"
        )


def resolve_folder(
    source: str | os.PathLike,
    subfolder: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    **hub_kwargs: Any,
) -> Path:
    """A local folder holding ``source`` (downloading the allowed files of a Hub repo first)."""
    if is_local(source):
        base = Path(source).expanduser()
        folder = base / subfolder if subfolder else base
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder} (subfolder={subfolder!r} of {str(base)!r})")
        return folder
    source = str(source)
    _check_repo_id(source)
    from huggingface_hub import snapshot_download

    patterns = list(allow_patterns) if allow_patterns is not None else None
    if subfolder and patterns is not None:
        patterns = [f"{subfolder}/{p}" for p in patterns]
    elif subfolder:
        patterns = [f"{subfolder}/*"]
    kwargs = {k: v for k, v in hub_kwargs.items() if k in HUB_KWARGS and v is not None}
    kwargs.pop("proxies", None)
    try:
        root = Path(snapshot_download(source, allow_patterns=patterns, **kwargs))
    except Exception as err:  # huggingface_hub raises several error types for offline/missing
        raise FileNotFoundError(
            f"could not get {source!r} from the Hub cache or the Hub ({type(err).__name__}: {err}). "
            "Offline? Set HF_HUB_OFFLINE=1 only when the files are already cached."
        ) from err
    return root / subfolder if subfolder else root


def resolve_file(
    source: str | os.PathLike, filename: str, subfolder: str | None = None, **hub_kwargs: Any
) -> Path:
    """The local path of one file of ``source``."""
    if is_local(source):
        base = Path(source).expanduser()
        path = base / subfolder / filename if subfolder else base / filename
        if not path.is_file():
            raise FileNotFoundError(f"no {filename} in {path.parent}")
        return path
    source = str(source)
    _check_repo_id(source)
    from huggingface_hub import hf_hub_download

    kwargs = {k: v for k, v in hub_kwargs.items() if k in HUB_KWARGS and v is not None}
    kwargs.pop("proxies", None)
    try:
        return Path(hf_hub_download(source, filename, subfolder=subfolder or None, **kwargs))
    except Exception as err:
        raise FileNotFoundError(
            f"could not get {filename} of {source!r} (subfolder={subfolder!r}) from the Hub cache or the Hub "
            f"({type(err).__name__}: {err})"
        ) from err
