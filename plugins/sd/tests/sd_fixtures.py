"""Tiny Stable Diffusion components, built locally, shared by the kernel-sd tests.

Every builder returns a pair: Diffusers' module (the oracle) and ours with the same weights.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import diffusers
from kernel.registry import get_registry
from kernel_contracts.testing import box_mask, random_image
from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer

SD_UNET = dict(block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=2)
XL_UNET = dict(block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
               use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
               transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
               cross_attention_dim=64, norm_num_groups=1)
VAE = dict(block_out_channels=[4, 8], in_channels=3, out_channels=3,
           down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
           latent_channels=4, norm_num_groups=2)
SCHED = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def ours_of(module):
    """Our class of the same name, built from the Diffusers module's config, same weights."""
    cls = get_registry().resolve(type(module).__name__)
    model = cls.from_config(dict(module.config))
    missing = model.load_state_dict(module.state_dict())
    assert not missing.missing_keys and not missing.unexpected_keys
    return model.eval()


def unet(seed=0, xl=False, **over):
    torch.manual_seed(seed)
    cfg = {**(XL_UNET if xl else SD_UNET), **over}
    d = diffusers.UNet2DConditionModel(**cfg).eval()
    return d, ours_of(d)


def vae(seed=0, **over):
    torch.manual_seed(seed)
    d = diffusers.AutoencoderKL(**{**VAE, **over}).eval()
    return d, ours_of(d)


def scheduler_pair(name: str, **over):
    """(Diffusers scheduler, ours - or Diffusers' own class when no plugin provides the name yet)."""
    d = getattr(diffusers, name)(**{**SCHED, **over})
    registry = get_registry()
    ours = registry.resolve(name).from_config(dict(d.config)) if registry.has(name) else getattr(diffusers, name).from_config(d.config)
    return d, ours


_TOKENIZERS: dict = {}


def tokenizer(kind="sd1"):
    if kind not in _TOKENIZERS:
        import tempfile

        _TOKENIZERS[kind] = tiny_clip_tokenizer(tempfile.mkdtemp(prefix=f"tok-{kind}-"),
                                                pad_token="!" if kind == "sd2" else "<|endoftext|>")
    return _TOKENIZERS[kind]


def _clip_skip_shim(te):
    # Diffusers 0.42 reads text_encoder.text_model.final_layer_norm for clip_skip; transformers 5
    # flattened CLIPTextModel.  Alias it outside the module tree so the oracle runs.
    if te is not None and not hasattr(te, "text_model"):
        object.__setattr__(te, "text_model", te)
    return te


def sd_components(sched="EulerDiscreteScheduler", unet_over=None, seed=0):
    """(diffusers components, our components) for SD 1.x."""
    du, ku = unet(seed, **(unet_over or {}))
    dv, kv = vae(seed + 1)
    tok = tokenizer("sd1")
    te = _clip_skip_shim(tiny_clip_text_model(tok, seed=seed + 2))
    ds, ks = scheduler_pair(sched)
    common = dict(text_encoder=te, tokenizer=tok, safety_checker=None, feature_extractor=None,
                  requires_safety_checker=False)
    return dict(unet=du, vae=dv, scheduler=ds, **common), dict(unet=ku, vae=kv, scheduler=ks, **common)


def xl_components(sched="EulerDiscreteScheduler", refiner=False, seed=0, unet_over=None):
    over = dict(unet_over or {})
    if refiner:
        over.setdefault("projection_class_embeddings_input_dim", 72)  # 5 time ids (aesthetic score) * 8 + 32
        over.setdefault("cross_attention_dim", 32)
    du, ku = unet(seed, xl=True, **over)
    dv, kv = vae(seed + 1)
    tok, tok2 = tokenizer("sd1"), tokenizer("sd2")
    te = None if refiner else tiny_clip_text_model(tok, seed=seed + 2)
    te2 = tiny_clip_text_model(tok2, seed=seed + 3, with_projection=True)
    ds, ks = scheduler_pair(sched)
    common = dict(text_encoder=te, tokenizer=None if refiner else tok, text_encoder_2=te2, tokenizer_2=tok2)
    return dict(unet=du, vae=dv, scheduler=ds, **common), dict(unet=ku, vae=kv, scheduler=ks, **common)


image = random_image
mask = box_mask


def gen(seed=0, n=None):
    if n is None:
        return torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def assert_images_close(a, b, atol=1e-3):
    if isinstance(a, list) and isinstance(a[0], PIL.Image.Image):
        a = np.stack([np.asarray(x, dtype=np.float32) / 255 for x in a])
        b = np.stack([np.asarray(x, dtype=np.float32) / 255 for x in b])
        # 8-bit rounding may flip a value by one level
        atol = max(atol, 1 / 255 + 1e-6)
    if isinstance(a, torch.Tensor):
        a, b = a.float().cpu().numpy(), b.float().cpu().numpy()
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)


@pytest.fixture(scope="module", autouse=False)
def single_thread():
    """Tiny models run fastest on one thread, above all on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
