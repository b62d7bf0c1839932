"""kernel_layers: attention backends and layer, transformer blocks, timestep embedding and Conv2d vs Diffusers / torch."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from kernel_layers import attention as kattn  # noqa: E402
from kernel_layers.attention import Attention, attention_backend, dispatch_attention, get_attention_backend  # noqa: E402
from kernel_layers.embeddings import get_timestep_embedding  # noqa: E402
from kernel_layers.transformer_2d import BasicTransformerBlock, Transformer2DModel  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _close(a, b, atol=1e-5):
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max().item()


@pytest.mark.parametrize("mask_kind", [None, "bool", "bias", "causal"])
@pytest.mark.parametrize("slice_size", [1, 3, 7])
def test_backends_agree(mask_kind, slice_size):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (5, 6, 6))
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(2, 1, 5, 6, generator=g) > 0.3
        mask[..., 0] = True
    elif mask_kind == "bias":
        mask = torch.randn(2, 1, 1, 6, generator=g)
    causal = mask_kind == "causal"
    ref = dispatch_attention(q, k, v, mask, backend="sdpa", is_causal=causal)
    _close(dispatch_attention(q, k, v, mask, backend="math", is_causal=causal), ref)
    _close(dispatch_attention(q, k, v, mask, backend="sliced", slice_size=slice_size, is_causal=causal), ref)


def test_process_default_and_context_manager():
    assert get_attention_backend() == "sdpa"
    with attention_backend("sliced"):
        assert get_attention_backend() == "sliced"
    assert get_attention_backend() == "sdpa"
    with pytest.raises(ValueError, match="backend"):
        kattn.set_attention_backend("fastest")
    assert get_attention_backend() == "sdpa"


@pytest.mark.parametrize("name,package", [("xformers", "xformers"), ("flash", "flash-attn")])
def test_optional_backends_explain_missing_package(name, package):
    try:
        kattn._optional_module(name)
    except ImportError as err:
        assert package in str(err)
        with pytest.raises(ImportError, match=package):
            kattn.set_attention_backend(name)
        assert get_attention_backend() == "sdpa"
    else:  # installed: selecting it works
        kattn.set_attention_backend(name)
        kattn.set_attention_backend("sdpa")


ATTN_CASES = {
    "vae_mid": dict(query_dim=32, heads=1, dim_head=32, norm_num_groups=8, residual_connection=True, bias=True,
                    upcast_softmax=True, rescale_output_factor=2.0, eps=1e-6),
    "cross": dict(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8),
    "qk_layer_norm": dict(query_dim=32, heads=4, dim_head=8, qk_norm="layer_norm", bias=True),
    "qk_rms_norm": dict(query_dim=32, heads=2, dim_head=16, qk_norm="rms_norm", out_bias=False),
    "cross_norm": dict(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8, cross_attention_norm="layer_norm"),
    "no_scale": dict(query_dim=32, heads=4, dim_head=8, scale_qk=False),
}


@torch.no_grad()
@pytest.mark.parametrize("case", list(ATTN_CASES))
@pytest.mark.parametrize("backend", ["sdpa", "sliced", "math"])
def test_attention_layer_matches_diffusers(case, backend):
    from diffusers.models.attention_processor import Attention as DAttention

    kw = ATTN_CASES[case]
    torch.manual_seed(0)
    ref = DAttention(**kw).eval()
    ours = Attention(**kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.set_attention_backend(backend)
    g = torch.Generator().manual_seed(1)
    if case == "vae_mid":
        x = torch.randn(2, 32, 4, 6, generator=g)
        _close(ours(x), ref(x))
        return
    x = torch.randn(2, 9, 32, generator=g)
    ctx = torch.randn(2, 5, 24, generator=g) if "cross_attention_dim" in kw else None
    keys = 5 if ctx is not None else 9
    bias = torch.zeros(2, 1, keys)
    bias[0, 0, 2:] = -10000.0
    _close(ours(x, ctx), ref(x, ctx))
    _close(ours(x, ctx, attention_mask=bias), ref(x, ctx, attention_mask=bias))
    ours.fuse_projections()
    _close(ours(x, ctx, attention_mask=bias), ref(x, ctx, attention_mask=bias))


@torch.no_grad()
def test_grouped_query_attention_matches_repeated_heads():
    torch.manual_seed(0)
    attn = Attention(32, heads=4, kv_heads=2, dim_head=8).eval()
    x = torch.randn(2, 6, 32)
    q = attn.split_heads(attn.to_q(x))
    k = attn.to_k(x).view(2, 6, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    v = attn.to_v(x).view(2, 6, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    expected = attn.to_out[0](attn.merge_heads(torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v))
    _close(attn(x), expected)


def test_attention_validation():
    with pytest.raises(ValueError, match="qk_norm"):
        Attention(32, qk_norm="batch_norm")
    with pytest.raises(ValueError, match="only_cross_attention"):
        Attention(32, only_cross_attention=True)
    attn = Attention(32, heads=4, dim_head=8)
    with pytest.raises(ValueError, match="key tokens"):
        attn(torch.randn(1, 6, 32), attention_mask=torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match="slice_size"):
        attn.set_attention_slice(5)
    with pytest.raises(TypeError, match="processor"):
        attn.set_processor("fast")


def test_fuse_and_unfuse_projection_modules():
    attn = Attention(32, heads=4, dim_head=8, bias=True)
    attn.fuse_projections()
    assert attn.to_qkv.weight.shape == (96, 32) and attn.fused_projections
    attn.unfuse_projections()
    assert "to_qkv" not in attn._modules and not attn.fused_projections
    cross = Attention(32, cross_attention_dim=16, heads=4, dim_head=8, added_kv_proj_dim=12, context_pre_only=False)
    cross.fuse_projections()
    assert cross.to_kv.weight.shape == (64, 16) and cross.to_added_qkv.weight.shape == (96, 12)
    assert set(cross.state_dict()) >= {"add_q_proj.weight", "to_add_out.weight"}


BLOCK_CASES = {
    "layer_norm_cross": dict(cross_attention_dim=24),
    "only_cross": dict(cross_attention_dim=24, only_cross_attention=True),
    "double_self_gelu": dict(double_self_attention=True, activation_fn="gelu"),
    "ada_norm": dict(cross_attention_dim=24, norm_type="ada_norm", num_embeds_ada_norm=10),
    "ada_norm_zero": dict(cross_attention_dim=24, norm_type="ada_norm_zero", num_embeds_ada_norm=10,
                          activation_fn="geglu-approximate"),
    "ada_norm_single": dict(cross_attention_dim=24, norm_type="ada_norm_single", activation_fn="gelu-approximate"),
}


@torch.no_grad()
@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_basic_transformer_block_matches_diffusers(case):
    from diffusers.models.attention import BasicTransformerBlock as DBlock

    kw = BLOCK_CASES[case]
    torch.manual_seed(0)
    ref = DBlock(32, 4, 8, **kw).eval()
    ours = BasicTransformerBlock(32, 4, 8, **kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(2)
    x, ctx = torch.randn(2, 6, 32, generator=g), torch.randn(2, 5, 24, generator=g)
    extra = {}
    if kw.get("norm_type") == "ada_norm":
        extra["timestep"] = torch.tensor(7)  # AdaLayerNorm (chunk_dim=0) takes one step for the batch
    if kw.get("norm_type") == "ada_norm_zero":
        extra = {"timestep": torch.tensor([1, 7]), "class_labels": torch.tensor([3, 4])}
    if kw.get("norm_type") == "ada_norm_single":
        extra["timestep"] = torch.randn(2, 6 * 32, generator=g)
    ehs = ctx if "cross_attention_dim" in kw else None
    _close(ours(x, encoder_hidden_states=ehs, **extra), ref(x, encoder_hidden_states=ehs, **extra))
    ours.set_chunk_feed_forward(4, dim=1)
    _close(ours(x, encoder_hidden_states=ehs, **extra), ref(x, encoder_hidden_states=ehs, **extra))


@torch.no_grad()
def test_transformer_2d_self_attention_mask_matches():
    kw = dict(num_attention_heads=2, attention_head_dim=8, in_channels=32, cross_attention_dim=24, norm_num_groups=8)
    torch.manual_seed(0)
    ref = diffusers.Transformer2DModel(**kw).eval()
    ours = Transformer2DModel(**kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, ctx = torch.randn(2, 32, 3, 4), torch.randn(2, 5, 24)
    mask = torch.ones(2, 12)
    mask[1, 5:] = 0
    _close(ours(x, ctx, attention_mask=mask).sample, ref(x, ctx, attention_mask=mask).sample)
    with pytest.raises(NotImplementedError, match="continuous"):
        Transformer2DModel(in_channels=4, patch_size=2, norm_type="ada_norm_single", sample_size=8)


@pytest.mark.parametrize("dim,flip,shift,scale,period", [
    (32, True, 0, 1, 10000), (33, False, 1, 1, 10000), (16, True, 1, 1000, 10000), (8, False, 0, 1, 100)])
def test_timestep_embedding_matches(dim, flip, shift, scale, period):
    from diffusers.models.embeddings import get_timestep_embedding as ref

    t = torch.tensor([0.0, 1.5, 999.0, 250.0])
    _close(get_timestep_embedding(t, dim, flip, shift, scale, period), ref(t, dim, flip, shift, scale, period), 0)
    with pytest.raises(ValueError, match="1-D"):
        get_timestep_embedding(t[None], dim)


# --- Conv2d: im2col + GEMM path for weight-bound CPU inference -------------------------------------


@pytest.fixture
def gemm_everywhere(monkeypatch):
    """Force kernel_layers.Conv2d's GEMM path for every eligible call, and fail if a call falls back."""
    from kernel_layers.conv import Conv2d

    monkeypatch.setattr(Conv2d, "gemm_min_weight_bytes", 0)
    monkeypatch.setattr(Conv2d, "gemm_max_positions", 1 << 30)

    def no_fallback(*args, **kwargs):
        raise AssertionError("fell back to nn.Conv2d")

    return lambda: monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", no_fallback)


@pytest.mark.parametrize("kernel_size,stride,padding,dilation,bias", [
    (3, 1, 1, 1, True), (3, 2, 1, 1, True), (1, 1, 0, 1, False), (3, 1, 0, 1, True), (3, 1, (1, 2), 1, False),
    ((3, 1), 2, (1, 0), 1, True), (3, 1, 2, 2, True), (4, 2, 1, 1, False)])
@pytest.mark.parametrize("height,width", [(7, 7), (5, 9)])
def test_conv2d_gemm_path_matches_nn_conv2d(gemm_everywhere, kernel_size, stride, padding, dilation, bias,
                                            height, width):
    from kernel_layers.conv import Conv2d

    torch.manual_seed(0)
    ref = torch.nn.Conv2d(6, 5, kernel_size, stride, padding, dilation, bias=bias)
    ours = Conv2d(6, 5, kernel_size, stride, padding, dilation, bias=bias)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, height, width)
    with torch.no_grad():
        expected = ref(x)
        gemm_everywhere()
        _close(ours(x), expected)


def test_conv2d_gemm_path_only_for_float32_cpu_inference(gemm_everywhere):
    from kernel_layers.conv import Conv2d

    conv = Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        assert conv._use_gemm(x)
        assert not conv._use_gemm(x.double())
        assert not Conv2d(4, 4, 3, padding=1, groups=2)._use_gemm(x)
        assert not Conv2d(4, 4, 3, padding="same")._use_gemm(x)
        assert not Conv2d(4, 4, 3, padding=1, padding_mode="reflect")._use_gemm(x)
    assert not conv._use_gemm(x)  # grad mode on: training keeps nn.Conv2d (and its backward)
    out = conv(x.requires_grad_())
    out.sum().backward()
    assert conv.weight.grad is not None


def test_conv2d_default_thresholds_pick_big_weights_on_few_positions():
    from kernel_layers.conv import Conv2d

    with torch.device("meta"):
        big = Conv2d(1280, 1280, 3, padding=1)  # 59 MB of float32 weight
        small = Conv2d(320, 320, 3, padding=1)
    with torch.no_grad():
        big.weight = torch.nn.Parameter(torch.empty(big.weight.shape))  # the check reads shape/dtype/device only
        small.weight = torch.nn.Parameter(torch.empty(small.weight.shape))
        assert big._use_gemm(torch.empty(2, 1280, 8, 8))  # 128 output positions: the UNet's low-resolution end
        assert big._use_gemm(torch.empty(2, 1280, 8, 8)[:, :, ::2, ::2])
        assert not big._use_gemm(torch.empty(2, 1280, 16, 16))
        assert not small._use_gemm(torch.empty(2, 320, 4, 4))
    assert isinstance(big, torch.nn.Conv2d) and list(big.state_dict()) == ["weight", "bias"]
