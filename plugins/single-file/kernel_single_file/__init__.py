"""kernel-single-file: checkpoints in their original single-file layouts, both ways.

Loading goes through the kernel (``kernel.load("model.safetensors")``, ``Pipeline.from_single_file``,
``Model.from_single_file``), which calls this plugin's hooks (:mod:`kernel_single_file.hooks`): the
families it knows with their bundled configs, detection, and conversion.  This package adds the
conversions between a single file and a Diffusers folder (:func:`to_diffusers_folder`,
:func:`to_single_file`; ``kernel convert`` on the command line).
"""

from kernel_single_file.families import FAMILIES, detect

__all__ = ["FAMILIES", "detect", "to_diffusers_folder", "to_single_file"]


def __getattr__(name: str):  # the converters import torch; ``kernel --help`` and ``kernel plugins`` must not
    if name in ("to_diffusers_folder", "to_single_file"):
        from kernel_single_file import folders

        return getattr(folders, name)
    raise AttributeError(name)
