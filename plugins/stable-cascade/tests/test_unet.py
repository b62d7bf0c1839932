"""StableCascadeUNet against Diffusers' on the same random weights (stage C and stage B configs)."""

from __future__ import annotations

import pytest
import torch

from cascade_fixtures import DECODER, PRIOR, decoder_inputs, prior_inputs, randomize
from kernel_stable_cascade import StableCascadeUNet

diffusers = pytest.importorskip("diffusers")


def pair(config):
    ours = randomize(StableCascadeUNet(**config))
    ref = diffusers.StableCascadeUNet(**config).eval()
    ref.load_state_dict(ours.state_dict())  # strict: same layout both ways
    return ours, ref


@pytest.mark.parametrize("config,inputs", [(PRIOR, prior_inputs), (DECODER, decoder_inputs)], ids=["prior", "decoder"])
def test_parity_with_diffusers(config, inputs):
    ours, ref = pair(config)
    assert set(ours.state_dict()) == set(ref.state_dict())
    x = inputs()
    with torch.no_grad():
        a, b = ours(**x).sample, ref(**x).sample
    assert a.shape == x["sample"].shape
    assert (a - b).abs().max() < 1e-5


def test_decoder_pixels_and_sca_and_odd_size():
    ours, ref = pair(DECODER)
    x = decoder_inputs(batch=1, size=12)  # 12 -> 6 -> 3 -> 1: the up path resizes to the skip
    x["pixels"] = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        a = ours(**x).sample
        b = ref(**x).sample
        c = ours(**dict(x, sca=torch.tensor([0.3]))).sample
        d = ref(**dict(x, sca=torch.tensor([0.3]))).sample
    assert (a - b).abs().max() < 1e-5 and (c - d).abs().max() < 1e-5
    assert (a - c).abs().max() > 1e-4  # sca reaches the output


def test_prior_pooled_only_and_2d_pooled():
    ours, ref = pair(PRIOR)
    x = prior_inputs()
    x.pop("clip_text"), x.pop("clip_img")
    with torch.no_grad():
        a, b = ours(**x).sample, ref(**x).sample
        c = ours(**dict(x, clip_text_pooled=x["clip_text_pooled"][:, 0])).sample
    assert (a - b).abs().max() < 1e-5
    assert torch.equal(a, c)


def test_save_load_round_trip_and_diffusers_folder(tmp_path):
    ours, ref = pair(DECODER)
    ours.save_pretrained(tmp_path / "ours")
    loaded = diffusers.StableCascadeUNet.from_pretrained(tmp_path / "ours").eval()
    ref.save_pretrained(tmp_path / "ref")
    back = StableCascadeUNet.from_pretrained(tmp_path / "ref").eval()
    x = decoder_inputs(batch=1)
    with torch.no_grad():
        a = ours(**x).sample
        assert (loaded(**x).sample - a).abs().max() < 1e-6
        assert (back(**x).sample - a).abs().max() < 1e-6


def test_gradient_checkpointing_same_gradients():
    model = randomize(StableCascadeUNet(**PRIOR)).train()
    model.clip_txt_pooled_mapper.weight.grad = None
    x = prior_inputs(batch=1)
    torch.manual_seed(0)
    model.eval()
    model(**x).sample.square().mean().backward()
    g0 = model.embedding[1].weight.grad.clone()
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(**x).sample.square().mean().backward()
    assert torch.allclose(model.embedding[1].weight.grad, g0, atol=1e-6)


@pytest.mark.parametrize("kwargs,name", [
    (dict(down_num_layers_per_block=(1,)), "down_num_layers_per_block"),
    (dict(block_types_per_layer=(("SDCascadeResBlock", "Nope"),) * 2), "block_types_per_layer"),
    (dict(switch_level=(True, True)), "switch_level"),
])
def test_bad_config(kwargs, name):
    with pytest.raises(ValueError, match=name):
        StableCascadeUNet(**dict(PRIOR, **kwargs))


def test_bad_sample():
    model = StableCascadeUNet(**PRIOR)
    with pytest.raises(ValueError, match="sample"):
        model(torch.zeros(16, 8, 8), torch.zeros(1), torch.zeros(1, 1, 32))


def test_scalar_ratio_and_batched_sca():
    ours, ref = pair(DECODER)
    x = decoder_inputs(batch=2)
    x["timestep_ratio"] = torch.tensor([0.4, 0.4])
    with torch.no_grad():
        want = ref(**x).sample
        assert (ours(**dict(x, timestep_ratio=0.4)).sample - want).abs().max() < 1e-5
        sca = torch.tensor([0.2, 0.7])
        both = ours(**dict(x, sca=sca)).sample
        first = ref(**{k: v[:1] for k, v in x.items()}, sca=sca[:1]).sample  # Diffusers takes a 1-element sca only
    assert (both[:1] - first).abs().max() < 1e-5


def test_bilinear_switch_and_patch_size():
    config = dict(PRIOR, switch_level=(True,), patch_size=2, self_attn=(True, False), clip_seq=2)
    ours, ref = pair(config)
    x = prior_inputs(batch=1, size=8)
    with torch.no_grad():
        a, b = ours(**x).sample, ref(**x).sample
    assert a.shape == x["sample"].shape
    assert (a - b).abs().max() < 1e-5
