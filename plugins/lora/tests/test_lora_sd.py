"""LoRA on Stable Diffusion 1.x pipelines against Diffusers (the oracle), in every supported layout."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import lora_fixtures as lf  # noqa: E402
from lora_fixtures import single_thread  # noqa: E402,F401

diffusers = lf.diffusers
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def weights():
    """Two seeded LoRAs (UNet + text encoder) in the peft layout, sized for the tiny SD models."""
    d, _ = lf.pipelines()
    return {
        "a": (lf.random_lora(d.unet, seed=0), lf.random_lora(d.text_encoder, lf.TEXT_TARGETS, seed=1)),
        "b": (lf.random_lora(d.unet, lf.UNET_TARGETS[:4], rank=2, seed=2), lf.random_lora(d.text_encoder, lf.TEXT_TARGETS[:2], seed=3)),
    }


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    """Each LoRA written by Diffusers' save_lora_weights: {name: folder}."""
    out = {}
    for name, (unet, te) in weights.items():
        folder = tmp_path_factory.mktemp(f"lora-{name}")
        diffusers.StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=unet, text_encoder_lora_layers=te)
        out[name] = folder
    return out


def test_unet_lora_matches_diffusers(weights):
    d, o = lf.pipelines()
    base = lf.images(o)
    layers = lf.prefixed("unet", weights["a"][0])
    d.load_lora_weights(layers)
    o.load_lora_weights(layers)
    ours = lf.images(o)
    assert np.abs(ours - base).max() > 0.05, "the LoRA should change the image"
    lf.assert_close(ours, lf.images(d))


@pytest.mark.parametrize("scale", [None, 0.5, 1.7])
def test_unet_and_text_encoder_lora_with_call_scale(files, scale):
    d, o = lf.pipelines()
    d.load_lora_weights(files["a"], adapter_name="a")
    o.load_lora_weights(files["a"], adapter_name="a")
    call = {} if scale is None else {"cross_attention_kwargs": {"scale": scale}}
    ours = lf.images(o, **call)
    lf.assert_close(ours, lf.images(d, **call))
    if scale is not None:
        assert np.abs(ours - lf.images(o)).max() > 1e-2, "the call scale should change the image"
        lf.assert_close(lf.images(o), lf.images(d))  # scaling is undone after the call


def test_text_encoder_lora_only(weights):
    d, o = lf.pipelines()
    base = lf.images(o)
    layers = lf.prefixed("text_encoder", weights["a"][1])
    d.load_lora_weights(layers)
    o.load_lora_weights(layers)
    assert o.get_list_adapters() == {"text_encoder": ["default_0"]}
    ours = lf.images(o)
    assert np.abs(ours - base).max() > 0.05
    lf.assert_close(ours, lf.images(d))


def test_encode_prompt_lora_scale_matches_diffusers(files):
    d, o = lf.pipelines()
    d.load_lora_weights(files["a"])
    o.load_lora_weights(files["a"])
    args = ("a cat", "cpu", 1, True, "blurry")
    plain = o.encode_prompt(*args)[0]
    for scale in (0.5, 0.0):
        ours = o.encode_prompt(*args, lora_scale=scale)[0]
        assert (ours - plain).abs().max() > 1e-3
        if scale:  # Diffusers resets set_adapters weights after scale 0; compare where it does not
            torch.testing.assert_close(ours, d.encode_prompt(*args, lora_scale=scale)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(o.encode_prompt(*args)[0], plain, atol=0, rtol=0)  # restored exactly


def test_two_adapters_mixed_with_set_adapters(files):
    d, o = lf.pipelines()
    for name in ("a", "b"):
        d.load_lora_weights(files[name], adapter_name=name)
        o.load_lora_weights(files[name], adapter_name=name)
    assert o.get_active_adapters() == d.get_active_adapters() == ["b"]
    assert o.get_list_adapters() == d.get_list_adapters() == {"unet": ["a", "b"], "text_encoder": ["a", "b"]}
    lf.assert_close(lf.images(o), lf.images(d))
    for weights in ([0.7, 0.4], [0.8, {"unet": 0.3, "text_encoder": 1.2}], 0.5):
        d.set_adapters(["a", "b"], adapter_weights=weights)
        o.set_adapters(["a", "b"], adapter_weights=weights)
        assert o.get_active_adapters() == ["a", "b"]
        lf.assert_close(lf.images(o, cross_attention_kwargs={"scale": 0.9}), lf.images(d, cross_attention_kwargs={"scale": 0.9}))
    o.set_adapters("a")
    d.set_adapters("a")
    lf.assert_close(lf.images(o), lf.images(d))


def test_fuse_matches_unfused_and_diffusers(files):
    d, o = lf.pipelines()
    d.load_lora_weights(files["a"])
    o.load_lora_weights(files["a"])
    unfused = lf.images(o)
    scaled = lf.images(o, cross_attention_kwargs={"scale": 0.6})
    o.fuse_lora(lora_scale=0.6)
    d.fuse_lora(lora_scale=0.6)
    assert o.num_fused_loras == 1 and o.fused_loras == {"default_0"}
    fused = lf.images(o)
    lf.assert_close(fused, scaled, atol=1e-4)
    lf.assert_close(fused, lf.images(d))
    o.unfuse_lora()
    assert o.num_fused_loras == 0
    lf.assert_close(lf.images(o), unfused, atol=1e-4)


def test_fuse_components_and_unload_keeps_fused(files):
    _, o = lf.pipelines()
    o.load_lora_weights(files["a"])
    lora = lf.images(o)
    o.fuse_lora(components=["unet", "text_encoder"])
    o.unload_lora_weights()  # Diffusers' recipe: fuse, then drop the LoRA layers
    assert lf.tuner_count(o) == 0
    lf.assert_close(lf.images(o), lora, atol=1e-4)
    with pytest.raises(ValueError, match="components"):
        o.fuse_lora(components=["vae"])


def test_unload_restores_the_exact_base_model(files):
    _, o = lf.pipelines()
    state = {k: v.clone() for k, v in o.unet.state_dict().items()}
    te_state = {k: v.clone() for k, v in o.text_encoder.state_dict().items()}
    grads = [p.requires_grad for p in o.unet.parameters()]
    base = lf.images(o)
    o.load_lora_weights(files["a"], adapter_name="a")
    o.load_lora_weights(files["b"], adapter_name="b")
    assert [p.requires_grad for n, p in o.unet.named_parameters() if "lora_" not in n] == grads
    o.unload_lora_weights()
    assert lf.tuner_count(o) == 0 and o.get_list_adapters() == {}
    after = o.unet.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    assert all(torch.equal(o.text_encoder.state_dict()[k], v) for k, v in te_state.items())
    assert not hasattr(o.unet, "peft_config")
    np.testing.assert_array_equal(lf.images(o), base)
    np.testing.assert_array_equal(lf.images(o, cross_attention_kwargs={"scale": 0.5}), base)


def test_disable_enable_and_delete_match_diffusers(files):
    d, o = lf.pipelines()
    base = lf.images(o)
    for name in ("a", "b"):
        d.load_lora_weights(files[name], adapter_name=name)
        o.load_lora_weights(files[name], adapter_name=name)
    d.set_adapters(["a", "b"], [0.5, 0.5])
    o.set_adapters(["a", "b"], [0.5, 0.5])
    mixed = lf.images(o)
    o.disable_lora()
    np.testing.assert_array_equal(lf.images(o), base)
    o.enable_lora()
    np.testing.assert_array_equal(lf.images(o), mixed)
    # UNet weights by layer-name part: all parts at 0 and the text encoder at 0 is the base model
    off = {"unet": {"down_blocks": 0.0, "mid_block": 0, "up_blocks": 0.0}, "text_encoder": 0.0}
    o.set_adapters(["a", "b"], [off, off])
    lf.assert_close(lf.images(o), base, atol=1e-6)
    o.set_adapters(["a", "b"], [0.5, 0.5])
    o.delete_adapters("b")
    d.delete_adapters("b")
    assert o.get_list_adapters() == d.get_list_adapters() == {"unet": ["a"], "text_encoder": ["a"]}
    assert o.get_active_adapters() == d.get_active_adapters() == ["a"]
    lf.assert_close(lf.images(o), lf.images(d))
    o.delete_adapters(["a"])
    assert lf.tuner_count(o) == 0
    np.testing.assert_array_equal(lf.images(o), base)


def test_kohya_alpha_scaling_matches_diffusers(weights):
    """kohya-ss files: ``lora_unet_*`` / ``lora_te_*`` names, per-layer ``alpha`` (scale alpha / rank)."""
    unet, te = weights["a"]
    layers = [k[: -len(".lora_A.weight")] for k in unet if k.endswith("lora_A.weight")]
    te_alphas = {k[: -len(".lora_A.weight")]: 1.0 for k in te if k.endswith("lora_A.weight")}
    te_kohya = lf.to_kohya(te, "lora_te_", te_alphas, rename=lambda m: f"text_model.{m}")
    d, o = lf.pipelines()
    kohya = {**lf.to_kohya(unet, "lora_unet_", dict.fromkeys(layers, 2.0)), **te_kohya}
    d.load_lora_weights(dict(kohya))
    o.load_lora_weights(dict(kohya))
    lf.assert_close(lf.images(o), lf.images(d))

    # alphas that differ per layer (Diffusers 0.42 drops them on attention layers of kohya files, so the
    # reference is the peft layout with each up factor scaled by alpha / rank)
    alphas = {m: (2.0 if i % 3 else 7.0) for i, m in enumerate(layers)}
    _, o = lf.pipelines()
    o.load_lora_weights({**lf.to_kohya(unet, "lora_unet_", alphas), **te_kohya})
    _, ref = lf.pipelines()
    scaled = {k: (v * alphas[k[: -len(".lora_B.weight")]] / 4 if k.endswith("lora_B.weight") else v) for k, v in unet.items()}
    scaled_te = {k: (v / 4 if k.endswith("lora_B.weight") else v) for k, v in te.items()}
    ref.load_lora_weights({**lf.prefixed("unet", scaled), **lf.prefixed("text_encoder", scaled_te)})
    lf.assert_close(lf.images(o), lf.images(ref), atol=1e-5)


def _diffusers_layout(unet, te):
    out = {f"unet.{k.replace('.lora_A.', '.lora.down.').replace('.lora_B.', '.lora.up.')}": v for k, v in unet.items()}
    out.update({f"text_encoder.{k.replace('.lora_A.', '.lora_linear_layer.down.').replace('.lora_B.', '.lora_linear_layer.up.')}": v
                for k, v in te.items()})
    return out


def _attn_procs_layout(unet, te):
    """Diffusers' older attention-processor files: UNet keys without prefix, ``processor.to_q_lora.down``."""
    out = {}
    names = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "to_out", "q_proj": "to_q",
             "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}
    for prefix, layers in (("", unet), ("text_encoder.text_model.", te)):
        for key, value in layers.items():
            module, part = key.rsplit(".lora_", 1)
            stem, proj = (module.rsplit(".", 2)[0], "to_out.0") if module.endswith("to_out.0") else module.rsplit(".", 1)
            if proj not in names:
                continue
            middle = ".processor" if prefix == "" else ""
            out[f"{prefix}{stem}{middle}.{names[proj]}_lora.{'down' if part.startswith('A') else 'up'}.weight"] = value
    return out


@pytest.mark.parametrize("layout", ["diffusers", "attn-procs"])
def test_older_layouts_equal_the_peft_layout(weights, layout):
    unet, te = weights["a"]
    if layout == "attn-procs":  # that format only held the attention projections
        unet = {k: v for k, v in unet.items() if any(f".{p}.lora_" in k for p in ("to_q", "to_k", "to_v", "to_out.0"))}
        te = {k: v for k, v in te.items() if any(f".{p}.lora_" in k for p in ("q_proj", "k_proj", "v_proj", "out_proj"))}
        converted = _attn_procs_layout(unet, te)
    else:
        converted = _diffusers_layout(unet, te)
    _, o = lf.pipelines()
    _, ref = lf.pipelines()
    o.load_lora_weights(converted)
    ref.load_lora_weights({**lf.prefixed("unet", unet), **lf.prefixed("text_encoder", te)})
    assert lf.tuner_count(o) == lf.tuner_count(ref) > 0
    np.testing.assert_array_equal(lf.images(o), lf.images(ref))


def test_save_lora_weights_round_trips_with_diffusers(files, tmp_path):
    from peft.utils import get_peft_model_state_dict

    d, o = lf.pipelines()
    o.load_lora_weights(files["a"], adapter_name="a")
    o.load_lora_weights(files["b"], adapter_name="b")
    o.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(o.unet, adapter_name="b"),
                        text_encoder_lora_layers=get_peft_model_state_dict(o.text_encoder, adapter_name="b"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytorch_lora_weights.safetensors"]  # no temporary left
    d.load_lora_weights(tmp_path)
    lf.assert_close(lf.images(o), lf.images(d))

    # metadata (lora_alpha != rank) written here is read by Diffusers, and the other way round
    meta = {"r": 4, "lora_alpha": 8, "target_modules": ["to_q"]}
    unet = get_peft_model_state_dict(o.unet, adapter_name="a")
    o.save_lora_weights(tmp_path / "meta", unet_lora_layers=unet, unet_lora_adapter_metadata=meta)
    diffusers.StableDiffusionPipeline.save_lora_weights(tmp_path / "theirs", unet_lora_layers=unet,
                                                        unet_lora_adapter_metadata=meta)
    d2, o2 = lf.pipelines()
    d2.load_lora_weights(tmp_path / "meta")
    o2.load_lora_weights(tmp_path / "theirs")
    ours = lf.images(o2)
    lf.assert_close(ours, lf.images(d2))
    _, plain = lf.pipelines()
    plain.load_lora_weights(lf.prefixed("unet", unet))
    assert np.abs(ours - lf.images(plain)).max() > 1e-2, "alpha 8 / rank 4 doubles the LoRA"


def test_load_from_file_and_hub_cache_offline(files, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    file = files["a"] / "pytorch_lora_weights.safetensors"
    _, ref = lf.pipelines()
    ref.load_lora_weights(file)
    expected = lf.images(ref)

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-lora"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "my_lora.safetensors").write_bytes(file.read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for weight_name in ("my_lora.safetensors", None):
        _, o = lf.pipelines()
        o.load_lora_weights("someone/tiny-lora", weight_name=weight_name, cache_dir=str(tmp_path / "hub"))
        np.testing.assert_array_equal(lf.images(o), expected)
    _, o = lf.pipelines()
    with pytest.raises(FileNotFoundError):
        o.load_lora_weights("someone/absent-lora", weight_name="x.safetensors", cache_dir=str(tmp_path / "hub"))
