"""Tiny pipelines (built with Diffusers, the oracle) and their single files, for kernel-single-file's tests.

The single files are written by this module's own Diffusers -> original mappings, which walk the original
module structure (written independently of ``kernel_single_file.layouts``, which maps key by key), so a
mistake in one shows up as a mismatch against the other and against Diffusers' ``from_single_file``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

UNET = dict(block_out_channels=(8, 16), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=4,
            attention_head_dim=4)
XL_UNET = dict(UNET, attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
               addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
               cross_attention_dim=72)
# The second encoder is wider than the first: Diffusers' from_single_file (the oracle) tells SDXL's two
# encoders apart by width; ours reads which is which from the config.
WIDTH_2 = 40
VAE = dict(block_out_channels=[8, 16], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4, layers_per_block=2)
SCHED = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
             steps_offset=1)


def _seeded(module, seed):
    """Random weights of a visible size (Diffusers zero-initialises some output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


# ------------------------------------------------------------------------------------------ folders
def sd_folder(path: Path, kind: str = "sd1", seed: int = 0, width_2: int = WIDTH_2) -> Path:
    """A tiny Diffusers SD folder: ``kind`` is ``sd1``, ``sd2`` (SD 2.x tokenizer padding, v-prediction),
    ``inpaint`` (9-channel UNet), ``xl`` or ``refiner``."""
    import diffusers

    tok = tiny_clip_tokenizer(path / "_tok", pad_token="!" if kind == "sd2" else "<|endoftext|>")
    torch.manual_seed(seed)
    xl = kind in ("xl", "refiner")
    unet_config = dict(XL_UNET if xl else UNET)
    if kind == "inpaint":
        unet_config["in_channels"] = 9
    if xl:
        unet_config["cross_attention_dim"] = width_2 + (0 if kind == "refiner" else 32)
    if kind == "refiner":
        unet_config["projection_class_embeddings_input_dim"] = 72
    unet = _seeded(diffusers.UNet2DConditionModel(**unet_config), seed)
    vae = _seeded(diffusers.AutoencoderKL(**VAE), seed + 1)
    sched = diffusers.EulerDiscreteScheduler(**SCHED, prediction_type="v_prediction" if kind == "sd2" else "epsilon")
    if xl:
        tok2 = tiny_clip_tokenizer(path / "_tok2", pad_token="!")
        te2 = tiny_clip_text_model(tok2, seed=seed + 3, with_projection=True, hidden_size=width_2)
        te = None if kind == "refiner" else tiny_clip_text_model(tok, seed=seed + 2)
        cls = diffusers.StableDiffusionXLImg2ImgPipeline if kind == "refiner" else diffusers.StableDiffusionXLPipeline
        pipe = cls(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=None if te is None else tok,
                   tokenizer_2=tok2, unet=unet, scheduler=sched,
                   **({"requires_aesthetics_score": True} if kind == "refiner" else {}))
    else:
        cls = diffusers.StableDiffusionInpaintPipeline if kind == "inpaint" else diffusers.StableDiffusionPipeline
        pipe = cls(vae=vae, text_encoder=tiny_clip_text_model(tok, seed=seed + 2), tokenizer=tok, unet=unet,
                   scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


#: Tiny ControlNets: four widths in the control-image encoder, as in every released ControlNet (Diffusers' reader
#: expects the output convolution at ``input_hint_block.14``); the control image is 8x the latents.
CONTROLNET = dict(block_out_channels=(8, 16), layers_per_block=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4,
                  conditioning_embedding_out_channels=(4, 4, 4, 8))
CONTROLNETS = {"sd1": CONTROLNET, "sd2": dict(CONTROLNET, use_linear_projection=True, attention_head_dim=(2, 4)),
               "xl": dict(CONTROLNET, attention_head_dim=(2, 4), use_linear_projection=True,
                          addition_embed_type="text_time", addition_time_embed_dim=8,
                          transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80)}


def controlnet_folder(path: Path, kind: str = "sd1", seed: int = 0) -> Path:
    """A tiny random Diffusers ``ControlNetModel`` folder (``kind``: ``sd1``, ``sd2`` or ``xl``); its zero
    convolutions get random weights too."""
    import diffusers

    torch.manual_seed(seed)
    _seeded(diffusers.ControlNetModel(**CONTROLNETS[kind]), seed).save_pretrained(path)
    return path


def controlnet_single_file(folder: Path, file: Path, prefix: str = "control_model.") -> Path:
    """The original-layout file of a ControlNet folder (``prefix=""``: as SD 2.1 ControlNets are shared)."""
    import diffusers

    model = diffusers.ControlNetModel.from_pretrained(folder)
    out: dict = {}
    ldm_controlnet(model.state_dict(), dict(model.config), out, prefix)
    return save(out, file)


# ------------------------------------------------------------------------------------------ Diffusers -> original
class _Writer:
    """Copies every tensor under a Diffusers prefix to an original prefix, renaming the first part of the rest."""

    def __init__(self, state: dict, out: dict, prefix: str):
        self.state, self.out, self.prefix, self.used = state, out, prefix, set()

    def copy(self, src: str, dst: str, renames: dict | None = None, fn=None) -> None:
        for key, tensor in self.state.items():
            if not key.startswith(src):
                continue
            rest = key[len(src):]
            head, _, tail = rest.rpartition(".")
            for a, b in (renames or {}).items():
                if head == a or head.startswith(a + "."):
                    head = b + head[len(a):]
                    break
            self.out[self.prefix + dst + (f"{head}.{tail}" if head else tail)] = fn(tensor, rest) if fn else tensor
            self.used.add(key)

    def done(self) -> None:
        left = sorted(set(self.state) - self.used)
        assert not left, f"the test writer left Diffusers keys unmapped: {left[:8]}"


RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _ldm_encoder(w: _Writer, config: dict) -> int:
    """The UNet's embeddings, input blocks and middle block; returns the number of input blocks."""
    for a, b in (("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                 ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
                 ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")):
        w.copy(a, b)
    n, per = len(config["down_block_types"]), config["layers_per_block"]
    index = 1
    for block in range(n):
        for layer in range(per):
            w.copy(f"down_blocks.{block}.resnets.{layer}.", f"input_blocks.{index}.0.", RESNET)
            w.copy(f"down_blocks.{block}.attentions.{layer}.", f"input_blocks.{index}.1.")
            index += 1
        if block < n - 1:
            w.copy(f"down_blocks.{block}.downsamplers.0.conv.", f"input_blocks.{index}.0.op.")
            index += 1
    w.copy("mid_block.resnets.0.", "middle_block.0.", RESNET)
    w.copy("mid_block.attentions.0.", "middle_block.1.")
    w.copy("mid_block.resnets.1.", "middle_block.2.", RESNET)
    return index


def ldm_unet(state: dict, config: dict, out: dict, prefix: str = "model.diffusion_model.") -> None:
    w = _Writer(state, out, prefix)
    _ldm_encoder(w, config)
    per = config["layers_per_block"]
    index = 0
    for block, kind in enumerate(config["up_block_types"]):
        for layer in range(per + 1):
            w.copy(f"up_blocks.{block}.resnets.{layer}.", f"output_blocks.{index}.0.", RESNET)
            w.copy(f"up_blocks.{block}.attentions.{layer}.", f"output_blocks.{index}.1.")
            if layer == per:
                slot = 2 if kind.startswith("CrossAttn") else 1
                w.copy(f"up_blocks.{block}.upsamplers.0.conv.", f"output_blocks.{index}.{slot}.conv.")
            index += 1
    w.done()


def ldm_controlnet(state: dict, config: dict, out: dict, prefix: str = "control_model.") -> None:
    """lllyasviel's ``cldm.ControlNet``: the UNet's encoder half, ``input_hint_block`` (an ``nn.Sequential`` of
    convolutions with a SiLU after each but the last), ``zero_convs.i.0`` and ``middle_block_out.0``."""
    w = _Writer(state, out, prefix)
    skips = _ldm_encoder(w, config)
    hint = 0
    w.copy("controlnet_cond_embedding.conv_in.", f"input_hint_block.{hint}.")
    for i in range(2 * (len(config["conditioning_embedding_out_channels"]) - 1)):
        hint += 2
        w.copy(f"controlnet_cond_embedding.blocks.{i}.", f"input_hint_block.{hint}.")
    w.copy("controlnet_cond_embedding.conv_out.", f"input_hint_block.{hint + 2}.")
    for i in range(skips):
        w.copy(f"controlnet_down_blocks.{i}.", f"zero_convs.{i}.0.")
    w.copy("controlnet_mid_block.", "middle_block_out.0.")
    w.done()


def ldm_vae(state: dict, config: dict, out: dict, prefix: str = "first_stage_model.") -> None:
    w = _Writer(state, out, prefix)
    n = len(config["down_block_types"])
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

    def conv(t, rest):  # LDM's attention uses 1x1 convolutions
        return t[:, :, None, None] if rest.endswith("weight") and t.dim() == 2 else t

    for side in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            w.copy(f"{side}.{name}.", f"{side}.{name}.")
        w.copy(f"{side}.conv_norm_out.", f"{side}.norm_out.")
        w.copy(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.", {"conv_shortcut": "nin_shortcut"})
        w.copy(f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.", {"conv_shortcut": "nin_shortcut"})
        w.copy(f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.", attention, fn=conv)
    for level in range(n):
        w.copy(f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block.")
        w.copy(f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample.")
        w.copy(f"decoder.up_blocks.{n - 1 - level}.resnets.", f"decoder.up.{level}.block.")
        w.copy(f"decoder.up_blocks.{n - 1 - level}.upsamplers.0.", f"decoder.up.{level}.upsample.")
    for name in ("quant_conv.", "post_quant_conv."):
        w.copy(name, name)
    # the resnets' shortcut convolutions
    for key in [k for k in out if k.startswith(prefix) and ".conv_shortcut." in k]:
        out[key.replace(".conv_shortcut.", ".nin_shortcut.")] = out.pop(key)
    w.done()


def ldm_clip(state: dict, out: dict, prefix: str) -> None:
    """transformers' CLIP text model under ``prefix`` (SD 1.x ``cond_stage_model.transformer.``)."""
    for key, tensor in state.items():
        out[prefix + (key if key.startswith(("text_model.", "text_projection")) else "text_model." + key)] = tensor


def open_clip(state: dict, out: dict, prefix: str) -> None:
    """OpenCLIP's text tower: fused in_proj, ``text_projection`` as a matrix (x @ P)."""
    layer_names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out[prefix + "token_embedding.weight"] = state.pop("embeddings.token_embedding.weight")
    out[prefix + "positional_embedding"] = state.pop("embeddings.position_embedding.weight")
    for leaf in ("weight", "bias"):
        out[prefix + f"ln_final.{leaf}"] = state.pop(f"final_layer_norm.{leaf}")
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", prefix + f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[dst + f"attn.in_proj_{leaf}"] = torch.cat(
                [state.pop(src + f"self_attn.{p}_proj.{leaf}") for p in "qkv"], dim=0)
            for a, b in layer_names.items():
                out[dst + f"{b}.{leaf}"] = state.pop(src + f"{a}.{leaf}")
    state.pop("embeddings.position_ids", None)
    assert not state, f"open_clip writer left {sorted(state)[:5]}"


def sd_single_file(folder: Path, file: Path, kind: str = "sd1", extra: dict | None = None,
                   components: tuple = ("unet", "vae", "text_encoder", "text_encoder_2")) -> Path:
    """The original-layout single file of a tiny Diffusers SD/SDXL folder (plus typical non-weight keys)."""
    import diffusers
    import transformers

    out: dict = {}
    if "unet" in components:
        unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        ldm_unet(unet.state_dict(), dict(unet.config), out)
    if "vae" in components:
        vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae")
        ldm_vae(vae.state_dict(), dict(vae.config), out)
    if "text_encoder" in components and (folder / "text_encoder").is_dir():
        te = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict()
        if kind == "sd2":
            open_clip(te, out, "cond_stage_model.model.")
        else:
            ldm_clip(te, out, "conditioner.embedders.0.transformer." if kind == "xl" else "cond_stage_model.transformer.")
    if "text_encoder_2" in components and (folder / "text_encoder_2").is_dir():
        te2 = transformers.CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").state_dict()
        open_clip(te2, out, f"conditioner.embedders.{0 if kind == 'refiner' else 1}.model.")
    out.update({"alphas_cumprod": torch.linspace(1, 0, 1000), "betas": torch.linspace(0, 0.012, 1000),
                "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000)})
    out.update(extra or {})
    return save(out, file)


def save(state: dict, file: Path) -> Path:
    if file.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    else:
        torch.save({"state_dict": state, "global_step": 1000, "epoch": 3}, file)
    return file


def _swap(t):
    shift, scale = t.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def mmdit(state: dict, config: dict, out: dict, prefix: str = "model.diffusion_model.") -> None:
    """SD3's MMDiT (``joint_blocks``), the blocks written one by one."""
    s = dict(state)

    def put(key, value):
        out[prefix + key] = value

    put("pos_embed", s.pop("pos_embed.pos_embed"))
    for leaf in ("weight", "bias"):
        put(f"x_embedder.proj.{leaf}", s.pop(f"pos_embed.proj.{leaf}"))
        put(f"context_embedder.{leaf}", s.pop(f"context_embedder.{leaf}"))
        for j, idx in ((1, 0), (2, 2)):
            put(f"t_embedder.mlp.{idx}.{leaf}", s.pop(f"time_text_embed.timestep_embedder.linear_{j}.{leaf}"))
            put(f"y_embedder.mlp.{idx}.{leaf}", s.pop(f"time_text_embed.text_embedder.linear_{j}.{leaf}"))
        put(f"final_layer.linear.{leaf}", s.pop(f"proj_out.{leaf}"))
        put(f"final_layer.adaLN_modulation.1.{leaf}", _swap(s.pop(f"norm_out.linear.{leaf}")))
    n = config["num_layers"]
    for i in range(n):
        d, o, last = f"transformer_blocks.{i}.", f"joint_blocks.{i}.", i == n - 1
        for leaf in ("weight", "bias"):
            put(o + f"x_block.attn.qkv.{leaf}", torch.cat([s.pop(d + f"attn.to_{c}.{leaf}") for c in "qkv"]))
            put(o + f"context_block.attn.qkv.{leaf}", torch.cat([s.pop(d + f"attn.add_{c}_proj.{leaf}") for c in "qkv"]))
            put(o + f"x_block.attn.proj.{leaf}", s.pop(d + f"attn.to_out.0.{leaf}"))
            put(o + f"x_block.adaLN_modulation.1.{leaf}", s.pop(d + f"norm1.linear.{leaf}"))
            context = s.pop(d + f"norm1_context.linear.{leaf}")
            put(o + f"context_block.adaLN_modulation.1.{leaf}", _swap(context) if last else context)
            put(o + f"x_block.mlp.fc1.{leaf}", s.pop(d + f"ff.net.0.proj.{leaf}"))
            put(o + f"x_block.mlp.fc2.{leaf}", s.pop(d + f"ff.net.2.{leaf}"))
            if not last:
                put(o + f"context_block.attn.proj.{leaf}", s.pop(d + f"attn.to_add_out.{leaf}"))
                put(o + f"context_block.mlp.fc1.{leaf}", s.pop(d + f"ff_context.net.0.proj.{leaf}"))
                put(o + f"context_block.mlp.fc2.{leaf}", s.pop(d + f"ff_context.net.2.{leaf}"))
            if d + f"attn2.to_q.{leaf}" in s:
                put(o + f"x_block.attn2.qkv.{leaf}", torch.cat([s.pop(d + f"attn2.to_{c}.{leaf}") for c in "qkv"]))
                put(o + f"x_block.attn2.proj.{leaf}", s.pop(d + f"attn2.to_out.0.{leaf}"))
        for attn, stream in (("attn", "x_block.attn"), ("attn2", "x_block.attn2")):
            for c in "qk":
                if d + f"{attn}.norm_{c}.weight" in s:
                    put(o + f"{stream}.ln_{c}.weight", s.pop(d + f"{attn}.norm_{c}.weight"))
        for c in "qk":
            if d + f"attn.norm_added_{c}.weight" in s:
                put(o + f"context_block.attn.ln_{c}.weight", s.pop(d + f"attn.norm_added_{c}.weight"))
    assert not s, f"mmdit writer left {sorted(s)[:5]}"


def bfl_flux(state: dict, config: dict, out: dict, prefix: str = "") -> None:
    """FLUX.1 as Black Forest Labs ship it (``double_blocks``/``single_blocks``)."""
    s = dict(state)

    def put(key, value):
        out[prefix + key] = value

    names = {"time_text_embed.timestep_embedder": "time_in", "time_text_embed.text_embedder": "vector_in",
             "time_text_embed.guidance_embedder": "guidance_in"}
    for leaf in ("weight", "bias"):
        for a, b in names.items():
            if f"{a}.linear_1.{leaf}" in s:
                put(f"{b}.in_layer.{leaf}", s.pop(f"{a}.linear_1.{leaf}"))
                put(f"{b}.out_layer.{leaf}", s.pop(f"{a}.linear_2.{leaf}"))
        put(f"txt_in.{leaf}", s.pop(f"context_embedder.{leaf}"))
        put(f"img_in.{leaf}", s.pop(f"x_embedder.{leaf}"))
        put(f"final_layer.linear.{leaf}", s.pop(f"proj_out.{leaf}"))
        put(f"final_layer.adaLN_modulation.1.{leaf}", _swap(s.pop(f"norm_out.linear.{leaf}")))
        for i in range(config["num_layers"]):
            d, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
            put(o + f"img_mod.lin.{leaf}", s.pop(d + f"norm1.linear.{leaf}"))
            put(o + f"txt_mod.lin.{leaf}", s.pop(d + f"norm1_context.linear.{leaf}"))
            put(o + f"img_attn.qkv.{leaf}", torch.cat([s.pop(d + f"attn.to_{c}.{leaf}") for c in "qkv"]))
            put(o + f"txt_attn.qkv.{leaf}", torch.cat([s.pop(d + f"attn.add_{c}_proj.{leaf}") for c in "qkv"]))
            put(o + f"img_attn.proj.{leaf}", s.pop(d + f"attn.to_out.0.{leaf}"))
            put(o + f"txt_attn.proj.{leaf}", s.pop(d + f"attn.to_add_out.{leaf}"))
            for src, dst in (("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"),
                             ("ff_context.net.0.proj", "txt_mlp.0"), ("ff_context.net.2", "txt_mlp.2")):
                put(o + f"{dst}.{leaf}", s.pop(d + f"{src}.{leaf}"))
        for i in range(config["num_single_layers"]):
            d, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
            put(o + f"modulation.lin.{leaf}", s.pop(d + f"norm.linear.{leaf}"))
            put(o + f"linear1.{leaf}", torch.cat([s.pop(d + f"attn.to_{c}.{leaf}") for c in "qkv"]
                                                 + [s.pop(d + f"proj_mlp.{leaf}")]))
            put(o + f"linear2.{leaf}", s.pop(d + f"proj_out.{leaf}"))
    for i in range(config["num_layers"]):
        for attn, stream in (("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm"),
                             ("norm_added_q", "txt_attn.norm.query_norm"), ("norm_added_k", "txt_attn.norm.key_norm")):
            put(f"double_blocks.{i}.{stream}.scale", s.pop(f"transformer_blocks.{i}.attn.{attn}.weight"))
    for i in range(config["num_single_layers"]):
        for c, name in (("q", "query"), ("k", "key")):
            put(f"single_blocks.{i}.norm.{name}_norm.scale", s.pop(f"single_transformer_blocks.{i}.attn.norm_{c}.weight"))
    assert not s, f"flux writer left {sorted(s)[:5]}"


def mmdit_folder(path: Path, kind: str = "sd3", t5: bool = True) -> Path:
    """A tiny Diffusers SD3 (``kind="sd3"``) or FLUX.1 (``"flux-dev"``, ``"flux-schnell"``) folder."""
    import diffusers
    from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer

    torch.manual_seed(0)
    vae = _seeded(diffusers.AutoencoderKL(sample_size=32, block_out_channels=(8, 8), latent_channels=16,
                                          down_block_types=("DownEncoderBlock2D",) * 2, norm_num_groups=4,
                                          up_block_types=("UpDecoderBlock2D",) * 2, use_quant_conv=False,
                                          use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035), 1)
    tok, tok2 = tiny_clip_tokenizer(path / "_tok"), tiny_clip_tokenizer(path / "_tok2")
    t5_tok = tiny_t5_tokenizer()
    if kind == "sd3":
        clip_l = tiny_clip_text_model(tok, seed=1, with_projection=True)
        with torch.no_grad():  # SD3 files carry no CLIP-L projection; both loaders use the identity
            clip_l.text_projection.weight.copy_(torch.eye(32))
        transformer = _seeded(diffusers.SD3Transformer2DModel(
            sample_size=32, patch_size=1, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=72, out_channels=16,
            pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm"), 0)
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
            text_encoder=clip_l, tokenizer=tok,
            text_encoder_2=tiny_clip_text_model(tok2, seed=2, with_projection=True, hidden_size=WIDTH_2,
                                                projection_dim=WIDTH_2), tokenizer_2=tok2,
            text_encoder_3=tiny_t5_encoder(t5_tok, d_model=32, seed=3) if t5 else None,
            tokenizer_3=t5_tok if t5 else None)
    else:
        transformer = _seeded(diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
            guidance_embeds=kind == "flux-dev"), 0)
        dev = kind == "flux-dev"
        pipe = diffusers.FluxPipeline(
            transformer=transformer, vae=vae, text_encoder=tiny_clip_text_model(tok, seed=1), tokenizer=tok,
            text_encoder_2=tiny_t5_encoder(t5_tok, d_model=32, seed=2), tokenizer_2=t5_tok,
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
                shift=3.0 if dev else 1.0, use_dynamic_shifting=dev, base_image_seq_len=16, max_image_seq_len=256))
    pipe.save_pretrained(path)
    return path


def mmdit_single_file(folder: Path, file: Path, kind: str = "sd3", components=None) -> Path:
    """SD3 files as Stability ships them (``sd3_medium_incl_clips_t5xxlfp8``: every part prefixed), FLUX.1 files
    as ComfyUI saves them (``model.diffusion_model.``, ``vae.``, ``text_encoders.*``), or one part alone."""
    import diffusers
    import transformers

    out: dict = {}
    components = components or ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    transformer_cls = diffusers.SD3Transformer2DModel if kind == "sd3" else diffusers.FluxTransformer2DModel
    if "transformer" in components:
        model = transformer_cls.from_pretrained(folder, subfolder="transformer")
        prefix = "" if components == ("transformer",) else "model.diffusion_model."
        (mmdit if kind == "sd3" else bfl_flux)(model.state_dict(), dict(model.config), out, prefix)
    if "vae" in components:
        vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae")
        ldm_vae(vae.state_dict(), dict(vae.config), out, "first_stage_model." if kind == "sd3" else "vae.")
    encoders = ({"text_encoder": ("CLIPTextModelWithProjection", "clip_l"),
                 "text_encoder_2": ("CLIPTextModelWithProjection", "clip_g"),
                 "text_encoder_3": ("T5EncoderModel", "t5xxl")} if kind == "sd3" else
                {"text_encoder": ("CLIPTextModel", "clip_l"), "text_encoder_2": ("T5EncoderModel", "t5xxl")})
    for name, (cls, slot) in encoders.items():
        if name in components and (folder / name).is_dir():
            state = getattr(transformers, cls).from_pretrained(folder / name).state_dict()
            if slot == "t5xxl":
                out.update({f"text_encoders.t5xxl.transformer.{k}": v.clone() for k, v in state.items()})
            else:
                if slot == "clip_l":
                    state.pop("text_projection.weight", None)  # SD3's CLIP-L files carry no projection
                ldm_clip(state, out, f"text_encoders.{slot}.transformer.")
    return save(out, file)


# ------------------------------------------------------------------------------------------ running
def run(pipe, seed: int = 0, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    args = dict(prompt="a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(seed), output_type="np")
    if "image" not in kwargs:
        args.update(height=32, width=32)
    args.update(kwargs)
    return np.asarray(pipe(**args).images)


def assert_close(a, b, atol=1e-3):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
