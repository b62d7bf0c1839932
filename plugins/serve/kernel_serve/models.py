"""Which models the API may name, and where they are.

A job names its model by one of:

* the server's default (``--model``, or the embedded model), by the name it was given;
* an installed model (the ``kernel.models`` entry points, as ``kernel generate --model``);
* a folder with a ``model_index.json`` inside one of the ``--model-dir`` folders, by its path
  relative to that folder (``my-model`` or ``org/name``).

A name that is absolute, contains ``..``, or resolves (through links) outside every model folder is
refused with 400: the API never loads a path its operator did not put in a model folder, and never
downloads.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from kernel_serve.errors import ApiError

_NAME = re.compile(r"[\w.\-/ ]+")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    name: str  # what the API, the history and the PNG's ``Model:`` call it
    source: str  # the folder (or, for the operator's --model only, Hub id) to load


class ModelCatalog:
    def __init__(self, default: str | None, model_dirs: tuple[Path, ...] = ()):
        from kernel_generate.command import resolve_model

        name, source = resolve_model(default)  # the operator's choice: any folder, Hub id or name
        self.default = ModelRef(name, source)
        self.model_dirs = tuple(Path(d).expanduser().resolve() for d in model_dirs)

    def _installed(self) -> list[str]:
        from kernel_generate.command import installed_models

        return installed_models()

    def _folders(self) -> list[str]:
        names = []
        for root in self.model_dirs:
            for index in sorted(root.glob("*/model_index.json")) + sorted(root.glob("*/*/model_index.json")):
                if index.parent.resolve().is_relative_to(root):  # a link out of the folder is not offered
                    names.append(index.parent.relative_to(root).as_posix())
        return names

    def names(self) -> list[str]:
        seen = [self.default.name]
        for name in self._installed() + self._folders():
            if name not in seen:
                seen.append(name)
        return seen

    def resolve(self, name: str | None) -> ModelRef:
        """The model a job names; :class:`ApiError` 400 for a path leaving the model folders, 422 unknown."""
        if name is None or name == self.default.name:
            return self.default
        if name in self._installed():
            from kernel_generate.command import resolve_model

            try:
                return ModelRef(*resolve_model(name))
            except ValueError as err:
                raise ApiError(422, f"model: {err}", "model") from None
        posix, windows = PurePosixPath(name), PureWindowsPath(name)
        if (posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith("~")
                or ".." in posix.parts or ".." in windows.parts or "\\" in name or "\x00" in name):
            raise ApiError(400, f"model: {name!r} is a path leaving the model folders; name a model "
                                f"listed by GET /api/models", "model")
        if _NAME.fullmatch(name):
            for root in self.model_dirs:
                folder = (root / name).resolve()
                if not folder.is_relative_to(root):
                    raise ApiError(400, f"model: {name!r} leads outside the model folders (through a link)",
                                   "model")
                if (folder / "model_index.json").is_file():
                    return ModelRef(name, str(folder))
        raise ApiError(422, f"model: unknown model {name!r}; known: {', '.join(self.names())}", "model")
