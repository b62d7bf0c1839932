"""Where each Diffusers weight lives in the original (single-file) layouts.

One function per layout maps a Diffusers state-dict key (relative to the component) to its original key
(relative to the component's prefix in the file) as a :class:`Source`: the original key, the ``part`` of
it the weight is when several Diffusers weights share one original tensor (fused ``qkv`` projections,
split along dim 0 in part order), and a ``transform`` (``"swap"``: the two halves exchanged, AdaLN's
shift/scale against Diffusers' scale/shift; ``"T"``: transposed; ``"conv"``: a 1x1 convolution kernel
where Diffusers has a linear weight).  Every transform is its own inverse, so the same map converts both
ways (:mod:`kernel_single_file.convert`).

Layouts: LDM UNet and VAE (Rombach et al. 2022, ``CompVis/stable-diffusion``; SDXL's ``generative-models``), the
ControlNet of SD 1.x/2.x and SDXL (``lllyasviel/ControlNet``),
CLIP text models as transformers names them, OpenCLIP text towers (SD 2.x, SDXL's second encoder),
T5 encoders, the MMDiT of SD3 (Esser et al. 2024) and FLUX.1 (``black-forest-labs/flux``).
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Source(NamedTuple):
    key: str
    part: int | None = None
    transform: str | None = None


def _rename(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """``name`` with its first matching prefix replaced (``pairs`` are Diffusers -> original)."""
    for new, old in pairs:
        if name == new or name.startswith(new + "."):
            return old + name[len(new):]
    return name


# ------------------------------------------------------------------------------------------ UNet
_UNET_TOP = (("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
             ("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2"),
             ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2"))
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))


def unet(key: str, config: dict) -> Source | None:
    """LDM ``openaimodel.UNetModel``: ``input_blocks``/``middle_block``/``output_blocks`` of
    ``[resnet, attention?, up/downsampler?]`` sequences, ``layers_per_block + 1`` per resolution."""
    per = int(config["layers_per_block"]) + 1
    top = _rename(key, _UNET_TOP)
    if top != key:
        return Source(top)
    m = re.fullmatch(r"(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?(resnets|attentions|downsamplers|upsamplers)"
                     r"\.(\d+)\.(.+)", key)
    if m is None:
        return None
    where, block, kind, layer, rest = m.group(1), int(m.group(2) or 0), m.group(3), int(m.group(4)), m.group(5)
    inner = _rename(rest, _RESNET) if kind == "resnets" else rest
    if where == "mid_block":
        return Source(f"middle_block.{1 if kind == 'attentions' else 2 * layer}.{inner}")
    if where == "down_blocks":
        if kind == "downsamplers":
            return Source(f"input_blocks.{block * per + per}.0.{rest.replace('conv.', 'op.', 1)}")
        return Source(f"input_blocks.{block * per + layer + 1}.{0 if kind == 'resnets' else 1}.{inner}")
    index = block * per + (per - 1 if kind == "upsamplers" else layer)
    if kind == "upsamplers":
        with_attention = str(config["up_block_types"][block]).startswith("CrossAttn")
        return Source(f"output_blocks.{index}.{2 if with_attention else 1}.{rest}")
    return Source(f"output_blocks.{index}.{0 if kind == 'resnets' else 1}.{inner}")


def controlnet(key: str, config: dict) -> Source | None:
    """ControlNet's ``cldm.ControlNet`` (Zhang et al. 2023; lllyasviel's ``control_v11*`` files): the UNet's encoder
    half named as in :func:`unet`, plus ``input_hint_block`` (the control-image encoder: convolutions at the even
    indices, SiLU between them), ``zero_convs.i.0`` (one per skip) and ``middle_block_out.0``."""
    m = re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key)
    if m:
        return Source(f"zero_convs.{m.group(1)}.0.{m.group(2)}")
    m = re.fullmatch(r"controlnet_cond_embedding\.(conv_in|blocks\.\d+|conv_out)\.(.+)", key)
    if m:
        name, rest = m.groups()
        if name == "conv_in":
            conv = 0
        elif name == "conv_out":  # after two convolutions per width step
            conv = 2 * len(config["conditioning_embedding_out_channels"]) - 1
        else:
            conv = int(name.split(".")[1]) + 1
        return Source(f"input_hint_block.{2 * conv}.{rest}")
    if key.startswith("controlnet_mid_block."):
        return Source("middle_block_out.0." + key.removeprefix("controlnet_mid_block."))
    return unet(key, config)


# ------------------------------------------------------------------------------------------ VAE
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def vae(key: str, config: dict) -> Source | None:
    """LDM ``AutoencoderKL``: ``encoder.down.i.block.j``, ``mid.block_1/attn_1/block_2``, and a decoder whose
    ``up`` list runs from the highest resolution (Diffusers' ``up_blocks`` run from the lowest)."""
    key = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)
    m = re.fullmatch(r"(encoder|decoder)\.(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?"
                     r"(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if m is None:
        return Source(key)  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv
    part, where, block, kind, layer, rest = m.groups()
    rest = rest.replace("conv_shortcut", "nin_shortcut")
    if where == "mid_block":
        if kind == "attentions":
            rest = _rename(rest, _VAE_ATTENTION)
            conv = rest.endswith("weight") and not rest.startswith("norm")
            return Source(f"{part}.mid.attn_1.{rest}", transform="conv" if conv else None)
        return Source(f"{part}.mid.block_{int(layer) + 1}.{rest}")
    level = int(block) if where == "down_blocks" else len(config["up_block_types"]) - 1 - int(block)
    name = "down" if where == "down_blocks" else "up"
    if kind in ("downsamplers", "upsamplers"):
        return Source(f"{part}.{name}.{level}.{kind[:-2]}.{rest}")
    return Source(f"{part}.{name}.{level}.block.{layer}.{rest}")


# ------------------------------------------------------------------------------------------ text encoders
def clip(key: str, config: dict) -> Source:
    """transformers' CLIP text model, the layout SD 1.x, SDXL and SD3 files keep (after their prefix);
    transformers 5 drops ``text_model.`` from ``CLIPTextModel``'s own names."""
    if key.startswith(("text_projection.", "text_model.")):
        return Source(key)
    return Source("text_model." + key)


_OPENCLIP = (("embeddings.token_embedding.weight", "token_embedding.weight"),
             ("embeddings.position_embedding.weight", "positional_embedding"),
             ("final_layer_norm", "ln_final"), ("encoder.layers", "transformer.resblocks"))
_OPENCLIP_LAYER = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                   ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))


def openclip(key: str, config: dict) -> Source | None:
    """OpenCLIP's text tower (``open_clip.model.CLIP``): fused ``in_proj`` attention, ``text_projection`` a
    matrix applied as ``x @ P`` (the transpose of Diffusers' linear weight)."""
    if key == "text_projection.weight":
        return Source("text_projection", transform="T")
    key = _rename(key.removeprefix("text_model."), _OPENCLIP)
    m = re.fullmatch(r"(transformer\.resblocks\.\d+)\.(.+)", key)
    if m is None:
        return Source(key)
    layer, rest = m.groups()
    q = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
    if q:
        return Source(f"{layer}.attn.in_proj_{q.group(2)}", part="qkv".index(q.group(1)))
    return Source(f"{layer}.{_rename(rest, _OPENCLIP_LAYER)}")


def t5(key: str, config: dict) -> Source:
    """transformers' T5 encoder; the embedding is tied, so its second name reads ``shared.weight``."""
    return Source("shared.weight" if key == "encoder.embed_tokens.weight" else key)


# ------------------------------------------------------------------------------------------ transformers
_MMDIT_TOP = (("pos_embed.pos_embed", "pos_embed"), ("pos_embed.proj", "x_embedder.proj"),
              ("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
              ("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
              ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
              ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"), ("proj_out", "final_layer.linear"))
_MMDIT_BLOCK = (("attn.norm_q", "x_block.attn.ln_q"), ("attn.norm_k", "x_block.attn.ln_k"),
                ("attn.norm_added_q", "context_block.attn.ln_q"), ("attn.norm_added_k", "context_block.attn.ln_k"),
                ("attn.to_out.0", "x_block.attn.proj"), ("attn.to_add_out", "context_block.attn.proj"),
                ("attn2.norm_q", "x_block.attn2.ln_q"), ("attn2.norm_k", "x_block.attn2.ln_k"),
                ("attn2.to_out.0", "x_block.attn2.proj"), ("norm1.linear", "x_block.adaLN_modulation.1"),
                ("norm1_context.linear", "context_block.adaLN_modulation.1"), ("ff.net.0.proj", "x_block.mlp.fc1"),
                ("ff.net.2", "x_block.mlp.fc2"), ("ff_context.net.0.proj", "context_block.mlp.fc1"),
                ("ff_context.net.2", "context_block.mlp.fc2"))
_QKV = {"to_q": 0, "to_k": 1, "to_v": 2, "add_q_proj": 0, "add_k_proj": 1, "add_v_proj": 2}


def mmdit(key: str, config: dict) -> Source | None:
    """SD3's MMDiT (``sd3_impls``/``mmditx``): ``joint_blocks.i.{x_block,context_block}`` with fused qkv; the last
    block's context AdaLN and the final layer's modulation are (shift, scale) where Diffusers has (scale, shift)."""
    if key.startswith("norm_out.linear."):
        return Source("final_layer.adaLN_modulation.1." + key.rsplit(".", 1)[1], transform="swap")
    top = _rename(key, _MMDIT_TOP)
    if top != key or not key.startswith("transformer_blocks."):
        return Source(top)
    _, i, rest = key.split(".", 2)
    q = re.fullmatch(r"(attn2?)\.(to_[qkv]|add_[qkv]_proj)\.(weight|bias)", rest)
    if q:
        stream = "context_block" if q.group(2).startswith("add") else "x_block"
        return Source(f"joint_blocks.{i}.{stream}.{q.group(1)}.qkv.{q.group(3)}", part=_QKV[q.group(2)])
    last = int(i) == int(config["num_layers"]) - 1
    swap = "swap" if last and rest.startswith("norm1_context.") else None
    return Source(f"joint_blocks.{i}.{_rename(rest, _MMDIT_BLOCK)}", transform=swap)


_FLUX_TOP = (("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
             ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
             ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
             ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
             ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
             ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
             ("context_embedder", "txt_in"), ("x_embedder", "img_in"), ("proj_out", "final_layer.linear"))
_FLUX_DOUBLE = (("norm1.linear", "img_mod.lin"), ("norm1_context.linear", "txt_mod.lin"),
                ("attn.norm_q.weight", "img_attn.norm.query_norm.scale"),
                ("attn.norm_k.weight", "img_attn.norm.key_norm.scale"),
                ("attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale"),
                ("attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale"),
                ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"), ("ff_context.net.0.proj", "txt_mlp.0"),
                ("ff_context.net.2", "txt_mlp.2"), ("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj"))
_FLUX_SINGLE = (("norm.linear", "modulation.lin"), ("attn.norm_q.weight", "norm.query_norm.scale"),
                ("attn.norm_k.weight", "norm.key_norm.scale"), ("proj_out", "linear2"))


def flux(key: str, config: dict) -> Source | None:
    """FLUX.1 (``flux.model.Flux``): double-stream blocks with fused qkv, single-stream blocks whose ``linear1``
    fuses q, k, v and the MLP input; the final modulation is (shift, scale)."""
    if key.startswith("norm_out.linear."):
        return Source("final_layer.adaLN_modulation.1." + key.rsplit(".", 1)[1], transform="swap")
    m = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", key)
    if m is None:
        return Source(_rename(key, _FLUX_TOP))
    kind, i, rest = m.groups()
    q = re.fullmatch(r"attn\.(to_[qkv]|add_[qkv]_proj)\.(weight|bias)|proj_mlp\.(weight|bias)", rest)
    if kind == "single_transformer_blocks":
        if q:
            return Source(f"single_blocks.{i}.linear1.{q.group(2) or q.group(3)}", part=_QKV.get(q.group(1), 3))
        return Source(f"single_blocks.{i}.{_rename(rest, _FLUX_SINGLE)}")
    if q:
        stream = "txt_attn" if q.group(1).startswith("add") else "img_attn"
        return Source(f"double_blocks.{i}.{stream}.qkv.{q.group(2)}", part=_QKV[q.group(1)])
    return Source(f"double_blocks.{i}.{_rename(rest, _FLUX_DOUBLE)}")
