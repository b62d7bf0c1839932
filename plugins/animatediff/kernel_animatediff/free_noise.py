"""FreeNoise (Qiu et al., arXiv:2310.15169): videos longer than the motion modules' window.

Three changes, each switched on by ``pipe.enable_free_noise(...)`` and off by ``disable_free_noise()``:

* the motion modules attend over sliding windows of ``context_length`` frames, ``context_stride`` apart,
  and blend the overlapping windows with per-frame weights (``flat``, ``pyramid`` or
  ``delayed_reverse_sawtooth``); the feed-forward then runs on every frame
  (:func:`windowed_attention`, installed per block by :meth:`UNetMotionModel.set_free_noise`);
* the starting noise repeats in shuffled windows (``noise_type="shuffle_context"``), so distant frames
  share noise statistics (:func:`free_noise_latents`);
* the prompt may change over time: ``prompt={0: "a cat", 12: "a dog"}`` encodes each keyed prompt and
  interpolates the embeddings frame by frame (linearly, or with ``prompt_interpolation_callback``).

The numbers follow Diffusers 0.42's implementation, including its handling of a last window that does not
end on the last frame, and of ``noise_type="repeat_context"`` (which draws noise for every frame, so it
gives the same noise as ``"random"``).

For long videos ``pipe.enable_free_noise_split_inference(spatial_split_size=256, temporal_split_size=16)`` lowers
peak memory: the motion modules' ``proj_in``, temporal blocks and ``proj_out`` run on at most
``spatial_split_size`` pixel sequences (rows of ``(B*H*W, F, C)``) at a time, the spatial attentions, ResNets and
down/up samplers on at most ``temporal_split_size`` frames (rows of ``(B*F, ...)``); each row is computed exactly as
before, so the output does not change.  Each such module's ``forward`` is replaced on the instance by a
:class:`SplitInference` (parameter names and the state dict stay as they are); ``disable_free_noise()`` removes them
(Diffusers 0.42 has no ``disable_free_noise_split_inference``).
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any, Callable

import torch

from kernel.engine import Conditioning
from kernel.scheduling import randn_tensor

WEIGHTING_SCHEMES = ("flat", "pyramid", "delayed_reverse_sawtooth")
NOISE_TYPES = ("shuffle_context", "repeat_context", "random")


def frame_weights(length: int, scheme: str) -> list[float]:
    """The blending weight of each frame of a window of ``length`` frames."""
    half = length // 2
    if scheme == "flat":
        return [1.0] * length
    if scheme == "pyramid":
        if length % 2 == 0:
            up = list(range(1, half + 1))
            return up + up[::-1]
        up = list(range(1, half + 1))
        return up + [half + 1] + up[::-1]
    if scheme == "delayed_reverse_sawtooth":
        if length % 2 == 0:
            return [0.01] * (half - 1) + [half] + list(range(half, 0, -1))
        # (Diffusers 0.42 makes one weight too many here and fails; this is the pattern it documents)
        return [0.01] * half + list(range(half + 1, 0, -1))
    raise ValueError(f"weighting_scheme={scheme!r}; use one of {list(WEIGHTING_SCHEMES)}")


def windowed_attention(block, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                       context_length: int, context_stride: int, weighting_scheme: str) -> torch.Tensor:
    """The attention half of a temporal block over sliding windows of frames, blended with frame weights.

    ``hidden_states`` is ``(sequences, frames, dim)``; each window runs the block's two attentions (with
    frame positions counted from the window's start); overlapping outputs are averaged with the weights.
    """
    frames = hidden_states.shape[1]
    windows = [(s, s + context_length) for s in range(0, frames - context_length + 1, context_stride)]
    complete = windows[-1][1] == frames
    tail = frames - windows[-1][1]
    if not complete:
        windows.append((frames - context_length, frames))
    weights = torch.tensor(frame_weights(context_length, weighting_scheme), device=hidden_states.device,
                           dtype=hidden_states.dtype)[None, :, None]
    total = torch.zeros_like(hidden_states)
    count = torch.zeros((1, frames, 1), device=hidden_states.device)
    for i, (start, end) in enumerate(windows):
        chunk = hidden_states[:, start:end]
        chunk = block.attn1(block.pos_embed(block.norm1(chunk))) + chunk
        if block.attn2 is not None:
            chunk = block.attn2(block.pos_embed(block.norm2(chunk)), encoder_hidden_states=encoder_hidden_states) + chunk
        w = torch.ones_like(count[:, start:end]) * weights
        if i == len(windows) - 1 and not complete:
            total[:, -tail:] += chunk[:, -tail:] * w[:, -tail:]
            count[:, -tail:] += w[:, -tail]  # one weight for the whole tail, as Diffusers 0.42 does
        else:
            total[:, start:end] += chunk * w
            count[:, start:end] += w
    return torch.where(count > 0, total / count, total).to(hidden_states.dtype)


def free_noise_latents(latents: torch.Tensor, context_length: int, context_stride: int, noise_type: str,
                       generator: Any) -> torch.Tensor:
    """Starting noise ``(B, C, F, h, w)`` with the windows after the first ``context_length`` frames filled by
    shuffled copies of earlier frames (``shuffle_context``); the other types keep it as drawn.  With a list of
    generators, one per video, each video is shuffled with its own (so video ``i`` is the one generator ``i`` makes
    alone)."""
    frames = latents.shape[2]
    if noise_type != "shuffle_context":
        return latents
    if isinstance(generator, list) and len(generator) > 1 and len(generator) == latents.shape[0]:
        return torch.cat([free_noise_latents(latents[i:i + 1], context_length, context_stride, noise_type, g)
                          for i, g in enumerate(generator)])
    latents = latents.clone()
    g = generator[0] if isinstance(generator, list) else generator
    for i in range(context_length, frames, context_stride):
        start = max(0, i - context_length)
        end = min(frames, start + context_stride)
        count = end - start
        if count == 0:
            break
        order = torch.arange(start, end)[torch.randperm(count, generator=g)]
        stop = min(frames, i + count)
        latents[:, :, i:stop] = latents[:, :, order[:stop - i]]
    return latents


def lerp_frames(start: int, end: int, start_tensor: torch.Tensor, end_tensor: torch.Tensor) -> torch.Tensor:
    """Linear interpolation from ``start_tensor`` (frame ``start``) to ``end_tensor`` (frame ``end``), one row per frame."""
    n = end - start + 1
    return torch.cat([(1 - i / (n - 1)) * start_tensor + (i / (n - 1)) * end_tensor for i in range(n)])


def _as_frame_prompts(value: Any, name: str, num_frames: int) -> dict[int, str]:
    if isinstance(value, str):
        value = {0: value}
    if not isinstance(value, dict) or not value:
        raise ValueError(f"with FreeNoise, {name} must be a str or a dict {{frame index: str}}, got "
                         f"{type(value).__name__}")
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in value):
        raise ValueError(f"{name} dict keys must be int frame indices, got {list(value)}")
    if not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{name} dict values must be str prompts")
    if min(value) != 0:
        raise ValueError(f"{name} dict must start at frame 0 (a prompt for the first frame); got keys {sorted(value)}")
    if max(value) >= num_frames:
        raise ValueError(f"{name} dict has frame index {max(value)}, but num_frames={num_frames} (0-based indices)")
    value = dict(sorted(value.items()))
    value[num_frames - 1] = value[max(value)]
    return value


class SplitInference:
    """A module's forward run in chunks of ``split_size`` rows (dim 0), the outputs concatenated.

    Installed as ``module.forward`` (:func:`enable_split_inference`).  The arguments named in ``names`` (positional
    or keyword, as the module's forward names them) that are tensors with as many rows as the first of them are
    split; every other argument goes to each chunk unchanged.  ``calls`` and ``chunks`` count what ran.
    """

    def __init__(self, module: torch.nn.Module, split_size: int, names: tuple[str, ...]):
        self.original = module.forward
        self.signature = inspect.signature(self.original)
        self.split_size, self.names = split_size, tuple(names)
        self.calls = self.chunks = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.signature.bind(*args, **kwargs)
        tensors = {n: bound.arguments[n] for n in self.names if torch.is_tensor(bound.arguments.get(n))}
        self.calls += 1
        rows = next(iter(tensors.values())).shape[0] if tensors else 0
        if rows <= self.split_size:
            self.chunks += 1
            return self.original(*args, **kwargs)
        pieces = {n: v.split(self.split_size) for n, v in tensors.items() if v.shape[0] == rows}
        results = []
        for chunk in zip(*pieces.values()):
            bound.arguments.update(zip(pieces, chunk))
            results.append(self.original(*bound.args, **bound.kwargs))
        self.chunks += len(results)
        return _concat_rows(results)


def _concat_rows(results: list) -> Any:
    first = results[0]
    if torch.is_tensor(first):
        return torch.cat(results)
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return type(first)(_concat_rows(list(parts)) for parts in zip(*results))
    raise TypeError(f"split inference can only concatenate tensors or tuples of tensors, got {type(first).__name__}")


def _split(module: torch.nn.Module, size: int, names: tuple[str, ...]) -> None:
    module.forward = SplitInference(module, size, names)


def disable_split_inference(model: torch.nn.Module) -> None:
    """Remove every :class:`SplitInference` installed in ``model``."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), SplitInference):
            del module.forward


def enable_split_inference(unet: torch.nn.Module, spatial_split_size: int, temporal_split_size: int) -> None:
    """Split inference on the stages of a :class:`UNetMotionModel` (the modules Diffusers 0.42 splits)."""
    disable_split_inference(unet)
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        if block is None:
            continue
        for motion in getattr(block, "motion_modules", None) or ():
            _split(motion.proj_in, spatial_split_size, ("input",))
            for temporal in motion.transformer_blocks:
                _split(temporal, spatial_split_size, ("hidden_states", "encoder_hidden_states"))
            _split(motion.proj_out, spatial_split_size, ("input",))
        for attn in getattr(block, "attentions", None) or ():
            _split(attn, temporal_split_size, ("hidden_states", "encoder_hidden_states"))
        for resnet in getattr(block, "resnets", None) or ():
            _split(resnet, temporal_split_size, ("input_tensor", "temb"))
        for sampler in [*(getattr(block, "downsamplers", None) or ()), *(getattr(block, "upsamplers", None) or ())]:
            _split(sampler, temporal_split_size, ("hidden_states",))


class FreeNoiseMixin:
    """``enable_free_noise`` / ``disable_free_noise`` for the AnimateDiff pipelines (see the module docstring)."""

    def enable_free_noise(self, context_length: int | None = 16, context_stride: int = 4,
                          weighting_scheme: str = "pyramid", noise_type: str = "shuffle_context",
                          prompt_interpolation_callback: Callable | None = None) -> None:
        """Long videos: windows of ``context_length`` frames (default: the adapter's ``motion_max_seq_length``),
        ``context_stride`` apart, blended with ``weighting_scheme``; ``noise_type`` is ``shuffle_context``,
        ``repeat_context`` or ``random``; ``prompt_interpolation_callback(start, end, start_embeds, end_embeds)``
        replaces the linear interpolation between keyed prompts."""
        limit = self.unet.config.motion_max_seq_length
        context_length = context_length or limit
        if isinstance(context_length, bool) or not isinstance(context_length, int) or not 1 <= context_length <= limit:
            raise ValueError(f"context_length must be an int in [1, motion_max_seq_length={limit}], got {context_length!r}")
        if isinstance(context_stride, bool) or not isinstance(context_stride, int) or context_stride < 1:
            raise ValueError(f"context_stride must be a positive int, got {context_stride!r}")
        if weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(f"weighting_scheme={weighting_scheme!r}; use one of {list(WEIGHTING_SCHEMES)}")
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type={noise_type!r}; use one of {list(NOISE_TYPES)}")
        if prompt_interpolation_callback is not None and not callable(prompt_interpolation_callback):
            raise TypeError("prompt_interpolation_callback must be callable (start, end, start_embeds, end_embeds)")
        self._free_noise = SimpleNamespace(context_length=context_length, context_stride=context_stride,
                                           weighting_scheme=weighting_scheme, noise_type=noise_type,
                                           interpolate=prompt_interpolation_callback or lerp_frames)
        self.unet.set_free_noise(context_length, context_stride, weighting_scheme)

    def disable_free_noise(self) -> None:
        """FreeNoise off, and split inference (:meth:`enable_free_noise_split_inference`) off too."""
        self._free_noise = None
        self.unet.set_free_noise(None)
        disable_split_inference(self.unet)

    def enable_free_noise_split_inference(self, spatial_split_size: int = 256, temporal_split_size: int = 16) -> None:
        """Lower peak memory: motion modules on at most ``spatial_split_size`` pixel sequences at a time, spatial
        attentions / ResNets / samplers on at most ``temporal_split_size`` frames; same output.  Calling it again
        replaces the sizes; ``disable_free_noise()`` turns it off."""
        for name, value in (("spatial_split_size", spatial_split_size), ("temporal_split_size", temporal_split_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        enable_split_inference(self.unet, spatial_split_size, temporal_split_size)

    @property
    def free_noise_enabled(self) -> bool:
        return getattr(self, "_free_noise", None) is not None

    # ---------------------------------------------------------------- engine hooks
    def _prepare_free_noise_prompts(self, call: SimpleNamespace) -> None:
        """Frame-keyed prompts out of the call before the family's prompt checks see it."""
        call.frame_prompts = None
        if not self.free_noise_enabled:
            return
        if call.prompt_embeds is not None or call.negative_prompt_embeds is not None:
            raise ValueError("prompt_embeds / negative_prompt_embeds are not supported with FreeNoise; pass prompt "
                             "(a str or a {frame: str} dict)")
        prompts = _as_frame_prompts(call.prompt, "prompt", call.num_frames)
        negatives = _as_frame_prompts(call.negative_prompt if call.negative_prompt is not None else "",
                                      "negative_prompt", call.num_frames)
        call.frame_prompts = (prompts, negatives)
        call.prompt, call.negative_prompt = prompts[0], None  # one video per prompt: batch of 1

    def _interpolated_embeds(self, keyed: dict[int, str], embeds: torch.Tensor, frames: int) -> torch.Tensor:
        out = embeds.new_zeros((frames, *embeds.shape[1:]))
        keys = list(keyed)
        for i in range(len(keys) - 1):
            out[keys[i]:keys[i + 1] + 1] = self._free_noise.interpolate(keys[i], keys[i + 1], embeds[i:i + 1],
                                                                        embeds[i + 1:i + 2])
        return out

    def _encode_free_noise(self, call: SimpleNamespace, negative: bool) -> Conditioning:
        """Per-frame prompt embeddings ``(videos * F, S, D)``, interpolated between the keyed prompts."""
        prompts, negatives = call.frame_prompts
        lora = self._lora_scale()
        pos, _ = self.encode_prompt(list(prompts.values()), call.device, 1, False, None, None, None, lora, call.clip_skip)
        rows = {"prompt_embeds": self._interpolated_embeds(prompts, pos, call.num_frames)}
        neg_rows = None
        if negative:
            _, neg = self.encode_prompt([""] * len(negatives), call.device, 1, True, list(negatives.values()), None,
                                        None, lora, call.clip_skip)
            neg_rows = {"prompt_embeds": self._interpolated_embeds(negatives, neg, call.num_frames)}
        repeat = call.num_videos_per_prompt
        if repeat > 1:
            rows = {k: v.repeat(repeat, 1, 1) for k, v in rows.items()}
            neg_rows = {k: v.repeat(repeat, 1, 1) for k, v in neg_rows.items()} if neg_rows else None
        return Conditioning(rows, neg_rows)
