"""Real-sized layouts, built on the meta device (no weights): detection picks the family and its bundled
configs, and every weight of every component converts into the shape the model expects."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import sf_fixtures as fx  # noqa: E402

from kernel.checkpoints import Checkpoint, config_folder, detect, empty  # noqa: E402
from kernel.pipeline import resolve_class  # noqa: E402
from kernel_single_file.convert import to_diffusers  # noqa: E402

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

CASES = {  # family: (pipeline class, where the text encoders go)
    "sd-v1": ("StableDiffusionPipeline", {"text_encoder": ("clip", "cond_stage_model.transformer.")}),
    "sd-v2": ("StableDiffusionPipeline", {"text_encoder": ("openclip", "cond_stage_model.model.")}),
    "sdxl-base": ("StableDiffusionXLPipeline", {"text_encoder": ("clip", "conditioner.embedders.0.transformer."),
                                                "text_encoder_2": ("openclip", "conditioner.embedders.1.model.")}),
    "sdxl-refiner": ("StableDiffusionXLImg2ImgPipeline", {"text_encoder_2": ("openclip", "conditioner.embedders.0.model.")}),
    "sd3-medium": ("StableDiffusion3Pipeline", {}),
    "flux-dev": ("FluxPipeline", {}),
    "flux-schnell": ("FluxPipeline", {}),
}


def _meta(library, name, config):
    with torch.device("meta"):
        if library == "diffusers":
            return getattr(diffusers, name).from_config(config)
        cls = getattr(transformers, name)
        return cls(cls.config_class.from_dict({k: v for k, v in config.items() if not k.startswith("_")}))


def _skeleton(family):
    """The original-layout ``key -> meta tensor`` map of a real-sized ``family`` checkpoint, and the
    Diffusers models it was made from."""
    folder = config_folder(family)
    index = json.loads((folder / "model_index.json").read_text())
    models, configs = {}, {}
    for name, entry in index.items():
        if isinstance(entry, list) and None not in entry and (folder / name / "config.json").is_file():
            configs[name] = json.loads((folder / name / "config.json").read_text())
            models[name] = _meta(*entry, configs[name])
    out = {}
    if "unet" in models:
        fx.ldm_unet(models["unet"].state_dict(), configs["unet"], out)
        fx.ldm_vae(models["vae"].state_dict(), configs["vae"], out)
        for name, (kind, prefix) in CASES[family][1].items():
            (fx.ldm_clip if kind == "clip" else fx.open_clip)(models[name].state_dict(), out, prefix)
    else:  # SD3 and FLUX.1 as whole-pipeline files
        sd3 = family.startswith("sd3")
        (fx.mmdit if sd3 else fx.bfl_flux)(models["transformer"].state_dict(), configs["transformer"], out,
                                           "model.diffusion_model.")
        fx.ldm_vae(models["vae"].state_dict(), configs["vae"], out, "first_stage_model." if sd3 else "vae.")
        slots = ("clip_l", "clip_g", "t5xxl") if sd3 else ("clip_l", "t5xxl")
        for name, slot in zip(("text_encoder", "text_encoder_2", "text_encoder_3"), slots):
            state = models[name].state_dict()
            if slot == "t5xxl":
                out.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in state.items()})
            else:
                state.pop("text_projection.weight", None) if slot == "clip_l" else None
                fx.ldm_clip(state, out, f"text_encoders.{slot}.transformer.")
    out.update({"alphas_cumprod": torch.empty(1000, device="meta"), "model_ema.decay": torch.empty((), device="meta")})
    return out, index, models, configs


@pytest.mark.parametrize("family", list(CASES))
def test_real_sized_layouts_are_detected_and_convert_completely(family):
    skeleton, index, models, configs = _skeleton(family)
    checkpoint = Checkpoint(skeleton)
    assert detect(checkpoint) == family
    assert index["_class_name"] == CASES[family][0]
    for name, model in models.items():
        target = empty(resolve_class(*index[name], component=name), config_folder(family) / name)
        converted = to_diffusers(family, name, checkpoint, target)
        want = {k: v.shape for k, v in model.state_dict().items()}
        assert set(target.state_dict()) == set(want), name  # our classes have Diffusers' (and transformers') names
        missing = sorted(set(want) - set(converted))
        if name.startswith("text_encoder"):
            missing = [k for k in missing if not k.endswith("position_ids")]
        assert missing == [], f"{family} {name}: not converted {missing[:5]}"
        wrong = [k for k, v in converted.items() if tuple(v.shape) != tuple(want[k])]
        assert wrong == [], f"{family} {name}: wrong shapes {wrong[:5]}"


def test_widths_decide_where_the_structure_does_not():
    # UNet-only files: SD 2.x has 1024-wide cross-attention, SDXL's refiner a 2560-wide size embedding.
    base = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}
    assert detect(Checkpoint({k: torch.empty(s, device="meta") for k, s in base.items()})) == "sd-v1"
    wide = {**base, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
            "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}
    assert detect(Checkpoint({k: torch.empty(s, device="meta") for k, s in wide.items()})) == "sd-v2-inpaint"
    xl = {"input_blocks.0.0.weight": (384, 4, 3, 3), "label_emb.0.0.weight": (1536, 2560)}
    assert detect(Checkpoint({k: torch.empty(s, device="meta") for k, s in xl.items()})) == "sdxl-refiner"
    sd35 = {"joint_blocks.0.context_block.adaLN_modulation.1.bias": (9728,), "x_embedder.proj.weight": (2432, 16, 2, 2)}
    assert detect(Checkpoint({k: torch.empty(s, device="meta") for k, s in sd35.items()})) == "sd3.5-large"
