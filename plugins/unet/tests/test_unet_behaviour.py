"""UNet2DModel parity, training paths (gradients, checkpointing), compilation, registry and bad input."""

from __future__ import annotations

import os

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from kernel_unet import UNet2DConditionModel, UNet2DModel  # noqa: E402

TINY_COND = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, cross_attention_dim=32,
                 attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
DDPM = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=3, out_channels=3,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8)
DDPM_VARIANTS = {
    "ddpm": DDPM,
    "fourier_resnet_resample": {**DDPM, "time_embedding_type": "fourier", "downsample_type": "resnet",
                                "upsample_type": "resnet", "resnet_time_scale_shift": "scale_shift"},
    "class_learned_no_mid_attn": {**DDPM, "num_class_embeds": 5, "time_embedding_type": "learned",
                                  "num_train_timesteps": 50, "add_attention": False, "attention_head_dim": None},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _copy(ref: torch.nn.Module, cls, cfg: dict):
    ours = cls(**cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval()


@torch.no_grad()
@pytest.mark.parametrize("name", list(DDPM_VARIANTS))
def test_unet2d_matches_diffusers(name):
    cfg = DDPM_VARIANTS[name]
    torch.manual_seed(0)
    ref = diffusers.UNet2DModel(**cfg).eval()
    ours = _copy(ref, UNet2DModel, cfg)
    x = torch.randn(3, 3, 16, 24)
    kw = {"class_labels": torch.tensor([0, 4, 2])} if cfg.get("num_class_embeds") else {}
    timesteps = [torch.tensor([0.3, 0.5, 0.9])] if cfg.get("time_embedding_type") == "fourier" else [7, torch.tensor(21)]
    for t in timesteps:
        a, b = ref(x, t, **kw).sample, ours(x, t, **kw).sample
        assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()


def test_gradients_reach_every_parameter_and_checkpointing_matches():
    torch.manual_seed(0)
    model = UNet2DConditionModel(**TINY_COND, addition_embed_type="text_time", addition_time_embed_dim=4,
                                 projection_class_embeddings_input_dim=8 + 6 * 4)
    x, ehs = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32)
    cond = {"text_embeds": torch.randn(2, 8), "time_ids": torch.randn(2, 6)}

    def grads():
        model.zero_grad(set_to_none=True)
        model(x, torch.tensor([3, 500]), ehs, added_cond_kwargs=cond).sample.pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in plain]
    assert not missing, missing
    assert all(g.abs().sum() > 0 for n, g in plain.items() if "conv_out" not in n)
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    checkpointed = grads()
    for n, g in plain.items():
        assert torch.allclose(g, checkpointed[n], atol=1e-6), n


def test_unet2d_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = UNet2DModel(**DDPM)
    model(torch.randn(2, 3, 8, 8), 3).sample.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


@pytest.mark.skipif(os.environ.get("KERNEL_SKIP_COMPILE") == "1", reason="compile checks disabled")
def test_compile_fullgraph_has_no_graph_breaks():
    import torch._dynamo

    torch.manual_seed(0)
    model = UNet2DConditionModel(**TINY_COND).eval()
    x, ehs = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 32)
    mask = torch.ones(1, 5)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x, torch.tensor(10), ehs, encoder_attention_mask=mask)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    model.set_attention_slice("auto")
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x, torch.tensor(10), ehs)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()


@pytest.mark.skipif(os.environ.get("KERNEL_SLOW") != "1", reason="set KERNEL_SLOW=1 to run the inductor compile")
def test_compiled_forward_matches_eager():
    torch.manual_seed(0)
    model = UNet2DConditionModel(**TINY_COND).eval()
    x, ehs = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x, torch.tensor(10), ehs).sample, model(x, torch.tensor(10), ehs).sample, atol=1e-4)


def test_registered_as_components():
    import kernel

    assert kernel.component("UNet2DConditionModel") is UNet2DConditionModel
    assert kernel.component("UNet2DModel") is UNet2DModel


def test_config_and_attributes():
    model = UNet2DConditionModel(**TINY_COND)
    assert model.config.cross_attention_dim == 32
    assert model.in_channels == 4 and model.num_upsamplers == 1
    assert set(model.attn_processors) == {
        f"{n}.processor" for n, m in model.named_modules() if type(m).__name__ == "Attention"}


@pytest.mark.parametrize("kwargs,match", [
    ({"down_block_types": ("Nope2D", "DownBlock2D")}, "Nope2D"),
    ({"mid_block_type": "UNetMidBlock2DBogus"}, "mid_block_type"),
    ({"num_attention_heads": 4}, "num_attention_heads"),
    ({"block_out_channels": (32,)}, "block_out_channels"),
    ({"addition_embed_type": "text_time"}, "addition_time_embed_dim"),
    ({"class_embed_type": "bogus"}, "class_embed_type"),
    ({"act_fn": "tanhh"}, "act_fn"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet2DConditionModel(**{**TINY_COND, **kwargs})


def test_bad_inputs_are_clear_errors():
    model = UNet2DConditionModel(**TINY_COND, addition_embed_type="text_time", addition_time_embed_dim=4,
                                 projection_class_embeddings_input_dim=32)
    x, ehs = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32)
    with pytest.raises(TypeError, match="timestep"):
        model(x, "10", ehs)
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.tensor([1, 2, 3]), ehs)
    with pytest.raises(ValueError, match="added_cond_kwargs"):
        model(x, 1, ehs)
    with pytest.raises(ValueError, match="sample"):
        model(x[0], 1, ehs)
    with pytest.raises(ValueError, match="slice_size"):
        model.set_attention_slice(99)
    with pytest.raises(ValueError, match="backend"):
        model.set_attention_backend("turbo")
    with pytest.raises(ValueError, match="dim"):
        model.enable_forward_chunking(2, dim=3)
