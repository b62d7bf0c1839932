"""Turn contracts into pytest cases (the ``parametrize_with_checks`` of scikit-learn, for plugins).

    @kernel_contracts.parametrize("DDIMScheduler", known_failures={"timestep_count": "why"})
    def test_ddim(contract_case):
        contract_case()

gives one test per contract with the id ``DDIMScheduler-<contract>``.  A known failure is an
``xfail(strict=True)`` carrying its reason: it must fail, and it is reported when it stops failing.
A component may declare its own known failures next to its code, as a class attribute
``_known_contract_failures = {"contract": "reason"}``; they apply wherever it is tested.
"""

from __future__ import annotations

from typing import Any, Iterable

import pytest

from kernel_contracts.engine import Failure, Subject, component_name, contracts_for, detect_kind, run_contract


class Case:
    """One contract on one component; calling it runs the contract (fails, skips or passes)."""

    def __init__(self, subject: Subject, contract: str):
        self.subject = subject
        self.contract = contract

    @property
    def id(self) -> str:
        return f"{self.subject.name}-{self.contract}"

    def __repr__(self) -> str:
        return f"Case({self.id})"

    def run(self, **options: Any) -> Failure | str | None:
        return run_contract(self.subject, contracts_for(self.subject.kind)[self.contract], options)

    def __call__(self, **options: Any) -> None:
        result = self.run(**options)
        if isinstance(result, Failure):
            pytest.fail(str(result), pytrace=False)
        if isinstance(result, str):
            pytest.skip(f"not applicable: {result}")


def _check_known(kind: str, name: str, known: dict[str, str]) -> None:
    unknown = set(known) - set(contracts_for(kind))
    if unknown:
        raise ValueError(
            f"known_failures for {name} names contracts that do not exist: {sorted(unknown)}; "
            f"{kind} contracts are: {', '.join(contracts_for(kind))}"
        )


def cases(
    component: Any,
    known_failures: dict[str, str] | None = None,
    *,
    kind: str | None = None,
    contracts: Iterable[str] | None = None,
    **options: Any,
) -> list:
    """One ``pytest.param(Case)`` per contract of ``component`` (a name, class, instance or factory)."""
    subject = Subject(component, kind, options)
    known = {**subject.known_failures, **(known_failures or {})}
    _check_known(subject.kind, subject.name, known)
    params = []
    for name in contracts_for(subject.kind):
        if contracts is not None and name not in contracts:
            continue
        marks = [pytest.mark.xfail(reason=known[name], strict=True)] if name in known else []
        case = Case(subject, name)
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def parametrize(
    component: Any,
    known_failures: dict[str, str] | None = None,
    *,
    argname: str = "contract_case",
    **kwargs: Any,
):
    """A ``pytest.mark.parametrize`` over every contract of ``component`` (or of each in a list)."""
    components = component if isinstance(component, (list, tuple)) else [component]
    params = []
    for comp in components:
        params.extend(cases(comp, known_failures, **kwargs))
    return pytest.mark.parametrize(argname, params)


def registered_names(kind: str) -> list[tuple[str, Any]]:
    """``(name, class or load error)`` for every registered component of ``kind``."""
    from kernel.registry import get_registry

    registry = get_registry()
    out = []
    for name in registry.names():
        try:
            obj = registry.resolve(name)
        except Exception as err:  # noqa: BLE001 - a broken plugin becomes a failing case
            out.append((name, err))
            continue
        if detect_kind(obj) == kind:
            out.append((name, obj))
    return out


def parametrize_registered(
    kind: str,
    known_failures: dict[str, dict[str, str]] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    *,
    argname: str = "contract_case",
):
    """Every contract of every registered component of ``kind`` (one case each).

    ``known_failures`` and ``options`` are keyed by registered name.
    """
    known_failures = known_failures or {}
    options = options or {}
    params = []
    for name, obj in registered_names(kind):
        if isinstance(obj, Exception):
            params.append(pytest.param(_LoadError(name, obj), id=f"{name}-load"))
            continue
        params.extend(cases(obj, known_failures.get(name), kind=kind, name=name, **options.get(name, {})))
    if not params:
        params.append(pytest.param(None, id=f"no-registered-{kind}", marks=pytest.mark.skip(reason=f"no {kind} is registered")))
    return pytest.mark.parametrize(argname, params)


class _LoadError:
    def __init__(self, name: str, err: Exception):
        self.name, self.err = name, err

    def __call__(self, **_: Any) -> None:
        pytest.fail(f"{self.name} could not be loaded: {type(self.err).__name__}: {self.err}", pytrace=False)


__all__ = ["Case", "cases", "parametrize", "parametrize_registered", "registered_names", "component_name"]
