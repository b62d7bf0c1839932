"""LoRA on Flux pipelines against Diffusers (the oracle): Diffusers/peft files, kohya-ss and XLabs files in the
original (Black Forest Labs) layer names, mixing, fusing, saving."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import transformer_fixtures as tf  # noqa: E402
from transformer_fixtures import single_thread  # noqa: E402,F401

diffusers = tf.diffusers
pytestmark = pytest.mark.usefixtures("single_thread")

# The original model's layers and ours, written out by hand for this test (fused projections list their parts
# in output order).  Black Forest Labs' reference: src/flux/model.py, src/flux/modules/layers.py.
DOUBLE = {"img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn_proj": ("attn.to_out.0",),
          "img_mlp_0": ("ff.net.0.proj",), "img_mlp_2": ("ff.net.2",), "img_mod_lin": ("norm1.linear",),
          "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
          "txt_attn_proj": ("attn.to_add_out",), "txt_mlp_0": ("ff_context.net.0.proj",),
          "txt_mlp_2": ("ff_context.net.2",), "txt_mod_lin": ("norm1_context.linear",)}
SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",),
          "modulation_lin": ("norm.linear",)}
TOP = {"img_in": "x_embedder", "txt_in": "context_embedder", "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
       "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
       "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1", "final_layer_linear": "proj_out"}


@pytest.fixture(scope="module")
def weights():
    d, _ = tf.flux_pipelines()
    return {"a": {"transformer": tf.random_lora(d.transformer, tf.FLUX_TARGETS, seed=0),
                  "text_encoder": tf.random_lora(d.text_encoder, tf.TEXT_TARGETS, seed=1)},
            "b": {"transformer": tf.random_lora(d.transformer, tf.FLUX_TARGETS[:6], rank=2, seed=2)}}


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    out = {}
    for name, parts in weights.items():
        folder = tmp_path_factory.mktemp(f"flux-lora-{name}")
        diffusers.FluxPipeline.save_lora_weights(folder, **{f"{c}_lora_layers": v for c, v in parts.items()})
        out[name] = folder
    return out


@pytest.mark.parametrize("scale", [None, 0.6])
def test_transformer_and_text_encoder_lora_with_call_scale(files, scale):
    d, o = tf.flux_pipelines()
    state = {k: v.clone() for k, v in o.transformer.state_dict().items()}
    base = tf.images(o, "flux")
    d.load_lora_weights(files["a"], adapter_name="a")
    o.load_lora_weights(files["a"], adapter_name="a")
    assert o.get_list_adapters() == d.get_list_adapters() == {"transformer": ["a"], "text_encoder": ["a"]}
    call = {} if scale is None else {"joint_attention_kwargs": {"scale": scale}}
    ours = tf.images(o, "flux", **call)
    assert tf.changed(ours, base)
    tf.assert_close(ours, tf.images(d, "flux", **call))
    if scale is not None:
        assert tf.changed(ours, tf.images(o, "flux"), 1e-2)
        prompt = dict(prompt="a cat", prompt_2=None, device="cpu", max_sequence_length=16)
        for ours_t, theirs_t in zip(o.encode_prompt(**prompt, lora_scale=scale), d.encode_prompt(**prompt, lora_scale=scale)):
            torch.testing.assert_close(ours_t, theirs_t, atol=1e-5, rtol=0)
    o.unload_lora_weights()
    after = o.transformer.state_dict()
    assert tf.tuner_count(o) == 0 and list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    np.testing.assert_array_equal(tf.images(o, "flux", **call), base)


def test_mix_and_fuse_the_transformer_only_by_default(files):
    d, o = tf.flux_pipelines()
    base = tf.images(o, "flux")
    for name in ("a", "b"):
        d.load_lora_weights(files[name], adapter_name=name)
        o.load_lora_weights(files[name], adapter_name=name)
    mix = [0.8, {"transformer": 1.4}]
    d.set_adapters(["a", "b"], mix)
    o.set_adapters(["a", "b"], mix)
    assert o.get_active_adapters() == d.get_active_adapters() == ["a", "b"]
    mixed = tf.images(o, "flux")
    tf.assert_close(mixed, tf.images(d, "flux"))
    o.fuse_lora(lora_scale=0.5)  # as in Diffusers: the transformer's LoRA at 0.5, the text encoder's unfused at 1
    d.fuse_lora(lora_scale=0.5)
    from kernel_lora import layers

    assert layers.merged_adapters(o.transformer) == {"a", "b"} and not layers.merged_adapters(o.text_encoder)
    fused = tf.images(o, "flux")
    tf.assert_close(fused, tf.images(d, "flux"))
    o.unfuse_lora()
    tf.assert_close(tf.images(o, "flux"), mixed, atol=1e-4)
    o.fuse_lora(components=["transformer", "text_encoder"])
    assert layers.merged_adapters(o.text_encoder) == {"a"}
    tf.assert_close(tf.images(o, "flux"), mixed, atol=1e-4)
    o.unload_lora_weights(reset_to_overwritten_params=True)  # the fused LoRA stays in the weights, as in Diffusers
    assert tf.tuner_count(o) == 0 and not o.transformer._forward_pre_hooks
    tf.assert_close(tf.images(o, "flux"), mixed, atol=1e-4)
    assert tf.changed(mixed, base)


# ---------------------------------------------------------------------------------------- original-name files
def _bfl_lora(model, rank=4, seed=0, strength=0.5, top=True):
    """A random kohya-ss Flux LoRA in the original names (fused qkv/linear1 dense: one down for all parts) and
    the reference conversion of it into the peft layout (alpha / rank folded into down, up rows split)."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    kohya, peft = {}, {}

    def add(name, parts, rows=None):
        first = modules[parts[0]]
        sizes = [modules[p].out_features for p in parts]
        down = torch.randn(rank, first.in_features, generator=g) / first.in_features ** 0.5
        up = torch.randn(sum(sizes), rank, generator=g) * strength / rank ** 0.5
        alpha = float(torch.randint(1, 9, (1,), generator=g))
        kohya.update({f"lora_unet_{name}.lora_down.weight": down, f"lora_unet_{name}.lora_up.weight": up,
                      f"lora_unet_{name}.alpha": torch.tensor(alpha)})
        ups = list(torch.split(up, sizes)) if rows is None else [rows(up)]
        for part, part_up in zip(parts, ups):
            peft[f"{part}.lora_A.weight"] = down * (alpha / rank)
            peft[f"{part}.lora_B.weight"] = part_up

    for i in range(len(model.transformer_blocks)):
        for name, parts in DOUBLE.items():
            add(f"double_blocks_{i}_{name}", [f"transformer_blocks.{i}.{p}" for p in parts])
    for i in range(len(model.single_transformer_blocks)):
        for name, parts in SINGLE.items():
            add(f"single_blocks_{i}_{name}", [f"single_transformer_blocks.{i}.{p}" for p in parts])
    if top:
        for name, path in TOP.items():
            add(name, [path])
        half = modules["norm_out.linear"].out_features // 2  # original (shift, scale) -> ours (scale, shift)
        add("final_layer_adaLN_modulation_1", ["norm_out.linear"], rows=lambda up: torch.cat([up[half:], up[:half]]))
    return kohya, peft


def _text_kohya(te_layers, alpha=2.0):
    """peft text-encoder LoRA as kohya ``lora_te1_`` keys, and its reference with alpha / rank folded in."""
    modules = {k[: -len(".lora_A.weight")] for k in te_layers if k.endswith(".lora_A.weight")}
    kohya = tf.lf.to_kohya(te_layers, "lora_te1_", dict.fromkeys(modules, alpha),
                           rename=lambda m: m if m.startswith("text_model.") else f"text_model.{m}")
    rank = next(v.shape[0] for k, v in te_layers.items() if k.endswith("lora_A.weight"))
    return kohya, {k: v * (alpha / rank) if k.endswith("lora_A.weight") else v for k, v in te_layers.items()}


def test_kohya_flux_in_original_names(weights):
    d, o = tf.flux_pipelines()
    kohya, peft = _bfl_lora(o.transformer, seed=7)
    te_kohya, te_peft = _text_kohya(weights["a"]["text_encoder"])
    base = tf.images(o, "flux")
    o.load_lora_weights({**kohya, **te_kohya}, adapter_name="k")
    assert o.get_list_adapters() == {"transformer": ["k"], "text_encoder": ["k"]}
    ours = tf.images(o, "flux")
    assert tf.changed(ours, base)
    _, ref = tf.flux_pipelines()
    ref.load_lora_weights({**tf.prefixed("transformer", peft), **tf.prefixed("text_encoder", te_peft)})
    assert tf.tuner_count(o) == tf.tuner_count(ref)
    tf.assert_close(ours, tf.images(ref, "flux"), atol=1e-4)
    tf.assert_close(tf.images(o, "flux", joint_attention_kwargs={"scale": 0.4}),
                    tf.images(ref, "flux", joint_attention_kwargs={"scale": 0.4}), atol=1e-4)

    # Diffusers 0.42 reads the blocks of a full-size Flux only (single blocks' linear1 has hard-coded widths), drops
    # the top-level layers and the text encoder's alphas; compare on the part it reads (text alpha = rank).
    read = {k: v for k, v in {**kohya, **_text_kohya(weights["a"]["text_encoder"], alpha=4.0)[0]}.items()
            if "double_blocks" in k or "lora_te1_" in k or "linear2" in k or "modulation_lin" in k}
    _, o2 = tf.flux_pipelines()
    d.load_lora_weights(dict(read))
    o2.load_lora_weights(dict(read))
    tf.assert_close(tf.images(o2, "flux"), tf.images(d, "flux"))


def test_kohya_flux_split_qkv_is_cut_into_per_projection_ranks(weights):
    """kohya's split-qkv training stores q, k, v LoRAs block-diagonally in one fused LoRA of rank 3r."""
    d, o = tf.flux_pipelines()
    layers = weights["a"]["transformer"]  # rank 4, independent q / k / v LoRAs
    kohya = {}
    fused = {"double_blocks_{i}_img_attn_qkv": ("transformer_blocks.{i}.attn.to_q", "transformer_blocks.{i}.attn.to_k",
                                                "transformer_blocks.{i}.attn.to_v"),
             "single_blocks_{i}_linear1": ("single_transformer_blocks.{i}.attn.to_q", "single_transformer_blocks.{i}.attn.to_k",
                                           "single_transformer_blocks.{i}.attn.to_v", "single_transformer_blocks.{i}.proj_mlp")}
    reference = {}
    for name, parts in fused.items():
        for i in range(2):
            paths = [p.format(i=i) for p in parts]
            downs = [layers[f"{p}.lora_A.weight"] for p in paths]
            ups = [layers[f"{p}.lora_B.weight"] for p in paths]
            key = "lora_unet_" + name.format(i=i)
            kohya[f"{key}.lora_down.weight"] = torch.cat(downs)
            kohya[f"{key}.lora_up.weight"] = torch.block_diag(*ups)
            kohya[f"{key}.alpha"] = torch.tensor(6.0 * len(paths))  # alpha / rank = 6 / 4 for each part
            for p in paths:
                reference[f"{p}.lora_A.weight"] = layers[f"{p}.lora_A.weight"] * 1.5
                reference[f"{p}.lora_B.weight"] = layers[f"{p}.lora_B.weight"]
    o.load_lora_weights(dict(kohya))
    assert o.transformer.transformer_blocks[1].attn.to_k.r == {"default_0": 4}  # rank 4 per part, not 12
    assert o.transformer.single_transformer_blocks[0].proj_mlp.r == {"default_0": 4}
    _, ref = tf.flux_pipelines()
    ref.load_lora_weights(tf.prefixed("transformer", reference))
    tf.assert_close(tf.images(o, "flux"), tf.images(ref, "flux"), atol=1e-5)
    double = {k: v for k, v in kohya.items() if "double_blocks" in k}
    _, o2 = tf.flux_pipelines()
    d.load_lora_weights(dict(double))
    o2.load_lora_weights(dict(double))
    tf.assert_close(tf.images(o2, "flux"), tf.images(d, "flux"))


def test_xlabs_flux_matches_diffusers():
    d, o = tf.flux_pipelines()
    g = torch.Generator().manual_seed(11)
    xlabs = {}
    for i in range(2):
        for lora, out in (("qkv_lora1", 96), ("qkv_lora2", 96), ("proj_lora1", 32), ("proj_lora2", 32)):
            xlabs[f"double_blocks.{i}.processor.{lora}.down.weight"] = torch.randn(4, 32, generator=g) / 32 ** 0.5
            xlabs[f"double_blocks.{i}.processor.{lora}.up.weight"] = torch.randn(out, 4, generator=g) * 0.4
        xlabs[f"single_blocks.{i}.processor.qkv_lora.down.weight"] = torch.randn(4, 32, generator=g) / 32 ** 0.5
        xlabs[f"single_blocks.{i}.processor.qkv_lora.up.weight"] = torch.randn(96, 4, generator=g) * 0.4
    base = tf.images(o, "flux")
    d.load_lora_weights(dict(xlabs))
    o.load_lora_weights(dict(xlabs))
    ours = tf.images(o, "flux")
    assert tf.changed(ours, base)
    assert "default_0" in o.transformer.single_transformer_blocks[1].attn.to_v.lora_A
    assert not hasattr(o.transformer.single_transformer_blocks[1].proj_mlp, "lora_A")  # q, k, v of linear1 only
    tf.assert_close(ours, tf.images(d, "flux"))
    bad = {**xlabs, "double_blocks.0.processor.qkv_lora9.down.weight": torch.ones(4, 32)}
    with pytest.raises(ValueError, match=r"XLabs Flux LoRA with keys of no known kind: .*qkv_lora9"):
        o.load_lora_weights(bad, adapter_name="bad")
    assert o.get_list_adapters() == {"transformer": ["default_0"]}


def test_save_round_trip_and_refused_files(files, weights, tmp_path):
    from peft.utils import get_peft_model_state_dict

    d, o = tf.flux_pipelines()
    o.load_lora_weights(files["a"], adapter_name="a")
    o.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(o.transformer, adapter_name="a"),
                        text_encoder_lora_layers=get_peft_model_state_dict(o.text_encoder, adapter_name="a"))
    d.load_lora_weights(tmp_path / "pytorch_lora_weights.safetensors")
    image = tf.images(o, "flux")
    tf.assert_close(image, tf.images(d, "flux"))
    state, alphas = o.lora_state_dict(tmp_path, return_alphas=True)
    assert alphas is None and sorted(state) == sorted(d.lora_state_dict(tmp_path))

    tuners = tf.tuner_count(o)
    t5 = tf.random_lora(d.text_encoder_2, ("q", "v"), seed=3)
    with pytest.raises(ValueError, match=r"\['text_encoder_2'\]; FluxPipeline takes LoRA into \['text_encoder', 'transformer'\]"):
        o.load_lora_weights({**tf.prefixed("transformer", weights["b"]["transformer"]),
                             **tf.prefixed("text_encoder_2", t5)}, adapter_name="t5")
    control = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(2, 32),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(32, 2),
               "transformer.transformer_blocks.0.attn.norm_q.weight": torch.ones(16)}
    with pytest.raises(ValueError, match="Flux Control LoRA"):
        o.load_lora_weights(control, adapter_name="control")
    bfl_control = {"double_blocks.0.img_attn.norm.query_norm.scale": torch.ones(16),
                   "double_blocks.0.img_attn.qkv.lora_A.weight": torch.ones(2, 32)}
    with pytest.raises(ValueError, match="Flux Control LoRA"):
        o.load_lora_weights(bfl_control, adapter_name="control")
    wide = {"lora_unet_img_in.lora_down.weight": torch.ones(2, 64), "lora_unet_img_in.lora_up.weight": torch.ones(32, 2)}
    with pytest.raises(ValueError, match=r"kohya layout\) does not fit transformer .*x_embedder .*needs down \(2, 16\)"):
        o.load_lora_weights(wide, adapter_name="wide")
    short = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.ones(2, 32),
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.ones(50, 2)}
    with pytest.raises(ValueError, match=r"up weight has 50 rows; the fused projection it names has parts of \[32, 32, 32\]"):
        o.load_lora_weights(short, adapter_name="short")
    assert tf.tuner_count(o) == tuners and o.get_list_adapters() == {"transformer": ["a"], "text_encoder": ["a"]}
    np.testing.assert_array_equal(tf.images(o, "flux"), image)
