"""Denoiser and autoencoder contracts (:class:`kernel.protocols.Denoiser`, ``Autoencoder``).

The plugin supplies a tiny instance (``component`` = a factory) and example inputs through the
``inputs`` option / ``contract_inputs(model, batch_size, generator)`` hook returning the keyword
arguments of ``forward`` (denoisers: ``sample``, ``timestep``, ``encoder_hidden_states`` ...;
autoencoders: ``{"x": images}``).  Examples draw the batch size and the seed.

Declarations: ``channel_dim`` (denoisers whose channels are not at dim 1, e.g. frames-first video
``(B, F, C, H, W)``: 2), ``atol`` (batch independence, default 1e-4; slicing and the latent normalisation
round trip, default 1e-5), ``dtypes`` (default
``(torch.float32, torch.bfloat16)``), ``tiling_atol`` (default 1e-4), ``compile`` (run the
``torch.compile(fullgraph=True)`` contract; on in the ``thorough`` profile or with
``--contracts-compile``).

Video autoencoders take ``{"x": videos}`` of shape ``(B, C, F, H, W)``.  Their time axis is compressed by
``temporal_compression_ratio`` ``t`` (the model's attribute, else its config value, else the
``temporal_compression_ratio`` option).  The default frame rule is the causal one: ``F`` frames give
``1 + (F - 1) // t`` latent frames and ``f`` latent frames decode to ``1 + (f - 1) * t`` frames.  Other
rules are declared with the options ``latent_frames(F, t)`` and ``decoded_frames(f, t)``.  Images (4-D
inputs) and other layouts are checked exactly as before.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import torch
from hypothesis import strategies as st

from kernel_contracts.engine import NotApplicable, Subject, contract


#: Model contracts run whole forward passes: a third of the profile's examples each.
MODEL_BUDGET = 0.34


def model_examples(subject: Subject, opts: dict):
    return st.fixed_dictionaries({"batch_size": st.integers(1, 3), "seed": st.integers(0, 2**16)})


def model_of(subject: Subject) -> Any:
    model = subject.instance()
    if hasattr(model, "eval"):
        model.eval()
    return model


def inputs_for(subject: Subject, opts: dict, model: Any, ex: dict) -> dict:
    hook = opts.get("contract_inputs") or opts.get("inputs")
    if hook is None:
        raise NotApplicable("the plugin declares no example inputs (contract_inputs / inputs=)")
    return hook(model, ex["batch_size"], torch.Generator().manual_seed(ex["seed"]))


def first_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample") and out.sample is not None:
        return out.sample
    return out[0]


def forward(model: Any, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return first_output(model(**inputs))


def _split(inputs: dict, batch: int, i: int) -> dict:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == batch:
            out[k] = v[i : i + 1]
        elif isinstance(v, dict):
            out[k] = _split(v, batch, i)
        else:
            out[k] = v
    return out


def _cast(inputs: dict, dtype: torch.dtype) -> dict:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and k not in ("timestep", "timesteps"):
            out[k] = v.to(dtype)
        elif isinstance(v, dict):
            out[k] = _cast(v, dtype)
        else:
            out[k] = v
    return out


def _sample_of(inputs: dict) -> torch.Tensor:
    for key in ("sample", "hidden_states", "x"):
        if key in inputs:
            return inputs[key]
    return next(v for v in inputs.values() if isinstance(v, torch.Tensor))


# --------------------------------------------------------------------------- denoiser
@contract("denoiser", "output_shape", examples=model_examples, budget=MODEL_BUDGET)
def output_shape(subject: Subject, ex: dict, opts: dict) -> None:
    """Output is ``(B, out_channels, *S)`` for ``(B, in_channels, *S)`` (channels-last ``(B, N, C)`` for packed tokens).

    Frames-first video denoisers (``(B, F, C, H, W)``) declare the channel axis: ``channel_dim=2``."""
    model = model_of(subject)
    inputs = inputs_for(subject, opts, model, ex)
    x, y = _sample_of(inputs), forward(model, inputs)
    cfg = model.config
    out_ch = cfg.get("out_channels") or cfg.get("in_channels")
    packed = x.ndim == 3 and x.shape[-1] == cfg.get("in_channels")
    dim = opts.get("channel_dim")
    if dim is not None:
        assert x.shape[dim] == cfg.get("in_channels"), (
            f"input {tuple(x.shape)} has {x.shape[dim]} channels at the declared channel_dim={dim}; "
            f"in_channels={cfg.get('in_channels')}"
        )
        expected = (*x.shape[:dim], out_ch, *x.shape[dim + 1:])
    elif packed:
        expected = (x.shape[0], *x.shape[1:-1], out_ch)
    else:
        expected = (x.shape[0], out_ch, *x.shape[2:])
    assert tuple(y.shape) == tuple(expected), f"output shape {tuple(y.shape)}; expected {tuple(expected)} for input {tuple(x.shape)}"


@contract("denoiser", "batch_independence", examples=model_examples, budget=MODEL_BUDGET)
def batch_independence(subject: Subject, ex: dict, opts: dict) -> None:
    """Running a batch equals running its items one at a time."""
    model = model_of(subject)
    ex = {**ex, "batch_size": max(2, ex["batch_size"])}
    inputs = inputs_for(subject, opts, model, ex)
    batch = _sample_of(inputs).shape[0]
    whole = forward(model, inputs)
    parts = torch.cat([forward(model, _split(inputs, batch, i)) for i in range(batch)])
    atol = float(opts.get("atol", 1e-4))
    diff = (whole - parts).abs().max().item()
    assert diff <= atol, f"batched and one-by-one outputs differ by {diff:.3g} (atol {atol})"


@contract("denoiser", "deterministic", examples=model_examples, budget=MODEL_BUDGET)
def deterministic(subject: Subject, ex: dict, opts: dict) -> None:
    """Two forward passes in eval mode give identical outputs."""
    model = model_of(subject)
    inputs = inputs_for(subject, opts, model, ex)
    a, b = forward(model, inputs), forward(model, inputs)
    assert torch.equal(a, b), f"two eval-mode passes differ by {(a - b).abs().max().item():.3g}"


@contract("denoiser", "dtype_follows_parameters", examples=model_examples, budget=MODEL_BUDGET)
def dtype_follows_parameters(subject: Subject, ex: dict, opts: dict) -> None:
    """The output dtype is the parameters' dtype (float32 and bfloat16)."""
    for dtype in opts.get("dtypes", (torch.float32, torch.bfloat16)):
        model = model_of(subject).to(dtype)
        inputs = _cast(inputs_for(subject, opts, model, ex), dtype)
        y = forward(model, inputs)
        assert y.dtype == dtype, f"model in {dtype} returned {y.dtype}"


@contract("denoiser", "save_load_round_trip", examples=model_examples, budget=MODEL_BUDGET)
def save_load_round_trip(subject: Subject, ex: dict, opts: dict) -> None:
    """``save_pretrained`` then ``from_pretrained`` gives identical outputs."""
    model = model_of(subject)
    inputs = inputs_for(subject, opts, model, ex)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        loaded = type(model).from_pretrained(d)
    loaded.eval()
    sa, sb = model.state_dict(), loaded.state_dict()
    assert set(sa) == set(sb), f"state-dict keys differ after save/load: {sorted(set(sa) ^ set(sb))[:5]}"
    changed = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    assert not changed, f"tensors differ after save/load: {changed[:5]}"
    # Identical weights; outputs may differ in the last bits when the loaded tensors live at other
    # memory alignments (vectorised CPU kernels then sum in another order).
    a, b = forward(model, inputs), forward(loaded, inputs)
    atol = float(opts.get("save_load_atol", 1e-5))
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"outputs differ after save/load by {diff:.3g} (atol {atol})"


@contract("denoiser", "gradients_reach_parameters", examples=model_examples, budget=MODEL_BUDGET)
def gradients_reach_parameters(subject: Subject, ex: dict, opts: dict) -> None:
    """A loss on the output gives every trainable parameter a gradient."""
    model = model_of(subject)
    inputs = inputs_for(subject, opts, model, ex)
    model.zero_grad(set_to_none=True)
    first_output(model(**inputs)).float().pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{len(missing)} trainable parameters get no gradient, e.g. {missing[:5]}"


def _compile_enabled(subject: Subject, opts: dict) -> str | None:
    return None if opts.get("compile") else "torch.compile contracts are off (--contracts-compile or the thorough profile)"


@contract("denoiser", "compile_fullgraph", examples=None, applies=_compile_enabled)
def compile_fullgraph(subject: Subject, ex: Any, opts: dict) -> None:
    """``torch.compile(fullgraph=True)`` compiles the forward without graph breaks and matches eager."""
    model = model_of(subject)
    inputs = inputs_for(subject, opts, model, {"batch_size": 2, "seed": 0})
    compiled = torch.compile(model, fullgraph=True)
    a, b = forward(model, inputs), forward(compiled, inputs)
    assert (a - b).abs().max().item() <= 1e-4, "compiled and eager outputs differ"


# --------------------------------------------------------------------------- autoencoder
def _latents(enc: Any) -> torch.Tensor:
    if isinstance(enc, torch.Tensor):
        return enc
    dist = getattr(enc, "latent_dist", None)
    if dist is not None:
        return dist.mode()
    if getattr(enc, "latents", None) is not None:
        return enc.latents
    return _latents(enc[0])


def _encode_decode(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        z = _latents(model.encode(x))
        return z, first_output(model.decode(z))


def _compression_ratio(model: Any) -> int:
    ratio = getattr(model, "spatial_compression_ratio", None)
    assert isinstance(ratio, int) and ratio >= 1, (
        f"spatial_compression_ratio is {ratio!r}; the Autoencoder protocol requires a positive int"
    )
    return ratio


def _temporal_ratio(model: Any, opts: dict) -> int:
    ratio = getattr(model, "temporal_compression_ratio", None)
    if ratio is None:
        ratio = (getattr(model, "config", None) or {}).get("temporal_compression_ratio")
    if ratio is None:
        ratio = opts.get("temporal_compression_ratio")
    assert ratio is not None, (
        "a 5-D (B, C, F, H, W) input needs a temporal_compression_ratio: give the model the attribute or the "
        "config value, or declare it in contract_options"
    )
    if isinstance(ratio, float) and ratio.is_integer():
        ratio = int(ratio)
    assert isinstance(ratio, int) and not isinstance(ratio, bool) and ratio >= 1, (
        f"temporal_compression_ratio is {ratio!r}; a video autoencoder requires a positive int"
    )
    return ratio


def causal_latent_frames(frames: int, ratio: int) -> int:
    """Causal video VAEs: the first frame alone, then one latent frame per ``ratio`` frames."""
    return 1 + (frames - 1) // ratio


def causal_decoded_frames(latent_frames: int, ratio: int) -> int:
    return 1 + (latent_frames - 1) * ratio


def _check_video_shapes(model: Any, x: torch.Tensor, opts: dict) -> None:
    ratio, t = _compression_ratio(model), _temporal_ratio(model, opts)
    to_latent = opts.get("latent_frames", causal_latent_frames)
    to_frames = opts.get("decoded_frames", causal_decoded_frames)
    clips = [x]
    if x.shape[2] > 1 and to_latent(1, t) >= 1:
        clips.append(x[:, :, :1])  # a single frame exercises the time rule's first term
    for clip in clips:
        z, y = _encode_decode(model, clip)
        b, _, f, h, w = clip.shape
        lf = to_latent(f, t)
        expected = (b, model.config["latent_channels"], lf, h // ratio, w // ratio)
        assert tuple(z.shape) == expected, (
            f"latents {tuple(z.shape)} for video {tuple(clip.shape)}; expected {expected} "
            f"(temporal_compression_ratio={t}: {lf} latent frames for {f}; spatial_compression_ratio={ratio})"
        )
        out = (b, clip.shape[1], to_frames(lf, t), h, w)
        assert tuple(y.shape) == out, (
            f"decode gave {tuple(y.shape)} for latents {tuple(z.shape)}; expected {out} "
            f"({out[2]} frames for {lf} latent frames at temporal_compression_ratio={t})"
        )


@contract("autoencoder", "encode_decode_shapes", examples=model_examples, budget=MODEL_BUDGET)
def encode_decode_shapes(subject: Subject, ex: dict, opts: dict) -> None:
    """``encode`` gives ``(B, latent_channels, *S / spatial_compression_ratio)``; ``decode`` inverts the shape.

    Videos ``(B, C, F, H, W)`` also compress time by ``temporal_compression_ratio`` (causal rule by default:
    ``1 + (F - 1) // t`` latent frames, ``1 + (f - 1) * t`` decoded frames), checked on the example and on its
    first frame alone."""
    model = model_of(subject)
    x = inputs_for(subject, opts, model, ex)["x"]
    if x.ndim == 5:
        _check_video_shapes(model, x, opts)
        return
    z, y = _encode_decode(model, x)
    ratio = _compression_ratio(model)
    expected = (x.shape[0], model.config["latent_channels"], *(s // ratio for s in x.shape[2:]))
    assert tuple(z.shape) == expected, (
        f"latents {tuple(z.shape)} for input {tuple(x.shape)}; expected {expected} "
        f"(spatial_compression_ratio={ratio})"
    )
    assert y.shape == x.shape, f"decode gave {tuple(y.shape)} for input {tuple(x.shape)}"


@contract("autoencoder", "latent_normalization_round_trip", examples=model_examples, budget=MODEL_BUDGET)
def latent_normalization_round_trip(subject: Subject, ex: dict, opts: dict) -> None:
    """``denormalize_latents(normalize_latents(z))`` is ``z`` (float tolerance), shape kept, for encoder latents ``z``."""
    model = model_of(subject)
    for member in ("normalize_latents", "denormalize_latents"):
        assert callable(getattr(model, member, None)), f"no {member}(): the Autoencoder protocol requires it"
    z, _ = _encode_decode(model, inputs_for(subject, opts, model, ex)["x"])
    with torch.no_grad():
        normed = model.normalize_latents(z)
        back = model.denormalize_latents(normed)
    assert normed.shape == z.shape and back.shape == z.shape, (
        f"normalize/denormalize changed the shape {tuple(z.shape)} -> {tuple(normed.shape)} -> {tuple(back.shape)}"
    )
    atol = float(opts.get("atol", 1e-5)) * max(1.0, z.abs().max().item())
    err = (back - z).abs().max().item()
    assert err <= atol, f"denormalize_latents(normalize_latents(z)) differs from z by {err:.3g} (atol {atol:.3g})"


def _switch(subject: Subject, opts: dict, ex: dict, switch: str, atol: float) -> None:
    model = model_of(subject)
    if not hasattr(model, switch):
        raise NotApplicable(f"no {switch}()")
    x = inputs_for(subject, opts, model, ex)["x"]
    z1, y1 = _encode_decode(model, x)
    getattr(model, switch)()
    z2, y2 = _encode_decode(model, x)
    diff = max((z1 - z2).abs().max().item(), (y1 - y2).abs().max().item())
    assert diff <= atol, f"{switch}() changes the results by {diff:.3g} (atol {atol})"


@contract("autoencoder", "slicing_identical", examples=model_examples, budget=MODEL_BUDGET)
def slicing_identical(subject: Subject, ex: dict, opts: dict) -> None:
    """``enable_slicing()`` gives the same latents and images."""
    _switch(subject, opts, {**ex, "batch_size": max(2, ex["batch_size"])}, "enable_slicing", float(opts.get("atol", 1e-5)))


@contract("autoencoder", "tiling_within_tolerance", examples=model_examples, budget=MODEL_BUDGET)
def tiling_within_tolerance(subject: Subject, ex: dict, opts: dict) -> None:
    """``enable_tiling()`` matches within the plugin's ``tiling_atol``."""
    _switch(subject, opts, ex, "enable_tiling", float(opts.get("tiling_atol", 1e-4)))


@contract("autoencoder", "deterministic", examples=model_examples, budget=MODEL_BUDGET)
def autoencoder_deterministic(subject: Subject, ex: dict, opts: dict) -> None:
    """Encoding (distribution mode) and decoding twice gives identical tensors."""
    model = model_of(subject)
    x = inputs_for(subject, opts, model, ex)["x"]
    (z1, y1), (z2, y2) = _encode_decode(model, x), _encode_decode(model, x)
    assert torch.equal(z1, z2) and torch.equal(y1, y2), "two passes differ"


def clone_model(model: Any) -> Any:
    return copy.deepcopy(model)
