"""UNet2DConditionModel against Diffusers (the oracle): same weights, same inputs, same outputs."""

from __future__ import annotations

import functools

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from kernel_unet import UNet2DConditionModel  # noqa: E402

ATOL = 1e-4
BASE = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
CONFIGS = {
    "sd1": BASE,
    "sd2_vpred": {**BASE, "attention_head_dim": (2, 4), "use_linear_projection": True, "upcast_attention": True,
                  "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                  "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")},
    "sdxl": {**BASE, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
             "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": (2, 4),
             "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
             "transformer_layers_per_block": (1, 2), "projection_class_embeddings_input_dim": 80, "cross_attention_dim": 64},
    "inpaint": {**BASE, "in_channels": 9},
    "pix2pix": {**BASE, "in_channels": 8},
    "lcm": {**BASE, "time_cond_proj_dim": 16},
    "class_proj_no_mid": {**BASE, "class_embed_type": "projection", "projection_class_embeddings_input_dim": 12,
                          "mid_block_type": None, "resnet_time_scale_shift": "scale_shift", "layers_per_block": 1},
    "resnet_mid_timestep_class": {**BASE, "mid_block_type": "UNetMidBlock2D", "class_embed_type": "timestep",
                                  "only_cross_attention": True, "time_embedding_act_fn": "silu"},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: extra intra-op threads only add contention on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.lru_cache(maxsize=None)
def _reference(name: str):
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**CONFIGS[name]).eval()


def _pair(name: str):
    ref = _reference(name)
    with torch.device("meta"):
        ours = UNet2DConditionModel(**CONFIGS[name]).eval()
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    ours.load_state_dict(state, strict=True, assign=True)  # same keys, no remapping
    return ref, ours


def _inputs(cfg: dict, batch: int, height: int = 16, width: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg["in_channels"], height, width, generator=g)
    cross = cfg["cross_attention_dim"]
    ehs = torch.randn(batch, 7, cross if isinstance(cross, int) else cross[0], generator=g)
    kw = {}
    if cfg.get("addition_embed_type") == "text_time":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 32, generator=g),
                                   "time_ids": torch.randn(batch, 6, generator=g)}
    if cfg.get("time_cond_proj_dim"):
        kw["timestep_cond"] = torch.randn(batch, cfg["time_cond_proj_dim"], generator=g)
    if cfg.get("class_embed_type") == "projection":
        kw["class_labels"] = torch.randn(batch, cfg["projection_class_embeddings_input_dim"], generator=g)
    if cfg.get("class_embed_type") == "timestep":
        kw["class_labels"] = torch.randint(0, 1000, (batch,), generator=g)
    return x, ehs, kw


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    return request.param, *_pair(request.param)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=atol, rtol=0), f"max abs diff {(a - b).abs().max().item():.3g}"


@torch.no_grad()
@pytest.mark.parametrize("batch,height,width", [(1, 16, 16), (3, 16, 24)])
def test_forward_matches_diffusers(pair, batch, height, width):
    name, ref, ours = pair
    x, ehs, kw = _inputs(CONFIGS[name], batch, height, width)
    _close(ours(x, 417, ehs, **kw).sample, ref(x, 417, ehs, **kw).sample)


@torch.no_grad()
@pytest.mark.parametrize("timestep", [3, 2.5, "0d", "1d", "batch"])
def test_timestep_forms(timestep):
    ref, ours = _pair("sd1")
    x, ehs, kw = _inputs(BASE, 2)
    t = {"0d": torch.tensor(11), "1d": torch.tensor([11]), "batch": torch.tensor([5, 900])}.get(timestep, timestep)
    _close(ours(x, t, ehs).sample, ref(x, t, ehs).sample)


@torch.no_grad()
def test_odd_sizes_forward_upsample_size():
    ref, ours = _pair("sd2_vpred")
    x, ehs, _ = _inputs(CONFIGS["sd2_vpred"], 2, 10, 14)
    _close(ours(x, 7, ehs).sample, ref(x, 7, ehs).sample)


@torch.no_grad()
def test_encoder_attention_mask_and_cross_attention_kwargs():
    ref, ours = _pair("sd1")
    x, ehs, _ = _inputs(BASE, 2)
    mask = torch.ones(2, 7)
    mask[0, 4:] = 0
    mask[1, 1:3] = 0
    expected = ref(x, 5, ehs, encoder_attention_mask=mask).sample
    _close(ours(x, 5, ehs, encoder_attention_mask=mask).sample, expected)
    # a masked-out token must not matter; a kept one must
    ehs2 = ehs.clone()
    ehs2[0, 5] += 10
    _close(ours(x, 5, ehs2, encoder_attention_mask=mask).sample[0], expected[0])
    assert not torch.allclose(ours(x, 5, ehs2).sample[0], ours(x, 5, ehs).sample[0], atol=1e-3)
    # cross_attention_kwargs such as a LoRA scale pass through without changing a plain model
    _close(ours(x, 5, ehs, cross_attention_kwargs={"scale": 0.5}).sample, ref(x, 5, ehs).sample)


@torch.no_grad()
@pytest.mark.parametrize("switch", ["sliced_auto", "sliced_max", "sliced_2", "math", "fused", "chunk0", "chunk1",
                                    "global_sliced"])
def test_attention_backends_and_switches_keep_outputs(switch):
    from kernel_layers import attention_backend

    ref, ours = _pair("sdxl")
    x, ehs, kw = _inputs(CONFIGS["sdxl"], 2)
    expected = ref(x, 9, ehs, **kw).sample
    if switch.startswith("sliced_"):
        arg = switch.split("_")[1]
        ours.set_attention_slice(int(arg) if arg.isdigit() else arg)
        assert all(p.backend == "sliced" for p in ours.attn_processors.values())
    elif switch == "math":
        ours.set_attention_backend("math")
    elif switch == "fused":
        ours.fuse_qkv_projections()
        assert any(k.endswith("to_qkv.weight") for k in ours.state_dict())
        assert any(k.endswith("to_kv.weight") for k in ours.state_dict())
    elif switch.startswith("chunk"):
        ours.enable_forward_chunking(chunk_size=1 if switch == "chunk0" else 5, dim=int(switch[-1]))
    if switch == "global_sliced":
        with attention_backend("sliced"):
            got = ours(x, 9, ehs, **kw).sample
    else:
        got = ours(x, 9, ehs, **kw).sample
    _close(got, expected)
    if switch == "fused":
        ours.unfuse_qkv_projections()
        assert not any("to_qkv" in k or "to_kv" in k for k in ours.state_dict())
        _close(ours(x, 9, ehs, **kw).sample, expected)


@torch.no_grad()
def test_processor_dict_roundtrip_and_diffusers_processor_runs_on_our_layers():
    from diffusers.models.attention_processor import AttnProcessor as DiffusersClassicProcessor

    ref, ours = _pair("sd1")
    x, ehs, _ = _inputs(BASE, 2)
    procs = ours.attn_processors
    assert set(procs) == set(ref.attn_processors)
    ours.set_attn_processor(DiffusersClassicProcessor())  # Diffusers' own processor, our Attention modules
    _close(ours(x, 3, ehs).sample, ref(x, 3, ehs).sample)
    ours.set_attn_processor(dict(procs))
    assert ours.attn_processors == procs
    ours.set_default_attn_processor()
    _close(ours(x, 3, ehs).sample, ref(x, 3, ehs).sample)
    with pytest.raises(ValueError, match="keys"):
        ours.set_attn_processor({"nope.processor": procs[next(iter(procs))]})


@torch.no_grad()
def test_controlnet_and_adapter_residuals():
    ref, ours = _pair("sd1")
    x, ehs, _ = _inputs(BASE, 2)
    g = torch.Generator().manual_seed(3)
    skips = ours.down_blocks[0](ours.conv_in(x), torch.zeros(2, 128))[1]
    shapes = [(2, 32, 16, 24)] + [s.shape for s in skips] + [(2, 64, 8, 12)] * 2
    down = tuple(torch.randn(s, generator=g) for s in shapes)
    mid = torch.randn(2, 64, 8, 12, generator=g)
    _close(ours(x, 4, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample,
           ref(x, 4, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample)
    adapter = [torch.randn(2, 32, 16, 24, generator=g), torch.randn(2, 64, 8, 12, generator=g)]
    _close(ours(x, 4, ehs, down_intrablock_additional_residuals=list(adapter)).sample,
           ref(x, 4, ehs, down_intrablock_additional_residuals=list(adapter)).sample)


@torch.no_grad()
def test_freeu_matches():
    ref, ours = _pair("sd2_vpred")
    x, ehs, _ = _inputs(CONFIGS["sd2_vpred"], 2)
    for m in (ref, ours):
        m.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    _close(ours(x, 8, ehs).sample, ref(x, 8, ehs).sample)
    ours.disable_freeu()
    ref.disable_freeu()
    _close(ours(x, 8, ehs).sample, ref(x, 8, ehs).sample)


def test_save_load_both_ways(tmp_path):
    ref, ours = _pair("sdxl")
    x, ehs, kw = _inputs(CONFIGS["sdxl"], 2)
    ref.save_pretrained(tmp_path / "from_diffusers")
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "from_diffusers")
    ours.save_pretrained(tmp_path / "from_kernel", max_shard_size="200KB")
    back = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "from_kernel")
    with torch.no_grad():
        expected = ref(x, 2, ehs, **kw).sample
        _close(loaded(x, 2, ehs, **kw).sample, expected)
        _close(back(x, 2, ehs, **kw).sample, expected)
    assert dict(loaded.config)["transformer_layers_per_block"] == [1, 2]


@torch.no_grad()
def test_forward_matches_diffusers_with_every_conv_on_the_gemm_path(monkeypatch):
    from kernel_layers.conv import Conv2d

    ref, ours = _pair("sd1")
    x, ehs, kw = _inputs(CONFIGS["sd1"], 2)
    expected = ref(x, 417, ehs, **kw).sample
    monkeypatch.setattr(Conv2d, "gemm_min_weight_bytes", 0)
    monkeypatch.setattr(Conv2d, "gemm_max_positions", 1 << 30)
    _close(ours(x, 417, ehs, **kw).sample, expected)
