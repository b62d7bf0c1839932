"""The machinery: contracts, the subject under test, search settings, and running a contract.

A *contract* is a property of one component kind (scheduler, denoiser, ...) plus, optionally,
a Hypothesis strategy that draws examples for it (configs, step counts, shapes, seeds).
Running a contract searches the strategy with :func:`hypothesis.find` for an example on which
the property fails; the shrunk example and the error it raised become a :class:`Failure`.

The same runner backs :func:`kernel_contracts.check`, :func:`kernel_contracts.parametrize` and
the base test classes, so a failure reads the same wherever it is reported.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import random
import traceback
from typing import Any, Callable

import hypothesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st

from kernel import protocols

# --------------------------------------------------------------------------- settings
#: Search budgets.  ``ci`` is short and reproducible (fixed seed); ``thorough`` is for releases.
PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"max_examples": 5, "max_steps": 25, "seed": 0, "compile": False, "shrink": True},
    "dev": {"max_examples": 25, "max_steps": 50, "seed": None, "compile": False, "shrink": True},
    "thorough": {"max_examples": 150, "max_steps": 50, "seed": None, "compile": True, "shrink": True},
}

_session_options: dict[str, Any] = {"profile": "ci"}


def set_session_options(**options: Any) -> None:
    """Defaults for every run in this process (the pytest plugin sets them from the command line)."""
    for key, value in options.items():
        if value is not None:
            _session_options[key] = value


def resolve_options(options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Profile defaults, overridden by session options, overridden by ``options``."""
    merged = {**_session_options, **{k: v for k, v in (options or {}).items() if v is not None}}
    profile = merged.get("profile", "ci")
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not known; accepted values: {', '.join(PROFILES)}")
    return {**PROFILES[profile], **merged}


# --------------------------------------------------------------------------- results
@dataclasses.dataclass
class Failure:
    """One broken contract: its name, the falsifying example and what went wrong."""

    contract: str
    example: Any
    message: str
    component: str = ""

    def __str__(self) -> str:
        head = f"{self.component}: " if self.component else ""
        return f"{head}contract {self.contract!r} failed\n  falsifying example: {self.example!r}\n  {self.message}"


class NotApplicable(Exception):
    """Raised by a property (or an applicability check) when the contract does not apply."""


# --------------------------------------------------------------------------- contracts
@dataclasses.dataclass
class Contract:
    kind: str
    name: str
    prop: Callable[..., None]
    examples: Callable[..., Any] | None = None  # (subject) -> SearchStrategy
    applies: Callable[..., str | None] | None = None  # (subject) -> reason it does not apply, or None
    budget: float = 1.0  # fraction of max_examples this contract uses (expensive ones use less)
    doc: str = ""


CONTRACTS: dict[str, dict[str, Contract]] = {kind: {} for kind in protocols.PROTOCOLS}


def contract(kind: str, name: str | None = None, *, examples=None, applies=None, budget: float = 1.0):
    """Register ``prop(subject, example)`` as contract ``name`` of ``kind``."""

    def wrap(fn: Callable) -> Callable:
        cname = name or fn.__name__
        CONTRACTS[kind][cname] = Contract(kind, cname, fn, examples, applies, budget, (fn.__doc__ or "").strip())
        return fn

    return wrap


def contracts_for(kind: str) -> dict[str, Contract]:
    _load_all()
    if kind not in CONTRACTS:
        raise ValueError(f"kind={kind!r} is not known; accepted values: {', '.join(CONTRACTS)}")
    return CONTRACTS[kind]


def _load_all() -> None:
    # The contract modules register themselves on import.
    from kernel_contracts import adapters, conditioners, guiders, models, pipelines, schedulers  # noqa: F401


# --------------------------------------------------------------------------- the subject
def component_name(component: Any) -> str:
    if isinstance(component, str):
        return component
    if isinstance(component, type):
        return component.__name__
    name = getattr(component, "__name__", None)
    if callable(component) and name and not hasattr(component, "config"):
        return name
    return type(component).__name__


def detect_kind(obj: Any) -> str | None:
    """The kind ``obj`` (a class or an instance) declares in ``component_kind`` (:func:`kernel.protocols.kind_of`)."""
    return protocols.kind_of(obj)


class Subject:
    """The component under test: a registered name, a class, an instance or a factory.

    ``options`` carry what the plugin declares: example inputs, tolerances, capabilities.
    """

    def __init__(self, component: Any, kind: str | None = None, options: dict[str, Any] | None = None):
        self.spec = component
        self.options = dict(options or {})
        self.name = self.options.get("name") or component_name(component)
        self._cache: dict[str, Any] = {}
        if isinstance(component, str):
            import kernel

            component = kernel.component(component)
        self.target = component
        if not self.options.get("name") and self.is_factory:
            self.name = type(self.sample_instance()).__name__
        self.kind = kind or self.options.get("kind") or self._detect()
        if self.kind not in CONTRACTS:
            raise TypeError(
                f"{self.name} declares no component_kind; set component_kind to one of {', '.join(CONTRACTS)} "
                "on the class, or pass kind=... to test it as one of them"
            )

    def _detect(self) -> str | None:
        kind = detect_kind(self.target)
        if kind is None and callable(self.target) and not isinstance(self.target, type):
            kind = detect_kind(self.sample_instance())
        return kind

    @property
    def is_class(self) -> bool:
        return isinstance(self.target, type)

    @property
    def is_factory(self) -> bool:
        t = self.target
        return (inspect.isroutine(t) or isinstance(t, functools.partial)) and detect_kind(t) is None

    def sample_instance(self) -> Any:
        if "instance" not in self._cache:
            self._cache["instance"] = self.instance()
        return self._cache["instance"]

    @property
    def cls(self) -> type:
        return self.target if self.is_class else type(self.sample_instance())

    def instance(self, **overrides: Any) -> Any:
        """A fresh instance; config ``overrides`` go through ``from_config``."""
        overrides = {**(self.options.get("config") or {}), **overrides}
        if self.is_class:
            # Construction can be slow (some schedulers build a full table); build each config
            # once and hand out copies, which is equivalent since construction is deterministic.
            key = repr(sorted(overrides.items()))
            protos = self._cache.setdefault("prototypes", {})
            if key not in protos:
                protos[key] = self.target(**overrides)
            return copy.deepcopy(protos[key])
        if self.is_factory:
            protos = self._cache.setdefault("prototypes", {})
            if "factory" not in protos:
                protos["factory"] = self.target()
            obj = copy.deepcopy(protos["factory"])
        else:  # an instance: never hand out the caller's object, schedulers are stateful
            obj = copy.deepcopy(self.target)
        if overrides:
            obj = type(obj).from_config(dict(obj.config), **overrides)
        return obj

    @property
    def known_failures(self) -> dict[str, str]:
        """The contracts the component itself declares it fails: ``_known_contract_failures = {name: reason}``.

        Declared next to the class (scikit-learn's ``_xfail_checks``), so a third-party plugin
        carries its own; the test runners turn each into a strict xfail with the reason.
        """
        return dict(getattr(self.cls, "_known_contract_failures", None) or {})

    def cached(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]


# --------------------------------------------------------------------------- running
def _settings(opts: dict[str, Any], budget: float) -> hypothesis.settings:
    n = max(1, int(round(opts["max_examples"] * budget)))
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
    if opts.get("shrink", True):
        phases.append(Phase.shrink)
    return hypothesis.settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    if not isinstance(err, AssertionError):
        tb = traceback.extract_tb(err.__traceback__)
        if tb:
            last = tb[-1]
            text += f"  (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name})"
    return text


def run_contract(subject: Subject, c: Contract, options: dict[str, Any] | None = None) -> Failure | str | None:
    """Run one contract: ``None`` when it holds, a :class:`Failure`, or a string saying why it does not apply."""
    opts = resolve_options({**subject.options, **(options or {})})
    try:
        reason = c.applies(subject, opts) if c.applies else None
    except NotApplicable as err:
        reason = str(err)
    except Exception as err:  # noqa: BLE001 - a crash while probing is a failure of the component
        return Failure(c.name, None, f"probing applicability raised {_describe(err)}", subject.name)
    if reason:
        return reason

    if c.examples is None:
        try:
            c.prop(subject, None, opts)
        except NotApplicable as err:
            return str(err)
        except Exception as err:  # noqa: BLE001
            return Failure(c.name, None, _describe(err), subject.name)
        return None

    ran = {"valid": 0, "skipped": 0, "last_skip": ""}

    def fails(example: Any) -> bool:
        try:
            c.prop(subject, example, opts)
        except NotApplicable as err:
            ran["skipped"] += 1
            ran["last_skip"] = str(err)
            return False
        except Exception:  # noqa: BLE001 - any error is a counterexample
            ran["valid"] += 1
            return True
        ran["valid"] += 1
        return False

    seed = opts.get("seed")
    rnd = random.Random(seed) if seed is not None else None
    try:
        strategy = c.examples(subject, opts)
        example = hypothesis.find(strategy, fails, settings=_settings(opts, c.budget), random=rnd)
    except hypothesis.errors.NoSuchExample:
        if ran["valid"] == 0:
            if ran["skipped"]:
                return ran["last_skip"] or "no drawn example applies"
            return Failure(c.name, None, "no valid example could be drawn (every config was rejected)", subject.name)
        return None
    except Exception as err:  # noqa: BLE001 - errors while drawing (the strategy builds components)
        return Failure(c.name, None, f"drawing examples raised {_describe(err)}", subject.name)
    try:
        c.prop(subject, example, opts)
    except Exception as err:  # noqa: BLE001
        return Failure(c.name, example, _describe(err), subject.name)
    return Failure(c.name, example, "failed during the search but passed when replayed (flaky)", subject.name)


def check(component: Any, *, kind: str | None = None, contracts: list[str] | None = None, **options: Any) -> list[Failure]:
    """Run every applicable contract on ``component``; an empty list means it passed.

    ``component`` is a registered name, a class, an instance or a factory returning an instance.
    ``options`` are the plugin's declarations (``inputs=``, ``config=``, tolerances ...) and search
    settings (``profile=``, ``max_examples=``, ``seed=``).
    """
    subject = Subject(component, kind, options)
    failures = []
    for name, c in contracts_for(subject.kind).items():
        if contracts is not None and name not in contracts:
            continue
        result = run_contract(subject, c)
        if isinstance(result, Failure):
            failures.append(result)
    return failures


def example_strategy(**fields: Any) -> Any:
    """A fixed-dictionary strategy (a readable falsifying example is a dict)."""
    return st.fixed_dictionaries(fields)
