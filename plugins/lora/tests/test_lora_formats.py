"""Layout detection and layer-name lookup, without running a pipeline."""

from __future__ import annotations

import math

import pytest
import torch

import kernel
from kernel_lora.formats import LoraFormatError, apply_metadata, parse, split_metadata
from kernel_lora.names import NameTable

SDXL_UNET = dict(sample_size=128, layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)


def _pair(rank=2, inp=3, out=5):
    return torch.ones(rank, inp), torch.ones(out, rank)


@pytest.mark.parametrize("keys, layout", [
    (("unet.a.b.lora_A.weight", "unet.a.b.lora_B.weight"), "peft"),
    (("unet.a.b.lora.down.weight", "unet.a.b.lora.up.weight"), "diffusers"),
    (("a.b.processor.to_q_lora.down.weight", "a.b.processor.to_q_lora.up.weight"), "attn-procs"),
    (("lora_unet_a_b.lora_down.weight", "lora_unet_a_b.lora_up.weight"), "kohya"),
])
def test_layouts_are_detected_from_the_keys(keys, layout):
    down, up = _pair()
    parsed = parse({keys[0]: down, keys[1]: up})
    assert parsed.layout == layout and list(parsed.components) == ["unet"]
    (name, weight), = parsed.components["unet"].layers.items()
    assert name == {"attn-procs": "a.b.to_q", "kohya": "a_b"}.get(layout, "a.b")
    assert weight.down is down and weight.up is up and weight.alpha is None and weight.scale == 1


def test_components_and_text_encoder_names():
    down, up = _pair()
    parsed = parse({
        "text_encoder_2.text_model.encoder.layers.0.self_attn.to_out_lora.down.weight": down,
        "text_encoder_2.text_model.encoder.layers.0.self_attn.to_out_lora.up.weight": up,
        "text_encoder.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight": down,
        "text_encoder.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight": up,
    })
    assert set(parsed.components["text_encoder_2"].layers) == {"text_model.encoder.layers.0.self_attn.out_proj"}
    assert set(parsed.components["text_encoder"].layers) == {"encoder.layers.0.mlp.fc1"}
    kohya = parse({"lora_te1_a.lora_down.weight": down, "lora_te1_a.lora_up.weight": up, "lora_te1_a.alpha": torch.tensor(1.0),
                   "lora_te2_b.lora_down.weight": down, "lora_te2_b.lora_up.weight": up})
    assert kohya.components["text_encoder"].layers["a"].scale == 0.5
    assert set(kohya.components) == {"text_encoder", "text_encoder_2"}


@pytest.mark.parametrize("state, message", [
    ({"model.weight": torch.ones(1)}, "match no LoRA layout"),
    ({"unet.a.lora_A.weight": torch.ones(2, 3)}, "no up"),
    ({"unet.a.lora_A.weight": torch.ones(2, 3), "unet.a.lora_B.weight": torch.ones(5, 3)}, "rank 2 but up has 3"),
    ({"unet.a.lora_A.weight": torch.ones(2), "unet.a.lora_B.weight": torch.ones(5, 2)}, "2-d .* or 4-d"),
    ({"lora_unet_a.lora_down.weight": torch.ones(2, 3), "lora_unet_a.lokr_w1": torch.ones(2)}, "LoKr"),
    ({"unet.a.alpha": torch.ones(3), "unet.a.lora_A.weight": torch.ones(2, 3)}, "scalar alpha"),
    ({}, "empty"),
])
def test_malformed_state_dicts(state, message):
    with pytest.raises(LoraFormatError, match=message):
        parse(state, "my.safetensors")


def test_metadata_gives_alphas_and_rslora():
    down, up = _pair(rank=4)
    parsed = parse({"unet.x.to_q.lora_A.weight": down, "unet.x.to_q.lora_B.weight": up,
                    "unet.x.to_k.lora_A.weight": down, "unet.x.to_k.lora_B.weight": up})
    meta = split_metadata({"unet.lora_alpha": 8, "unet.alpha_pattern": {"to_k": 2}, "text_encoder.r": 4})
    assert set(meta) == {"unet", "text_encoder"}
    apply_metadata(parsed.components["unet"], meta["unet"], "f", "unet")
    layers = parsed.components["unet"].layers
    assert layers["x.to_q"].scale == 2.0 and layers["x.to_k"].scale == 0.5
    parsed = parse({"unet.x.lora_A.weight": down, "unet.x.lora_B.weight": up})
    apply_metadata(parsed.components["unet"], {"lora_alpha": 8, "use_rslora": True}, "f", "unet")
    assert math.isclose(parsed.components["unet"].layers["x"].scale, 8 / math.sqrt(4))
    with pytest.raises(ValueError, match="DoRA"):
        apply_metadata(parsed.components["unet"], {"use_dora": True}, "f", "unet")


@pytest.fixture(scope="module")
def sdxl_table():
    with torch.device("meta"):
        unet = kernel.component("UNet2DConditionModel")(**SDXL_UNET)
    return NameTable(unet, "unet")


@pytest.mark.parametrize("kohya, path", [
    ("input_blocks_0_0", "conv_in"),
    ("input_blocks_1_0_in_layers_2", "down_blocks.0.resnets.0.conv1"),
    ("input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv"),
    ("input_blocks_4_0_emb_layers_1", "down_blocks.1.resnets.0.time_emb_proj"),
    ("input_blocks_4_0_skip_connection", "down_blocks.1.resnets.0.conv_shortcut"),
    ("input_blocks_5_1_transformer_blocks_1_attn2_to_k", "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k"),
    ("input_blocks_8_1_proj_out", "down_blocks.2.attentions.1.proj_out"),
    ("middle_block_0_out_layers_3", "mid_block.resnets.0.conv2"),
    ("middle_block_1_transformer_blocks_9_ff_net_0_proj", "mid_block.attentions.0.transformer_blocks.9.ff.net.0.proj"),
    ("middle_block_2_in_layers_2", "mid_block.resnets.1.conv1"),
    ("output_blocks_2_1_proj_in", "up_blocks.0.attentions.2.proj_in"),
    ("output_blocks_2_2_conv", "up_blocks.0.upsamplers.0.conv"),
    ("output_blocks_5_2_conv", "up_blocks.1.upsamplers.0.conv"),
    ("output_blocks_8_0_out_layers_3", "up_blocks.2.resnets.2.conv2"),
    ("time_embed_0", "time_embedding.linear_1"),
    ("label_emb_0_2", "add_embedding.linear_2"),
    ("out_2", "conv_out"),
    ("down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0",
     "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0"),
])
def test_kohya_names_of_the_sdxl_unet(sdxl_table, kohya, path):
    assert sdxl_table.resolve(kohya, "kohya") == path
    assert sdxl_table.resolve(path, "dotted") == path


def test_text_encoder_names_with_and_without_text_model():
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        te = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2))
    table = NameTable(te, "text_encoder")
    path = next(p for p in table.modules if p.endswith("layers.0.self_attn.q_proj"))
    for name in (path, path.removeprefix("text_model."), f"text_model.{path.removeprefix('text_model.')}"):
        assert table.resolve(name, "dotted") == path
    assert table.resolve("text_model_encoder_layers_0_mlp_fc2", "kohya") == path.replace("self_attn.q_proj", "mlp.fc2")
    assert table.resolve("encoder_layers_7_mlp_fc2", "kohya") is None


@pytest.mark.parametrize("keys, component, name", [
    (("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"),
     "transformer", "double_blocks_0_img_attn_qkv"),
    (("lora_transformer_single_transformer_blocks_0_attn_to_q.lora_down.weight",
      "lora_transformer_single_transformer_blocks_0_attn_to_q.lora_up.weight"),
     "transformer", "single_transformer_blocks_0_attn_to_q"),
    (("double_blocks.3.processor.qkv_lora2.down.weight", "double_blocks.3.processor.qkv_lora2.up.weight"),
     "transformer", "double_blocks.3.txt_attn.qkv"),
    (("diffusion_model.single_blocks.1.processor.proj_lora.down.weight",
      "diffusion_model.single_blocks.1.processor.proj_lora.up.weight"), "transformer", "single_blocks.1.linear2"),
    (("transformer.a.b.lora_A.weight", "transformer.a.b.lora_B.weight"), "transformer", "a.b"),
    (("a.b.lora_A.weight", "a.b.lora_B.weight"), "transformer", "a.b"),
])
def test_transformer_layouts(keys, component, name):
    """kohya's lora_unet_ / lora_transformer_ and XLabs files belong to the pipeline's denoiser."""
    down, up = _pair()
    parsed = parse({keys[0]: down, keys[1]: up}, default_component="transformer")
    assert list(parsed.components) == [component]
    assert list(parsed.components[component].layers) == [name]


@pytest.fixture(scope="module")
def flux_table():
    """Full-size FLUX.1-dev transformer (19 double, 38 single blocks), on the meta device."""
    with torch.device("meta"):
        model = kernel.component("FluxTransformer2DModel")(guidance_embeds=True)
    return NameTable(model, "transformer")


@pytest.mark.parametrize("name, naming, expected", [
    ("double_blocks_18_img_attn_qkv", "kohya", [("transformer_blocks.18.attn.to_q", ((0, 3072),)),
                                                ("transformer_blocks.18.attn.to_k", ((3072, 6144),)),
                                                ("transformer_blocks.18.attn.to_v", ((6144, 9216),))]),
    ("double_blocks.0.txt_attn.qkv", "dotted", [("transformer_blocks.0.attn.add_q_proj", ((0, 3072),)),
                                                ("transformer_blocks.0.attn.add_k_proj", ((3072, 6144),)),
                                                ("transformer_blocks.0.attn.add_v_proj", ((6144, 9216),))]),
    ("single_blocks_37_linear1", "kohya", [("single_transformer_blocks.37.attn.to_q", ((0, 3072),)),
                                           ("single_transformer_blocks.37.attn.to_k", ((3072, 6144),)),
                                           ("single_transformer_blocks.37.attn.to_v", ((6144, 9216),)),
                                           ("single_transformer_blocks.37.proj_mlp", ((9216, 21504),))]),
    ("double_blocks_2_txt_mod_lin", "kohya", [("transformer_blocks.2.norm1_context.linear", None)]),
    ("single_blocks_5_modulation_lin", "kohya", [("single_transformer_blocks.5.norm.linear", None)]),
    ("guidance_in_out_layer", "kohya", [("time_text_embed.guidance_embedder.linear_2", None)]),
    ("final_layer_adaLN_modulation_1", "kohya", [("norm_out.linear", ((3072, 6144), (0, 3072)))]),
    ("transformer_blocks_4_attn_to_out_0", "kohya", [("transformer_blocks.4.attn.to_out.0", None)]),
    ("transformer_blocks.4.ff_context.net.2", "dotted", [("transformer_blocks.4.ff_context.net.2", None)]),
])
def test_flux_original_names(flux_table, name, naming, expected):
    assert [(t.path, t.rows) for t in flux_table.targets(name, naming)] == expected


def test_flux_names_need_a_flux_model(flux_table):
    assert flux_table.targets("double_blocks_19_img_attn_qkv", "kohya") is None
    assert flux_table.targets("single_blocks_38_linear1", "kohya") is None
    with torch.device("meta"):
        sd3 = kernel.component("SD3Transformer2DModel")(num_layers=2)
    assert NameTable(sd3, "transformer").targets("double_blocks_0_img_attn_qkv", "kohya") is None
