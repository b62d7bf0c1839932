"""Adapter and quantizer contracts (:class:`kernel.protocols.Adapter`, ``Quantizer``).

The plugin supplies the adapter/quantizer (``component``: a factory), the model it applies to
(``contract_model()`` hook or ``model=`` option: a factory) and inputs for that model
(``contract_inputs(model, batch_size, generator)``).

Quantizer declarations: ``tolerance`` (relative max error of the outputs; default: the
quantizer's ``tolerance`` attribute, else 0.1) and ``compression`` (weight memory shrinks at least
by this factor; default: the quantizer's ``compression`` attribute, else any shrink).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from kernel_contracts.engine import NotApplicable, Subject, contract
from kernel_contracts.models import MODEL_BUDGET, forward, inputs_for, model_examples


def _model(subject: Subject, opts: dict) -> Any:
    factory = opts.get("contract_model") or opts.get("model")
    if factory is None:
        raise NotApplicable("the plugin declares no model to apply to (contract_model / model=)")
    model = subject.cached("model", factory)
    model = copy.deepcopy(model)
    model.eval()
    return model


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- adapter
@contract("adapter", "remove_restores_model", examples=model_examples, budget=MODEL_BUDGET)
def remove_restores_model(subject: Subject, ex: dict, opts: dict) -> None:
    """``apply(model)`` then ``remove(model)`` restores the exact weights and outputs."""
    model = _model(subject, opts)
    inputs = inputs_for(subject, opts, model, ex)
    before_state, before_out = _state(model), forward(model, inputs)
    adapter = subject.instance()
    adapter.apply(model, 1.0)
    adapter.remove(model)
    after_state = _state(model)
    assert set(after_state) == set(before_state), f"state-dict keys changed: {sorted(set(after_state) ^ set(before_state))[:5]}"
    changed = [k for k in before_state if not torch.equal(before_state[k], after_state[k])]
    assert not changed, f"weights not restored exactly: {changed[:5]}"
    after_out = forward(model, inputs)
    assert torch.equal(before_out, after_out), f"outputs not restored (max diff {(before_out - after_out).abs().max().item():.3g})"


@contract("adapter", "scale_zero_is_identity", examples=model_examples, budget=MODEL_BUDGET)
def scale_zero_is_identity(subject: Subject, ex: dict, opts: dict) -> None:
    """An adapter applied at scale 0 gives the same outputs as no adapter."""
    model = _model(subject, opts)
    inputs = inputs_for(subject, opts, model, ex)
    base = forward(model, inputs)
    adapter = subject.instance()
    adapter.apply(model, 0.0)
    out = forward(model, inputs)
    adapter.remove(model)
    diff = (base - out).abs().max().item()
    assert diff <= float(opts.get("atol", 1e-6)), f"scale 0 changes the outputs by {diff:.3g}"


# --------------------------------------------------------------------------- quantizer
def _bytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _quantized(subject: Subject, opts: dict) -> tuple[Any, Any, Any]:
    model = _model(subject, opts)
    quantizer = subject.instance()
    qmodel = quantizer.quantize(copy.deepcopy(model))
    return model, quantizer, qmodel if qmodel is not None else model


@contract("quantizer", "outputs_within_tolerance", examples=model_examples, budget=MODEL_BUDGET)
def outputs_within_tolerance(subject: Subject, ex: dict, opts: dict) -> None:
    """The quantized module's outputs are within the stated relative tolerance of full precision."""
    model, quantizer, qmodel = _quantized(subject, opts)
    inputs = inputs_for(subject, opts, model, ex)
    ref, out = forward(model, inputs).float(), forward(qmodel, inputs).float()
    tol = float(opts.get("tolerance") or getattr(quantizer, "tolerance", 0.1))
    err = (ref - out).abs().max().item() / max(ref.abs().max().item(), 1e-12)
    assert err <= tol, f"relative error {err:.3g} exceeds the stated tolerance {tol}"


@contract("quantizer", "memory_shrinks")
def memory_shrinks(subject: Subject, ex: Any, opts: dict) -> None:
    """Weight memory shrinks by the stated factor."""
    model, quantizer, qmodel = _quantized(subject, opts)
    before, after = _bytes(model), _bytes(qmodel)
    factor = opts.get("compression") or getattr(quantizer, "compression", None)
    if factor:
        assert after * float(factor) <= before * 1.05, f"{before} -> {after} bytes; stated compression {factor}x"
    else:
        assert after < before, f"weights did not shrink ({before} -> {after} bytes)"


@contract("quantizer", "dequantize_restores_dtype")
def dequantize_restores_dtype(subject: Subject, ex: Any, opts: dict) -> None:
    """``dequantize`` gives back parameters in their original dtypes."""
    model, quantizer, qmodel = _quantized(subject, opts)
    restored = quantizer.dequantize(qmodel)
    restored = restored if restored is not None else qmodel
    want = {n: p.dtype for n, p in model.named_parameters()}
    got = {n: p.dtype for n, p in restored.named_parameters()}
    wrong = {n: (want[n], got.get(n)) for n in want if got.get(n) != want[n]}
    assert not wrong, f"dtypes not restored: {dict(list(wrong.items())[:5])}"
