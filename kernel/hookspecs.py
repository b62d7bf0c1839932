"""Behaviour hooks plugins implement with ``pluggy`` (module listed under ``kernel.hooks``).

    import pluggy
    hookimpl = pluggy.HookimplMarker("kernel")

    @hookimpl
    def kernel_check_fits(family, model_index):
        if family == "mine" and "transformer" not in model_index:
            return "a 'mine' folder has a transformer"

Every hook here has a caller in the kernel (the last four: :mod:`kernel.checkpoints`).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("kernel")
hookimpl = pluggy.HookimplMarker("kernel")


@hookspec
def kernel_check_fits(family: str, model_index: dict) -> str | None:
    """Return a reason why ``model_index`` does not fit ``family`` (or ``None`` when it fits)."""


@hookspec
def kernel_register_commands(subparsers) -> None:
    """Add subcommands to the ``kernel`` command line (``subparsers`` from :mod:`argparse`); each sets
    ``func`` with ``set_defaults(func=...)``, called with the parsed arguments and returning an exit code."""


@hookspec
def kernel_single_file_families() -> dict:
    """The single-file families this plugin converts, each mapped to a folder of bundled Diffusers configs
    (``model_index.json``, each component's config and the scheduler's; no weights)."""


@hookspec(firstresult=True)
def kernel_open_checkpoint(path) -> tuple | None:
    """A file in a format this plugin reads (safetensors and ``torch.load`` files are the kernel's), as
    ``(tensors, shapes, quantization_config)``: ``key -> tensor`` read on access, ``key -> shape`` as the model
    holds each tensor (what detection reads), and the config its tensors load with when the caller passes no
    ``quantization_config`` (``None``: plain tensors).  ``None`` when the file is not this plugin's format."""


@hookspec
def kernel_detect_family(shapes: dict) -> str | None:
    """The family of a checkpoint from its ``key -> shape`` map, or ``None`` when not this plugin's; raise
    ``ValueError`` for a file that is no model checkpoint (a LoRA, an embedding), saying what it is."""


@hookspec(firstresult=True)
def kernel_convert_checkpoint(family: str, component: str, checkpoint, model, options: dict) -> dict | None:
    """Component ``component`` of a ``family`` checkpoint as a state dict for ``model`` (that component built
    from its config on the meta device: its ``state_dict()`` holds the keys and shapes to produce), or ``None``
    (not in the file, or not this plugin's family).  ``checkpoint`` maps original keys to tensors read on
    access; ``options`` are the caller's other keyword arguments."""
