"""Base test classes: subclass one, name the component, and every contract becomes a test method.

    from kernel_contracts import SchedulerContract

    class TestEuler(SchedulerContract):
        component = "EulerDiscreteScheduler"   # a registered name, a class, or a factory

Optional class attributes: ``known_failures = {"contract": "reason"}`` (strict xfail, never a
skip; added to those the component declares itself in ``_known_contract_failures``) and ``contract_options = {...}`` (the plugin's declarations, see each kind's module).
Hooks a plugin may define as methods: ``contract_inputs(self, model, batch_size, generator)``
(example inputs for a model), ``contract_model(self)`` (the model an adapter or quantizer is
applied to).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from kernel_contracts.engine import Failure, Subject, contracts_for, run_contract

_subjects: dict[type, Subject] = {}
_HOOKS = ("contract_inputs", "contract_model", "exact_model_output")


class _ContractTests:
    kind: ClassVar[str] = ""
    component: ClassVar[Any] = None
    known_failures: ClassVar[dict[str, str]] = {}
    contract_options: ClassVar[dict[str, Any]] = {}

    def contract_subject(self) -> Subject:
        cls = type(self)
        if cls not in _subjects:
            component = cls.component  # class access: a plain function stays unbound
            if component is None:
                raise TypeError(f"{cls.__name__} must set `component` (a registered name, a class or a factory)")
            options = dict(cls.contract_options)
            for hook in _HOOKS:
                if hasattr(self, hook) and hook not in options:
                    options[hook] = getattr(self, hook)
            _subjects[cls] = Subject(component, self.kind, options)
        return _subjects[cls]

    def _run(self, request: Any, contract: str) -> None:
        subject = self.contract_subject()
        known = {**subject.known_failures, **type(self).known_failures}
        unknown = set(known) - set(contracts_for(self.kind))
        if unknown:
            raise ValueError(f"known_failures names contracts that do not exist: {sorted(unknown)}")
        if contract in known:
            request.applymarker(pytest.mark.xfail(reason=known[contract], strict=True))
        result = run_contract(subject, contracts_for(self.kind)[contract])
        if isinstance(result, Failure):
            pytest.fail(str(result), pytrace=False)
        if isinstance(result, str):
            pytest.skip(f"not applicable: {result}")


def _method(contract: str, doc: str):
    def test(self, request):
        self._run(request, contract)

    test.__name__ = f"test_{contract}"
    test.__doc__ = doc
    return test


def _with_contracts(kind: str, name: str, doc: str) -> type:
    namespace: dict[str, Any] = {"kind": kind, "__doc__": doc, "__module__": __name__}
    for cname, c in contracts_for(kind).items():
        namespace[f"test_{cname}"] = _method(cname, c.doc)
    return type(name, (_ContractTests,), namespace)


SchedulerContract = _with_contracts("scheduler", "SchedulerContract", "Every scheduler contract as a test method.")
DenoiserContract = _with_contracts("denoiser", "DenoiserContract", "Every denoiser contract as a test method.")
AutoencoderContract = _with_contracts("autoencoder", "AutoencoderContract", "Every autoencoder contract as a test method.")
ConditionerContract = _with_contracts("conditioner", "ConditionerContract", "Every conditioner contract as a test method.")
AdapterContract = _with_contracts("adapter", "AdapterContract", "Every adapter contract as a test method.")
QuantizerContract = _with_contracts("quantizer", "QuantizerContract", "Every quantizer contract as a test method.")
PipelineContract = _with_contracts("pipeline", "PipelineContract", "Every pipeline contract as a test method.")
GuiderContract = _with_contracts("guider", "GuiderContract", "Every guider contract as a test method.")

BASE_CLASSES = {
    c.__name__: c
    for c in (SchedulerContract, DenoiserContract, AutoencoderContract, ConditionerContract, AdapterContract,
              QuantizerContract, PipelineContract, GuiderContract)
}
