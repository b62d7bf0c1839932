"""LoRA on WuerstchenPriorPipeline (Diffusers 0.42.1 gives it StableDiffusionLoraLoaderMixin with unet_name "prior"):
a tiny LoRA built here for the prior (linear and 1x1 conv layers) and the CLIP text encoder loads into Diffusers'
pipeline and ours with the same numbers, from a dict and from Diffusers' saved file with alpha metadata; adapters
weigh, disable and unload as in Diffusers; bad LoRAs are ValueErrors.  Stable Cascade's pipelines and Würstchen's
decoder and combined pipelines have no LoRA methods in Diffusers 0.42.1, so none here."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from wuerstchen_fixtures import gen, prior_pipes

pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

RUN = dict(prompt=["horse", "a red car"], negative_prompt=["blurry", ""], num_inference_steps=2, height=128, width=128,
           guidance_scale=4.0)
RANK = 2
PRIOR_LAYERS = ("projection", "cond_mapper.0", "blocks.2.attention.to_q", "blocks.2.attention.to_v",
                "blocks.5.attention.to_out.0", "blocks.3.channelwise.0")
TEXT_LAYERS = ("encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc1")


def tiny_lora(pipe, seed: int = 0, text: bool = True) -> dict[str, torch.Tensor]:
    """peft-layout LoRA weights (``prior.`` / ``text_encoder.`` keys) for the tiny prior pipeline's layers."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    targets = [("prior", pipe.prior, n) for n in PRIOR_LAYERS]
    targets += [("text_encoder", pipe.text_encoder, n) for n in TEXT_LAYERS] if text else []
    for component, model, name in targets:
        layer = model.get_submodule(name)
        if isinstance(layer, torch.nn.Conv2d):
            down, up = (RANK, layer.in_channels, 1, 1), (layer.out_channels, RANK, 1, 1)
        else:
            down, up = (RANK, layer.in_features), (layer.out_features, RANK)
        state[f"{component}.{name}.lora_A.weight"] = torch.randn(down, generator=g) * 0.3
        state[f"{component}.{name}.lora_B.weight"] = torch.randn(up, generator=g) * 0.3
    return state


def pipes():
    """Diffusers' prior pipeline and ours, each with its own copy of the text encoder (LoRA goes into it)."""
    ref, ours = prior_pipes()
    ref.text_encoder = copy.deepcopy(ref.text_encoder)
    ours.text_encoder = copy.deepcopy(ours.text_encoder)
    return ref, ours


def embeddings(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(**RUN, generator=gen(0)).image_embeddings


def rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_lora_from_a_dict_matches_diffusers():
    ref, ours = pipes()
    plain = embeddings(ours)
    lora = tiny_lora(ours)
    ref.load_lora_weights(dict(lora), adapter_name="toy")
    ours.load_lora_weights(dict(lora), adapter_name="toy")
    expected, got = embeddings(ref), embeddings(ours)
    assert rel(got, plain) > 1e-2  # the LoRA changes the result
    assert rel(got, expected) < 1e-5
    assert ours.get_list_adapters() == {"prior": ["toy"], "text_encoder": ["toy"]}
    # weights per adapter, then off, then out: as Diffusers, and back to the plain pipeline
    for pipe in (ref, ours):
        pipe.set_adapters("toy", adapter_weights=0.5)
    assert rel(embeddings(ours), embeddings(ref)) < 1e-5
    ours.disable_lora()
    torch.testing.assert_close(embeddings(ours), plain, rtol=0, atol=0)
    ours.enable_lora()
    ours.unload_lora_weights()
    torch.testing.assert_close(embeddings(ours), plain, rtol=0, atol=0)
    assert not any("lora" in n for n, _ in ours.prior.named_modules())


def test_lora_file_saved_by_diffusers_with_alpha_metadata(tmp_path):
    ref, ours = pipes()
    lora = tiny_lora(ours, seed=1)
    prior_layers = {k[len("prior."):]: v for k, v in lora.items() if k.startswith("prior.")}
    text_layers = {k[len("text_encoder."):]: v for k, v in lora.items() if k.startswith("text_encoder.")}
    meta = dict(r=RANK, lora_alpha=4 * RANK, target_modules=list(PRIOR_LAYERS))
    diffusers.WuerstchenPriorPipeline.save_lora_weights(
        tmp_path / "theirs", unet_lora_layers=prior_layers, text_encoder_lora_layers=text_layers,
        unet_lora_adapter_metadata=meta,
        text_encoder_lora_adapter_metadata=dict(r=RANK, lora_alpha=RANK // 2, target_modules=list(TEXT_LAYERS)))
    ref.load_lora_weights(str(tmp_path / "theirs"), adapter_name="file")
    ours.load_lora_weights(str(tmp_path / "theirs"), adapter_name="file")
    expected, got = embeddings(ref), embeddings(ours)
    assert rel(got, expected) < 1e-5
    # without the metadata (alpha = rank) the numbers differ: the alphas were honoured
    ours.delete_adapters("file")
    ours.load_lora_weights(dict(lora), adapter_name="no-alpha")
    assert rel(embeddings(ours), expected) > 1e-3


def test_our_saved_file_loads_in_diffusers(tmp_path):
    from safetensors.torch import load_file

    ref, ours = pipes()
    lora = tiny_lora(ours, seed=2)
    prior_layers = {k[len("prior."):]: v for k, v in lora.items() if k.startswith("prior.")}
    type(ours).save_lora_weights(tmp_path, unet_lora_layers=prior_layers,
                                 unet_lora_adapter_metadata=dict(r=RANK, lora_alpha=3,
                                                                 target_modules=list(PRIOR_LAYERS)))
    keys = set(load_file(tmp_path / "pytorch_lora_weights.safetensors"))
    assert keys == {k for k in lora if k.startswith("prior.")}
    ref.load_lora_weights(str(tmp_path))
    ours.load_lora_weights(str(tmp_path))
    assert ours.get_list_adapters() == {"prior": ["default_0"]}
    assert rel(embeddings(ours), embeddings(ref)) < 1e-5
    with pytest.raises(ValueError, match="unet_lora_layers"):
        type(ours).save_lora_weights(tmp_path / "empty")


def test_fuse_and_unfuse():
    ref, ours = pipes()
    plain = embeddings(ours)
    ref.load_lora_weights(tiny_lora(ours), adapter_name="toy")
    with pytest.raises(ValueError, match="unet"):  # Diffusers' default components=["unet", "text_encoder"]
        ref.fuse_lora()
    ours.load_lora_weights(tiny_lora(ours), adapter_name="toy")
    with_lora = embeddings(ours)
    ours.fuse_lora()  # here: every LoRA component (the prior and the text encoder)
    assert ours.num_fused_loras == 1
    assert rel(embeddings(ours), with_lora) < 1e-5
    ours.unfuse_lora()
    ours.unload_lora_weights()
    assert rel(embeddings(ours), plain) < 1e-5


def test_bad_loras_are_value_errors_and_change_nothing():
    _, ours = pipes()
    plain = embeddings(ours)
    lora = tiny_lora(ours)
    with pytest.raises(ValueError, match="unet"):  # a UNet LoRA (SD) is not for this pipeline
        ours.load_lora_weights({"unet.down_blocks.0.lora_A.weight": torch.zeros(2, 4),
                                "unet.down_blocks.0.lora_B.weight": torch.zeros(4, 2)})
    missing = {k.replace("blocks.2.attention.to_q", "blocks.9.attention.to_q"): v for k, v in lora.items()}
    with pytest.raises(ValueError, match="blocks.9"):
        ours.load_lora_weights(missing)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours.load_lora_weights(dict(lora), scale=2.0)
    assert ours.get_list_adapters() == {}
    torch.testing.assert_close(embeddings(ours), plain, rtol=0, atol=0)


def test_stable_cascade_and_other_wuerstchen_pipelines_have_no_lora_in_diffusers_nor_here():
    import kernel_stable_cascade
    import kernel_wuerstchen

    for name in ("StableCascadePriorPipeline", "StableCascadeDecoderPipeline", "StableCascadeCombinedPipeline"):
        assert not hasattr(getattr(diffusers, name), "load_lora_weights")
        assert not hasattr(getattr(kernel_stable_cascade, name), "load_lora_weights")
    for name in ("WuerstchenDecoderPipeline", "WuerstchenCombinedPipeline"):
        assert not hasattr(getattr(diffusers, name), "load_lora_weights")
        assert not hasattr(getattr(kernel_wuerstchen, name), "load_lora_weights")
    assert hasattr(diffusers.WuerstchenPriorPipeline, "load_lora_weights")
    assert diffusers.WuerstchenPriorPipeline._lora_loadable_modules == kernel_wuerstchen.WuerstchenPriorPipeline(
        **{k: v for k, v in pipes()[1].components.items()})._lora_loadable_modules
