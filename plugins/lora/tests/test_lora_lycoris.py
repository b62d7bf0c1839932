"""LyCORIS LoHa and LoKr files (kohya names) on SD 1.x and SDXL, UNet and text encoders.  Diffusers reads neither
for these pipelines, so the oracle is the base pipeline with weights merged here, independently of the plugin:
``W + alpha / rank * dW`` with ``dW`` rebuilt from the factors by plain products written out in this file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import lora_fixtures as lf  # noqa: E402
from lora_fixtures import single_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("single_thread")

UNET_LINEAR = ("attn1.to_q", "attn1.to_v", "attn2.to_k", "attn2.to_out.0", "ff.net.2")
UNET_CONV = ("resnets.0.conv1",)
TEXT = ("self_attn.q_proj", "self_attn.out_proj", "mlp.fc1")


def _randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def _halves(n: int) -> tuple[int, int]:
    """``n = a * b`` with ``a`` the largest divisor up to sqrt(n) (any split works for a LoKr file)."""
    a = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return a, n // a


def _factors(kind: str, module: torch.nn.Module, g, rank: int = 2, cp: bool = False) -> dict[str, torch.Tensor]:
    """Random LyCORIS factors for ``module`` (sized so the change is visible)."""
    out, inn = module.weight.shape[:2]
    kernel = tuple(module.weight.shape[2:])
    if kind == "loha":
        if cp:
            return {"hada_t1": _randn(g, rank, rank, *kernel, scale=0.5), "hada_w1_a": _randn(g, rank, out, scale=0.5),
                    "hada_w1_b": _randn(g, rank, inn, scale=0.5), "hada_t2": _randn(g, rank, rank, *kernel, scale=0.5),
                    "hada_w2_a": _randn(g, rank, out, scale=0.5), "hada_w2_b": _randn(g, rank, inn, scale=0.5)}
        flat = inn * int(np.prod(kernel)) if kernel else inn
        return {"hada_w1_a": _randn(g, out, rank, scale=0.5), "hada_w1_b": _randn(g, rank, flat, scale=0.5),
                "hada_w2_a": _randn(g, out, rank, scale=0.5), "hada_w2_b": _randn(g, rank, flat, scale=0.5)}
    (a, b), (c, d) = _halves(out), _halves(inn)
    if kernel and cp:
        return {"lokr_w1": _randn(g, a, c, scale=0.3), "lokr_t2": _randn(g, rank, rank, *kernel, scale=0.5),
                "lokr_w2_a": _randn(g, rank, b, scale=0.5), "lokr_w2_b": _randn(g, rank, d, scale=0.5)}
    if kernel:
        return {"lokr_w1": _randn(g, a, c, scale=0.3), "lokr_w2": _randn(g, b, d, *kernel, scale=0.1)}
    return {"lokr_w1_a": _randn(g, a, rank, scale=0.5), "lokr_w1_b": _randn(g, rank, c, scale=0.5),
            "lokr_w2_a": _randn(g, b, rank, scale=0.5), "lokr_w2_b": _randn(g, rank, d, scale=0.3)}


def _cp_rebuild(t, wa, wb):
    """``W[p, q, k, l] = sum_ij t[i, j, k, l] wa[i, p] wb[j, q]``, as batched matrix products."""
    return (wa.T @ t.permute(2, 3, 0, 1) @ wb).permute(2, 3, 0, 1)


def _kron(x, y):
    """Kronecker product written out: block (i, j) is ``x[i, j] * y``."""
    rows = [torch.cat([x[i, j] * y for j in range(x.shape[1])], dim=1) for i in range(x.shape[0])]
    return torch.cat(rows, dim=0)


def reference_delta(parts: dict[str, torch.Tensor], alpha: float, shape) -> torch.Tensor:
    """``alpha / rank * dW`` reshaped to the layer (LyCORIS' definition; no code shared with the plugin)."""
    if "hada_w1_a" in parts:
        rank = parts["hada_w1_b"].shape[0]
        if "hada_t1" in parts:
            dw = _cp_rebuild(parts["hada_t1"], parts["hada_w1_a"], parts["hada_w1_b"]) * _cp_rebuild(
                parts["hada_t2"], parts["hada_w2_a"], parts["hada_w2_b"])
        else:
            dw = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"])
        return (alpha / rank * dw).reshape(shape)
    w1 = parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_a"] @ parts["lokr_w1_b"]
    if "lokr_t2" in parts:
        w2 = _cp_rebuild(parts["lokr_t2"], parts["lokr_w2_a"], parts["lokr_w2_b"])
    else:
        w2 = parts["lokr_w2"] if "lokr_w2" in parts else parts["lokr_w2_a"] @ parts["lokr_w2_b"]
    decomposed = [k for k in ("lokr_w1_b", "lokr_w2_b") if k in parts]
    scale = alpha / parts[decomposed[0]].shape[0] if decomposed else 1.0
    if w2.ndim == 4:  # each (out, in) entry of w1 scales a whole kernel block
        blocks = [_kron(w1, w2[:, :, k, l]) for k in range(w2.shape[2]) for l in range(w2.shape[3])]
        dw = torch.stack(blocks, -1).reshape(*blocks[0].shape, w2.shape[2], w2.shape[3])
    else:
        dw = _kron(w1, w2)
    return (scale * dw).reshape(shape)


def lycoris_file(kind: str, components: dict, seed: int = 0, alpha: float = 1.5, cp: bool = False):
    """``(state dict in kohya names, {component: {module path: (parts, alpha)}})`` for ``components``:
    ``{kohya prefix: (component name, model, layer suffixes, name of a path or None)}``."""
    g = torch.Generator().manual_seed(seed)
    state, layers = {}, {}
    for prefix, (component, model, suffixes, rename) in components.items():
        for path, module in model.named_modules():
            if not path.endswith(suffixes) or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            parts = _factors(kind, module, g, cp=cp and isinstance(module, torch.nn.Conv2d))
            name = (rename(path) if rename else path).replace(".", "_")
            state.update({f"{prefix}{name}.{k}": v for k, v in parts.items()})
            state[f"{prefix}{name}.alpha"] = torch.tensor(alpha)
            layers.setdefault(component, {})[path] = (parts, alpha)
    return state, layers


def merged(pipe, layers: dict, weight: float = 1.0):
    """``pipe`` with every layer's weight changed by ``weight * reference_delta`` (in place)."""
    with torch.no_grad():
        for component, per_layer in layers.items():
            model = getattr(pipe, component)
            for path, (parts, alpha) in per_layer.items():
                w = model.get_submodule(path).weight
                w += weight * reference_delta(parts, alpha, w.shape)
    return pipe


@pytest.mark.parametrize("kind,cp", [("loha", False), ("loha", True), ("lokr", False), ("lokr", True)],
                         ids=["loha", "loha-cp", "lokr", "lokr-cp"])
def test_sd_lycoris_equals_the_merged_reference(kind, cp):
    _, o = lf.pipelines()
    _, reference = lf.pipelines()
    base = lf.images(o)
    state, layers = lycoris_file(kind, {"lora_unet_": ("unet", o.unet, UNET_LINEAR + UNET_CONV, None),
                                        "lora_te_": ("text_encoder", o.text_encoder, TEXT, None)}, cp=cp)
    o.load_lora_weights(state, adapter_name="ly")
    ours = lf.images(o)
    assert np.abs(ours - base).max() > 0.05, "the LyCORIS file should change the picture"
    lf.assert_close(ours, lf.images(merged(reference, layers)), atol=1e-4)
    if cp:
        return
    # adapter weight, fusing and unloading work as for LoRA
    o.set_adapters("ly", adapter_weights=0.5)
    _, half = lf.pipelines()
    lf.assert_close(lf.images(o), lf.images(merged(half, layers, 0.5)), atol=1e-4)
    o.set_adapters("ly")
    o.fuse_lora()
    lf.assert_close(lf.images(o), ours, atol=1e-4)
    o.unfuse_lora()
    lf.assert_close(lf.images(o), ours, atol=1e-4)
    o.unload_lora_weights()  # (unfusing gave the base weights back to float rounding)
    lf.assert_close(lf.images(o), base, atol=1e-5)


def test_sdxl_lokr_in_original_block_names_and_both_text_encoders():
    from kernel_lora.names import _blocks_sgm, sgm_name

    _, o = lf.pipelines(xl=True)
    _, reference = lf.pipelines(xl=True)
    blocks = _blocks_sgm(o.unet)
    state, layers = lycoris_file("lokr", {
        "lora_unet_": ("unet", o.unet, UNET_LINEAR + UNET_CONV, lambda p: sgm_name(p, blocks) or p),
        "lora_te1_": ("text_encoder", o.text_encoder, TEXT, None),
        "lora_te2_": ("text_encoder_2", o.text_encoder_2, TEXT, None)}, seed=3)
    assert any(k.startswith("lora_unet_input_blocks_") for k in state)
    o.load_lora_weights(state)
    assert set(o.get_list_adapters()) == {"unet", "text_encoder", "text_encoder_2"}
    lf.assert_close(lf.images(o), lf.images(merged(reference, layers)), atol=1e-4)


def test_bad_lycoris_files_are_refused():
    _, o = lf.pipelines()
    base = lf.images(o)
    state, _ = lycoris_file("loha", {"lora_unet_": ("unet", o.unet, UNET_LINEAR, None)})
    incomplete = {k: v for k, v in state.items() if not k.endswith("hada_w2_b")}
    with pytest.raises(ValueError, match="a LoHa layer needs"):
        o.load_lora_weights(incomplete)
    wrong = dict(state)
    key = next(k for k in wrong if k.endswith("hada_w1_b"))
    wrong[key] = torch.randn(2, 7)
    with pytest.raises(ValueError, match="do not multiply|weight change of shape"):
        o.load_lora_weights(wrong)
    lokr, _ = lycoris_file("lokr", {"lora_unet_": ("unet", o.unet, ("attn2.to_q",), None)})
    with pytest.raises(ValueError, match="mixes layers of kinds"):
        o.load_lora_weights({**state, **lokr})
    assert not o.get_list_adapters()
    o.load_lora_weights(state, adapter_name="ly")
    with pytest.raises(ValueError, match="hot-swapping takes LoRA only"):
        o.load_lora_weights(state, adapter_name="ly", hotswap=True)
    o.delete_adapters("ly")
    np.testing.assert_array_equal(lf.images(o), base)
