"""Write the bundled configs (``kernel_single_file/configs/<family>/``) of the known original architectures.

The numbers are those of the public Diffusers-format releases of each model (their ``config.json``,
``scheduler_config.json`` and ``model_index.json``), trimmed to what the constructors read.  Run it after
changing a value here: ``python plugins/single-file/tools/make_configs.py``.
"""

import json
import shutil
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "kernel_single_file" / "configs"

SD_UNET = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
           "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
           "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
           "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
           "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
           "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
SD2_UNET = {**SD_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "use_linear_projection": True,
            "sample_size": 96, "upcast_attention": True}
XL_UNET = {**SD_UNET, "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
           "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
           "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
           "projection_class_embeddings_input_dim": 2816, "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
           "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True}
REFINER_UNET = {**XL_UNET, "attention_head_dim": [6, 12, 24, 24], "block_out_channels": [384, 768, 1536, 1536],
                "cross_attention_dim": 1280, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D",
                                                                  "CrossAttnDownBlock2D", "DownBlock2D"],
                "projection_class_embeddings_input_dim": 2560, "transformer_layers_per_block": 4,
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}

# ControlNets copy the UNet's encoder half: its config without the decoder's entries, plus the control-image encoder
# (lllyasviel/control_v11p_sd15_canny, thibaud/controlnet-sd21-*-diffusers, diffusers/controlnet-canny-sdxl-1.0).
UNET_ONLY = ("center_input_sample", "out_channels", "sample_size", "up_block_types")
CONTROL = {"_class_name": "ControlNetModel", "conditioning_channels": 3, "conditioning_embedding_out_channels": [16, 32, 96, 256],
           "controlnet_conditioning_channel_order": "rgb", "global_pool_conditions": False}


def controlnet(unet, **over):
    return {**{k: v for k, v in unet.items() if k not in UNET_ONLY}, **CONTROL, **over}


SD_VAE = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
          "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
          "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "scaling_factor": 0.18215,
          "up_block_types": ["UpDecoderBlock2D"] * 4}
XL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SD3_VAE = {**XL_VAE, "latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609, "use_quant_conv": False,
           "use_post_quant_conv": False}
FLUX_VAE = {**SD3_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}

CLIP_L = {"architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
          "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
          "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
          "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
          "projection_dim": 768, "vocab_size": 49408}
OPENCLIP_H = {**CLIP_L, "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
              "num_hidden_layers": 23, "projection_dim": 512}
OPENCLIP_BIGG = {**CLIP_L, "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu", "hidden_size": 1280,
                 "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280}
CLIP_L_PROJ = {**CLIP_L, "architectures": ["CLIPTextModelWithProjection"]}
T5_XXL = {"architectures": ["T5EncoderModel"], "d_ff": 10240, "d_kv": 64, "d_model": 4096, "decoder_start_token_id": 0,
          "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
          "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
          "model_type": "t5", "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24, "pad_token_id": 0,
          "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
          "vocab_size": 32128}

BETAS = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
         "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
         "trained_betas": None}
PNDM = {"_class_name": "PNDMScheduler", **BETAS}
DDIM = {"_class_name": "DDIMScheduler", **BETAS, "prediction_type": "epsilon"}
DDIM_V = {**DDIM, "prediction_type": "v_prediction"}
EULER = {"_class_name": "EulerDiscreteScheduler", **BETAS, "interpolation_type": "linear", "prediction_type": "epsilon",
         "sample_max_value": 1.0, "timestep_spacing": "leading", "use_karras_sigmas": False}
FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
FLUX_DEV_FLOW = {**FLOW, "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                 "use_dynamic_shifting": True}
FLUX_SCHNELL_FLOW = {**FLUX_DEV_FLOW, "shift": 1.0, "use_dynamic_shifting": False}

SD3 = {"_class_name": "SD3Transformer2DModel", "attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16,
       "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24, "out_channels": 16, "patch_size": 2,
       "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "sample_size": 128}
SD35_MEDIUM = {**SD3, "dual_attention_layers": list(range(13)), "pos_embed_max_size": 384, "qk_norm": "rms_norm"}
SD35_LARGE = {**SD3, "caption_projection_dim": 2432, "num_attention_heads": 38, "num_layers": 38, "qk_norm": "rms_norm"}
FLUX_DEV = {"_class_name": "FluxTransformer2DModel", "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56],
            "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24,
            "num_layers": 19, "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768}
FLUX_SCHNELL = {**FLUX_DEV, "guidance_embeds": False}

D, T = "diffusers", "transformers"
NONE = [None, None]


def sd(pipeline, unet, text_encoder, scheduler):
    return {"_class_name": pipeline, "feature_extractor": NONE, "image_encoder": NONE, "requires_safety_checker": False,
            "safety_checker": NONE, "scheduler": [D, scheduler["_class_name"]], "text_encoder": [T, "CLIPTextModel"],
            "tokenizer": [T, "CLIPTokenizer"], "unet": [D, "UNet2DConditionModel"], "vae": [D, "AutoencoderKL"]}, {
        "unet": unet, "vae": SD_VAE, "text_encoder": text_encoder, "scheduler": scheduler}


def xl(pipeline, unet, refiner=False, **flags):
    index = {"_class_name": pipeline, "feature_extractor": NONE, "image_encoder": NONE, **flags,
             "scheduler": [D, "EulerDiscreteScheduler"], "text_encoder": NONE if refiner else [T, "CLIPTextModel"],
             "text_encoder_2": [T, "CLIPTextModelWithProjection"], "tokenizer": NONE if refiner else [T, "CLIPTokenizer"],
             "tokenizer_2": [T, "CLIPTokenizer"], "unet": [D, "UNet2DConditionModel"], "vae": [D, "AutoencoderKL"]}
    configs = {"unet": unet, "vae": XL_VAE, "text_encoder_2": OPENCLIP_BIGG, "scheduler": EULER}
    if not refiner:
        configs["text_encoder"] = CLIP_L
    return index, configs


def sd3(transformer):
    return {"_class_name": "StableDiffusion3Pipeline", "scheduler": [D, "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": [T, "CLIPTextModelWithProjection"], "text_encoder_2": [T, "CLIPTextModelWithProjection"],
            "text_encoder_3": [T, "T5EncoderModel"], "tokenizer": [T, "CLIPTokenizer"], "tokenizer_2": [T, "CLIPTokenizer"],
            "tokenizer_3": [T, "T5TokenizerFast"], "transformer": [D, "SD3Transformer2DModel"],
            "vae": [D, "AutoencoderKL"]}, {
        "transformer": transformer, "vae": SD3_VAE, "text_encoder": CLIP_L_PROJ, "text_encoder_2": OPENCLIP_BIGG,
        "text_encoder_3": T5_XXL, "scheduler": FLOW}


def flux(transformer, scheduler):
    return {"_class_name": "FluxPipeline", "scheduler": [D, "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": [T, "CLIPTextModel"], "text_encoder_2": [T, "T5EncoderModel"],
            "tokenizer": [T, "CLIPTokenizer"], "tokenizer_2": [T, "T5TokenizerFast"],
            "transformer": [D, "FluxTransformer2DModel"], "vae": [D, "AutoencoderKL"]}, {
        "transformer": transformer, "vae": FLUX_VAE, "text_encoder": CLIP_L, "text_encoder_2": T5_XXL,
        "scheduler": scheduler}


FAMILIES = {
    "sd-v1": sd("StableDiffusionPipeline", SD_UNET, CLIP_L, PNDM),
    "sd-v1-inpaint": sd("StableDiffusionInpaintPipeline", {**SD_UNET, "in_channels": 9}, CLIP_L, DDIM),
    "sd-v2": sd("StableDiffusionPipeline", SD2_UNET, OPENCLIP_H, DDIM_V),
    "sd-v2-inpaint": sd("StableDiffusionInpaintPipeline", {**SD2_UNET, "in_channels": 9, "sample_size": 64,
                                                           "upcast_attention": False}, OPENCLIP_H, DDIM),
    "sdxl-base": xl("StableDiffusionXLPipeline", XL_UNET, force_zeros_for_empty_prompt=True),
    "sdxl-inpaint": xl("StableDiffusionXLInpaintPipeline", {**XL_UNET, "in_channels": 9},
                       force_zeros_for_empty_prompt=True, requires_aesthetics_score=False),
    "sdxl-refiner": xl("StableDiffusionXLImg2ImgPipeline", REFINER_UNET, refiner=True,
                       force_zeros_for_empty_prompt=False, requires_aesthetics_score=True),
    "sd3-medium": sd3(SD3),
    "sd3.5-medium": sd3(SD35_MEDIUM),
    "sd3.5-large": sd3(SD35_LARGE),
    "flux-dev": flux(FLUX_DEV, FLUX_DEV_FLOW),
    "flux-schnell": flux(FLUX_SCHNELL, FLUX_SCHNELL_FLOW),
    "sd-vae": ({"vae": [D, "AutoencoderKL"]}, {"vae": SD_VAE}),
    "flux-vae": ({"vae": [D, "AutoencoderKL"]}, {"vae": FLUX_VAE}),
    "controlnet-sd-v1": ({"controlnet": [D, "ControlNetModel"]}, {"controlnet": controlnet(SD_UNET)}),
    "controlnet-sd-v2": ({"controlnet": [D, "ControlNetModel"]}, {"controlnet": controlnet(SD2_UNET, upcast_attention=False)}),
    "controlnet-sdxl": ({"controlnet": [D, "ControlNetModel"]}, {"controlnet": controlnet(XL_UNET)}),
}


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    for family, (index, configs) in FAMILIES.items():
        folder = OUT / family
        folder.mkdir(parents=True)
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for name, config in configs.items():
            (folder / name).mkdir()
            file = "scheduler_config.json" if name == "scheduler" else "config.json"
            (folder / name / file).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
