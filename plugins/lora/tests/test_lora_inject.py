"""``kernel_lora.layers.inject``: the direct path (peft's layers built for the known paths, tensors assigned)
leaves the model exactly as peft's model-level ``inject_adapter_in_model`` + ``set_peft_model_state_dict``
(the path Diffusers takes) does."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import lora_fixtures as lf  # noqa: E402
from lora_fixtures import single_thread  # noqa: E402,F401

from kernel_lora import LoraAdapter, layers  # noqa: E402
from kernel_lora.formats import LoraWeight  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
LAYER_ATTRS = ("r", "lora_alpha", "scaling", "use_rslora", "lora_bias", "active_adapters", "merged_adapters",
               "in_features", "out_features", "disable_adapters")


def _unet(dtype=torch.float32):
    return lf.fx.unet(seed=0)[1].to(dtype)


def _loras(model):
    """Two adapters: ``a`` on every target (linear and conv, per-layer alphas through kohya names), ``b`` of
    another rank on the attention projections, with a ``lora_B`` bias."""
    a = lf.random_lora(model, seed=3)
    alphas = {k[: -len(".lora_A.weight")]: (2.0 if i % 3 else 6.0) for i, k in enumerate(sorted(a))
              if k.endswith(".lora_A.weight")}
    a = lf.to_kohya(a, "lora_unet_", alphas)
    b = lf.random_lora(model, lf.UNET_TARGETS[:4], rank=6, seed=4)
    g = torch.Generator().manual_seed(5)
    for key in [k for k in b if k.endswith(".lora_B.weight")]:
        b[key.replace(".weight", ".bias")] = torch.randn(b[key].shape[0], generator=g) * 0.1
    return {"a": a, "b": b}


def _load(monkeypatch, through_peft: bool, model, loras, scales=(1.0, 0.5)):
    monkeypatch.setattr(layers, "_needs_peft_model", lambda *args: through_peft)
    for (name, state), scale in zip(loras.items(), scales):
        LoraAdapter(state, adapter_name=name).apply(model, scale)
    return model


def _assert_same_model(m1, m2):
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert list(s1) == list(s2)
    for key in s1:
        assert s1[key].dtype == s2[key].dtype and s1[key].device == s2[key].device, key
        assert torch.equal(s1[key], s2[key]), key
    assert {n: p.requires_grad for n, p in m1.named_parameters()} == {n: p.requires_grad for n, p in m2.named_parameters()}
    assert [(n, type(m)) for n, m in m1.named_modules()] == [(n, type(m)) for n, m in m2.named_modules()]
    t1, t2 = layers.tuner_layers(m1), layers.tuner_layers(m2)
    assert [p for p, _ in t1] == [p for p, _ in t2] and t1
    for (path, x), (_, y) in zip(t1, t2):
        for attr in LAYER_ATTRS:
            assert getattr(x, attr) == getattr(y, attr), (path, attr)
    assert list(m1.peft_config) == list(m2.peft_config)
    for name, config in m1.peft_config.items():
        other = m2.peft_config[name]
        for field in ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "lora_bias", "inference_mode", "peft_type"):
            assert getattr(config, field) == getattr(other, field), (name, field)


@torch.no_grad()
def test_direct_path_matches_peft_model_injection(monkeypatch):
    from peft.utils import get_peft_model_state_dict

    loras = _loras(_unet())
    direct = _load(monkeypatch, False, _unet(), loras)
    reference = _load(monkeypatch, True, _unet(), loras)
    _assert_same_model(direct, reference)
    assert {type(layer).__name__ for _, layer in layers.tuner_layers(direct)} == {"Linear", "Conv2d"}
    for name in loras:
        d, r = get_peft_model_state_dict(direct, adapter_name=name), get_peft_model_state_dict(reference, adapter_name=name)
        assert list(d) == list(r) and len(d) > 0 and all(torch.equal(d[k], r[k]) for k in d)
    g = torch.Generator().manual_seed(0)
    x = dict(sample=torch.randn(1, 4, 16, 16, generator=g), timestep=torch.tensor(10),
             encoder_hidden_states=torch.randn(1, 7, 32, generator=g))
    out = direct(**x).sample
    assert torch.equal(out, reference(**x).sample)
    layers.set_enabled(direct, False)
    assert (out - direct(**x).sample).abs().max() > 1e-3  # the adapters do act


def test_direct_path_in_the_base_dtype_and_keeps_base_requires_grad(monkeypatch):
    loras = _loras(_unet())
    models = []
    for through in (False, True):
        model = _unet(torch.bfloat16)
        for i, p in enumerate(model.parameters()):
            p.requires_grad_(i % 2 == 0)
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        _load(monkeypatch, through, model, loras)
        after = {n.replace(".base_layer", ""): p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n}
        assert after == flags
        lora = [p for n, p in model.named_parameters() if ".lora_" in n]
        assert lora and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in lora)
        models.append(model)
    _assert_same_model(*models)


@torch.no_grad()
def test_loading_next_to_a_fused_adapter_unfuses_it_as_peft_does(monkeypatch):
    loras = _loras(_unet())
    models = []
    for through in (False, True):
        model = _load(monkeypatch, through, _unet(), {"a": loras["a"]})
        base = {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k}
        assert layers.merge(model, 1.0, None, safe=False) == {"a"}
        with pytest.warns(UserWarning, match="Unmerging"):
            _load(monkeypatch, through, model, {"b": loras["b"]})
        assert not layers.merged_adapters(model)
        for key, value in base.items():
            torch.testing.assert_close(model.state_dict()[key], value, atol=1e-5, rtol=0)
        models.append(model)
    _assert_same_model(*models)


@torch.no_grad()
def test_a_layer_without_bias_in_an_adapter_with_biases_gets_a_zero_one(monkeypatch):
    model = _unet()
    state = lf.random_lora(model, ("to_q", "to_k"), seed=6)
    with_bias = sorted(k for k in state if k.endswith("to_q.lora_B.weight"))[0]
    state[with_bias.replace(".weight", ".bias")] = torch.ones(state[with_bias].shape[0])
    _load(monkeypatch, False, model, {"x": state}, scales=(1.0,))
    biases = {p: layer.lora_B["x"].bias for p, layer in layers.tuner_layers(model)}
    assert len(biases) == sum(k.endswith(".lora_A.weight") for k in state)
    for path, bias in biases.items():
        expected = 1.0 if f"{path}.lora_B.weight" == with_bias else 0.0
        assert bias.device.type == "cpu" and torch.equal(bias, torch.full_like(bias, expected)), path


def test_direct_path_does_not_use_the_model_level_machinery(monkeypatch):
    import peft

    import peft.utils.save_and_load as save_and_load

    def refuse(*args, **kwargs):
        raise AssertionError("model-level peft injection used")

    monkeypatch.setattr(peft, "inject_adapter_in_model", refuse)
    monkeypatch.setattr(peft, "set_peft_model_state_dict", refuse)
    monkeypatch.setattr(save_and_load, "set_peft_model_state_dict", refuse)
    model = _unet()
    LoraAdapter(lf.random_lora(model, seed=3), adapter_name="a").apply(model)
    assert layers.adapter_names(model) == ["a"] and layers.tuner_layers(model)


def test_tensor_parallel_base_layers_take_peft_model_injection(monkeypatch):
    model = _unet()
    state = lf.random_lora(model, ("to_q",), seed=3)
    fitted, modules = LoraAdapter(state, adapter_name="a")._check(model)
    calls = []
    monkeypatch.setattr(layers, "_inject_through_peft", lambda *args: calls.append(args[1]))
    monkeypatch.setattr(layers, "_inject_direct", lambda *args: calls.append("direct"))
    layers.inject(model, "a", fitted, modules)
    next(iter(modules.values()))._hf_tp_plan = "colwise"
    layers.inject(model, "b", fitted, modules)
    del next(iter(modules.values()))._hf_tp_plan
    layers.inject(model, "c", fitted, modules, through_peft_model=True)
    layers.inject(model, "d", fitted, modules)
    assert calls == ["direct", "b", "c", "direct"]


def test_a_weight_of_the_wrong_shape_is_refused():
    model = _unet()
    path = next(p for p, m in model.named_modules() if p.endswith("to_q"))
    module = model.get_submodule(path)
    bad = LoraWeight(down=torch.zeros(4, module.in_features + 1), up=torch.zeros(module.out_features, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=rf"{path}: peft's layer has lora_A.weight of shape"):
            layers.inject(model, "bad", {path: bad}, {path: module})
