"""Original AnimateDiff motion-module checkpoints (``mm_sd_v15_v2.ckpt``, ``v3_sd15_mm.ckpt``,
``mm_sdxl_v10_beta.ckpt`` ...) as :class:`~kernel_animatediff.motion_adapter.MotionAdapter` weights:
``MotionAdapter.from_single_file(path)`` through the kernel's single-file hooks.

Families, recognised from which modules the file has (so tiny test files are recognised like real ones):

* ``animatediff-motion-v2``: a mid-block motion module;
* ``animatediff-motion-sdxl``: no mid block, and the third up stage is 320 wide (SDXL's three stages);
* ``animatediff-motion-v1``: otherwise, with a 24-frame positional table;
* ``animatediff-motion-v3``: otherwise (32 frames).

Each has a bundled Diffusers config (``configs/<family>``); ``config=`` names another. The conversion renames
the original modules (``temporal_transformer``, ``attention_blocks.N``, ``norms.N``, ``ff_norm``) and
computes the sinusoidal position tables for the config's ``motion_max_seq_length`` rather than reading them.
"""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).parent / "configs"
FAMILIES = ("animatediff-motion-v1", "animatediff-motion-v2", "animatediff-motion-v3", "animatediff-motion-sdxl")
_PE = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
_MID = "mid_block.motion_modules.0.temporal_transformer.norm.bias"
_UP2 = "up_blocks.2.motion_modules.0.temporal_transformer.norm.weight"
_RENAMES = ((".norms.0", ".norm1"), (".norms.1", ".norm2"), (".ff_norm", ".norm3"), (".attention_blocks.0", ".attn1"),
            (".attention_blocks.1", ".attn2"), (".temporal_transformer", ""))


def detect(shapes: dict) -> str | None:
    """The motion-module family of a checkpoint's ``key -> shape`` map, or None."""
    if _PE not in shapes:
        return None
    if any(k.startswith("controlnet_cond_embedding") for k in shapes):
        return None  # a SparseCtrl checkpoint: not a motion adapter
    if _MID in shapes:
        return "animatediff-motion-v2"
    if _UP2 in shapes and shapes[_UP2][-1] == 320:
        return "animatediff-motion-sdxl"
    return "animatediff-motion-v1" if shapes[_PE][1] == 24 else "animatediff-motion-v3"


def rename(key: str) -> str:
    for old, new in _RENAMES:
        key = key.replace(old, new)
    return key


def to_diffusers(family: str, component: str, checkpoint, model) -> dict | None:
    """The ``motion_adapter`` state dict for ``model`` (built from the config on the meta device)."""
    if family not in FAMILIES or component != "motion_adapter":
        return None
    from kernel_animatediff.temporal import SinusoidalPositionalEmbedding

    wanted = model.state_dict()
    state = {rename(k): checkpoint[k] for k in checkpoint if "pos_encoder" not in k}
    for key, value in wanted.items():
        if key.endswith(".pos_embed.pe") and key not in state:
            state[key] = SinusoidalPositionalEmbedding(value.shape[-1], value.shape[1]).pe
    missing = sorted(set(wanted) - set(state))
    extra = sorted(set(state) - set(wanted))
    if missing or extra:
        raise ValueError(f"{checkpoint}: the {family} motion modules do not fit the MotionAdapter config "
                         f"(missing {missing[:3]}, unexpected {extra[:3]}); pass config=<a MotionAdapter folder> "
                         "that matches the file")
    bad = [k for k in state if tuple(state[k].shape) != tuple(wanted[k].shape)]
    if bad:
        raise ValueError(f"{checkpoint}: {bad[0]} has shape {tuple(state[bad[0]].shape)} but the MotionAdapter "
                         f"config gives {tuple(wanted[bad[0]].shape)}; pass config=<a MotionAdapter folder> that "
                         "matches the file")
    return state
