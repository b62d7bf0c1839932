"""kernel_layers vs Diffusers, layer by layer: ResNet blocks, resampling, norms, feed-forward, embeddings,
VAE/UNet stages and the DiT pieces.  Each case loads the reference's weights with ``strict=True`` (same
state-dict keys) and compares outputs in float32."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from kernel_layers import activations, blocks_2d, dit_embeddings, embeddings, normalization, resnet, sampling  # noqa: E402
from kernel_layers.attention import Attention, AttentionMixin, slice_sizes  # noqa: E402
from kernel_layers.joint_attention import BackendOptions, JointAttentionSwitches, project_streams  # noqa: E402


def _pair(ours_cls, ref_cls, *args, **kwargs):
    torch.manual_seed(0)
    ref = ref_cls(*args, **kwargs).eval()
    for p in ref.parameters():  # zero-initialised projections (adaLN, gates) would hide mistakes
        p.data.add_(0.05 * torch.randn_like(p))
    ours = ours_cls(*args, **kwargs).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _close(a, b, atol=1e-5):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, atol)
        return
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max().item()


def _randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


RESNET_CASES = {
    "plain": dict(in_channels=16, out_channels=16, temb_channels=12, groups=4),
    "shortcut": dict(in_channels=16, out_channels=24, temb_channels=12, groups=4),
    "conv_shortcut": dict(in_channels=16, out_channels=24, temb_channels=12, groups=4, conv_shortcut=True),
    "scale_shift": dict(in_channels=16, out_channels=16, temb_channels=12, groups=4, time_embedding_norm="scale_shift"),
    "no_temb_down": dict(in_channels=16, out_channels=16, temb_channels=None, groups=4, down=True),
    "up_scaled": dict(in_channels=16, out_channels=8, temb_channels=12, groups=4, up=True, output_scale_factor=2.0),
}


@torch.no_grad()
@pytest.mark.parametrize("case", list(RESNET_CASES))
def test_resnet_block_matches_diffusers(case):
    from diffusers.models.resnet import ResnetBlock2D as Ref

    kw = RESNET_CASES[case]
    ours, ref = _pair(resnet.ResnetBlock2D, Ref, **kw)
    x = _randn(2, 16, 6, 6)
    temb = _randn(2, 12, seed=2) if kw["temb_channels"] else None
    _close(ours(x, temb), ref(x, temb))


@torch.no_grad()
@pytest.mark.parametrize("norm", ["ada_group", "spatial"])
def test_cond_norm_resnet_block_matches_diffusers(norm):
    from diffusers.models.resnet import ResnetBlockCondNorm2D as Ref

    kw = dict(in_channels=32, out_channels=64, temb_channels=6, groups=4, time_embedding_norm=norm)
    ours, ref = _pair(resnet.ResnetBlockCondNorm2D, Ref, **kw)  # SpatialNorm's group norm has 32 groups
    x = _randn(2, 32, 6, 6)
    temb = _randn(2, 6, seed=2) if norm == "ada_group" else _randn(2, 6, 3, 3, seed=2)
    _close(ours(x, temb), ref(x, temb))


@torch.no_grad()
@pytest.mark.parametrize("kw", [dict(use_conv=True), dict(use_conv=False), dict(use_conv_transpose=True),
                                dict(use_conv=True, out_channels=4, norm_type="rms_norm", eps=1e-5,
                                     elementwise_affine=True)])
def test_upsample_matches_diffusers(kw):
    from diffusers.models.upsampling import Upsample2D as Ref

    ours, ref = _pair(sampling.Upsample2D, Ref, 8, **kw)
    x = _randn(2, 8, 5, 7)
    _close(ours(x), ref(x))
    if not kw.get("use_conv_transpose"):
        _close(ours(x, output_size=(11, 13)), ref(x, output_size=(11, 13)))


@torch.no_grad()
@pytest.mark.parametrize("kw", [dict(use_conv=True), dict(use_conv=False), dict(use_conv=True, padding=0),
                                dict(use_conv=True, out_channels=4)])
def test_downsample_matches_diffusers(kw):
    from diffusers.models.downsampling import Downsample2D as Ref

    ours, ref = _pair(sampling.Downsample2D, Ref, 8, **kw)
    x = _randn(2, 8, 6, 8)
    _close(ours(x), ref(x))


@torch.no_grad()
def test_norms_match_diffusers():
    from diffusers.models import normalization as ref_norm

    x = _randn(2, 5, 16)
    emb = _randn(2, 16, seed=2)
    ours, ref = _pair(normalization.AdaLayerNormZero, ref_norm.AdaLayerNormZero, 16)
    _close(ours(x, emb=emb), ref(x, emb=emb))
    ours, ref = _pair(normalization.AdaLayerNormZero, ref_norm.AdaLayerNormZero, 16, num_embeddings=10)
    t, labels = torch.tensor([3, 7]), torch.tensor([1, 4])
    _close(ours(x, t, labels, hidden_dtype=torch.float32), ref(x, t, labels, hidden_dtype=torch.float32))
    for norm_type in ("layer_norm", "rms_norm"):
        ours, ref = _pair(normalization.AdaLayerNormContinuous, ref_norm.AdaLayerNormContinuous, 16, 12,
                          elementwise_affine=False, eps=1e-6, norm_type=norm_type)
        _close(ours(x, emb[:, :12]), ref(x, emb[:, :12]))
    ours, ref = _pair(normalization.RMSNorm, ref_norm.RMSNorm, 16, eps=1e-6, elementwise_affine=True)
    _close(ours(x), ref(x))
    ours, ref = _pair(normalization.AdaGroupNorm, ref_norm.AdaGroupNorm, 12, 8, num_groups=4)
    _close(ours(_randn(2, 8, 3, 3), emb[:, :12]), ref(_randn(2, 8, 3, 3), emb[:, :12]))
    with pytest.raises(ValueError, match="norm_type"):
        normalization.AdaLayerNormZero(16, norm_type="group_norm")


def test_modulate_and_adaln_norm():
    x, shift, scale = _randn(2, 3, 4), _randn(2, 4, seed=2), _randn(2, 4, seed=3)
    _close(normalization.modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None], 0)
    assert isinstance(normalization.adaln_norm(8), torch.nn.LayerNorm)
    assert isinstance(normalization.adaln_norm(8, "fp32_layer_norm", ("fp32_layer_norm",)), normalization.FP32LayerNorm)
    with pytest.raises(ValueError, match="'layer_norm'"):
        normalization.adaln_norm(8, "fp32_layer_norm")


@torch.no_grad()
@pytest.mark.parametrize("act", ["geglu", "gelu", "gelu-approximate", "geglu-approximate", "swiglu", "linear-silu"])
def test_feed_forward_matches_diffusers(act):
    from diffusers.models.attention import FeedForward as Ref

    ours, ref = _pair(activations.FeedForward, Ref, 16, dim_out=12, mult=2, activation_fn=act)
    x = _randn(2, 5, 16)
    _close(ours(x), ref(x))


@torch.no_grad()
def test_timestep_embeddings_match_diffusers():
    from diffusers.models import embeddings as ref_emb

    t = torch.tensor([1.0, 500.0, 999.0])
    ours, ref = _pair(embeddings.Timesteps, ref_emb.Timesteps, 32, True, 1)
    _close(ours(t), ref(t))
    ours, ref = _pair(embeddings.TimestepEmbedding, ref_emb.TimestepEmbedding, 32, 24, cond_proj_dim=8)
    feats, cond = _randn(3, 32), _randn(3, 8, seed=2)
    _close(ours(feats, cond), ref(feats, cond))
    ours, ref = _pair(embeddings.GaussianFourierProjection, ref_emb.GaussianFourierProjection, 16, log=True,
                      flip_sin_to_cos=True)
    _close(ours(t), ref(t))


@torch.no_grad()
def test_vae_stages_match_diffusers():
    from diffusers.models.unets import unet_2d_blocks as ref_blocks

    kw = dict(in_channels=16, temb_channels=None, resnet_groups=4, attention_head_dim=8)
    ours, ref = _pair(blocks_2d.UNetMidBlock2D, ref_blocks.UNetMidBlock2D, **kw)
    x = _randn(2, 16, 4, 4)
    _close(ours(x), ref(x))
    ours, ref = _pair(blocks_2d.DownEncoderBlock2D, ref_blocks.DownEncoderBlock2D, 16, 8, num_layers=2,
                      resnet_groups=4)
    _close(ours(x), ref(x))
    ours, ref = _pair(blocks_2d.UpDecoderBlock2D, ref_blocks.UpDecoderBlock2D, 16, 8, num_layers=2, resnet_groups=4)
    _close(ours(x), ref(x))


@torch.no_grad()
@pytest.mark.parametrize("max_size", [None, 8])
def test_patch_embed_matches_diffusers(max_size):
    from diffusers.models.embeddings import PatchEmbed as Ref

    kw = dict(height=8, width=8, patch_size=2, in_channels=4, embed_dim=16, pos_embed_max_size=max_size)
    ours, ref = _pair(dit_embeddings.PatchEmbed, Ref, **kw)
    for h, w in ((8, 8), (6, 10)):
        x = _randn(2, 4, h, w)
        _close(ours(x), ref(x))
    if max_size:
        with pytest.raises(ValueError, match="pos_embed_max_size"):
            ours(_randn(1, 4, 20, 20))


def test_sincos_table_matches_diffusers_bit_for_bit():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed as ref

    ours = dit_embeddings.get_2d_sincos_pos_embed(16, (3, 5), base_size=4, interpolation_scale=2.0)
    theirs = ref(16, (3, 5), base_size=4, interpolation_scale=2.0, output_type="pt")
    assert torch.equal(ours.float(), theirs.float())


@torch.no_grad()
def test_dit_conditioning_matches_diffusers():
    from diffusers.models import embeddings as ref_emb

    ours, ref = _pair(dit_embeddings.CombinedTimestepTextProjEmbeddings, ref_emb.CombinedTimestepTextProjEmbeddings,
                      16, 12)
    t, pooled = torch.tensor([3.0, 900.0]), _randn(2, 12)
    _close(ours(t, pooled), ref(t, pooled))
    for act in ("gelu_tanh", "silu", "silu_fp32"):
        ours, ref = _pair(dit_embeddings.PixArtAlphaTextProjection, ref_emb.PixArtAlphaTextProjection, 12, 16,
                          act_fn=act)
        _close(ours(pooled), ref(pooled))


def test_slice_sizes_rules():
    assert slice_sizes("auto", [4, 1]) == [2, 1]
    assert slice_sizes("max", [4, 2]) == [1, 1]
    assert slice_sizes(None, [4]) == [None]
    with pytest.raises(ValueError, match="entries"):
        slice_sizes([1], [4, 4])
    with pytest.raises(ValueError, match="between 1"):
        slice_sizes(5, [4])


class _ReversedJoint(BackendOptions):
    """A toy joint processor ([text, image] order) to check the shared switches keep a model's class."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        image, text = project_streams(attn, hidden_states, encoder_hidden_states)
        q, k, v = (torch.cat([b, a], dim=2) for a, b in zip(image, text))
        out = attn.merge_heads(attn.attend(q, k, v, backend=self.backend, slice_size=self.slice_size))
        return attn.to_out[0](out[:, encoder_hidden_states.shape[1]:])


class _JointModel(torch.nn.Module, JointAttentionSwitches):
    _attn_processor_cls = _ReversedJoint

    def __init__(self):
        super().__init__()
        self.attn = Attention(16, heads=4, dim_head=4, added_kv_proj_dim=8, context_pre_only=False,
                              processor=_ReversedJoint())


@torch.no_grad()
def test_joint_switches_keep_the_processor_class_and_numbers():
    torch.manual_seed(0)
    model = _JointModel()
    x, ctx = _randn(2, 6, 16), _randn(2, 3, 8, seed=2)
    expected = model.attn(x, ctx)
    for switch in (lambda: model.set_attention_slice("max"), lambda: model.set_attention_backend("math"),
                   model.fuse_qkv_projections, model.set_default_attn_processor):
        switch()
        assert all(type(p) is _ReversedJoint for p in model.attn_processors.values())
        _close(model.attn(x, ctx), expected)
    assert model.attn.processor.backend is None and isinstance(model, AttentionMixin)
