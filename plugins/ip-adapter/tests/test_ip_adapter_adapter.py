"""``IPAdapter`` as a :class:`kernel.protocols.Adapter` on a bare UNet: the contract suite, and the UNet's numbers
against Diffusers' UNet with the same IP-Adapter (``encoder_hid_dim_type="ip_image_proj"``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import ip_fixtures as ipf  # noqa: E402
from ip_fixtures import single_thread  # noqa: E402,F401

import kernel_contracts  # noqa: E402
from kernel.protocols import Adapter  # noqa: E402
from kernel_ip_adapter import IPAdapter, IPAdapterAttnProcessor, MultiIPAdapterImageProjection, ip_processors  # noqa: E402

CONTRACT_COVERS = ["IPAdapter"]
pytestmark = pytest.mark.usefixtures("single_thread")


def _unet():
    return ipf.fx.unet(seed=0)[1]


def _adapter():
    theirs = ipf.fx.unet(seed=0)[0]
    return IPAdapter([ipf.random_ip_adapter(theirs, "ip"), ipf.random_ip_adapter(theirs, "plus", seed=1)])


def _inputs(model, batch_size, generator):
    width, embed = ipf.VISION["projection_dim"], ipf.VISION["hidden_size"]
    return dict(sample=torch.randn(batch_size, 4, 16, 16, generator=generator), timestep=torch.tensor(10),
                encoder_hidden_states=torch.randn(batch_size, 7, 32, generator=generator),
                added_cond_kwargs={"image_embeds": [torch.randn(batch_size, 1, width, generator=generator),
                                                    torch.randn(batch_size, 2, 5, embed, generator=generator)]})


class TestIPAdapterContract(kernel_contracts.AdapterContract):
    component = staticmethod(_adapter)
    contract_options = {"contract_model": _unet, "contract_inputs": _inputs}


def test_ip_adapter_fits_the_protocol_and_is_registered():
    import kernel

    assert isinstance(_adapter(), Adapter)
    assert kernel.component("IPAdapter") is IPAdapter


@torch.no_grad()
def test_unet_with_ip_adapters_matches_diffusers():
    theirs, ours = ipf.fx.unet(seed=0)
    states = [ipf.random_ip_adapter(theirs, "ip"), ipf.random_ip_adapter(theirs, "plus", seed=1)]
    theirs._load_ip_adapter_weights(states)
    IPAdapter(states).apply(ours, 0.8)
    for p in theirs.attn_processors.values():
        if hasattr(p, "scale"):
            p.scale = [0.8, 0.8]
    x = _inputs(ours, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(**x).sample, theirs(**x).sample, atol=1e-5, rtol=0)
    assert isinstance(ours.encoder_hid_proj, MultiIPAdapterImageProjection)
    # the same module names as Diffusers: a Diffusers-built state dict loads as is
    ip_keys = {k for k in theirs.state_dict() if "_ip." in k or k.startswith("encoder_hid_proj.")}
    assert ip_keys == {k for k in ours.state_dict() if "_ip." in k or k.startswith("encoder_hid_proj.")}
    names = {k[: -len(".processor")] for k, p in theirs.attn_processors.items() if hasattr(p, "to_k_ip")}
    assert set(ip_processors(ours)) == names
    assert all(isinstance(p, IPAdapterAttnProcessor) and p.scale == [0.8, 0.8] for p in ip_processors(ours).values())


@torch.no_grad()
def test_without_image_embeds_the_unet_says_what_it_needs():
    unet = _unet()
    _adapter().apply(unet)
    x = _inputs(unet, 1, torch.Generator().manual_seed(0))
    x.pop("added_cond_kwargs")
    with pytest.raises(ValueError, match="image_embeds"):
        unet(**x)
