"""The memory planner: a pure function from component sizes and a budget to the fastest plan that fits.

Each model component of a pipeline is either

* ``resident``: its weights stay on the accelerator (no transfer);
* ``offload``: it stays on the CPU and moves in whole when it runs, the previous component going
  back (model CPU offload): its weights cross the bus once per generation;
* ``stream``: its blocks move in one group at a time as they run (group offloading): only the
  largest group and the layers around the blocks are on the accelerator, but every call moves all
  its weights again (the denoiser runs once per step);

and, where it has castable layers, may store them in fp8 (layerwise casting), which shrinks them
at the price of a cast per layer per call.

The peak memory of a plan is the largest, over the components, of the resident weights plus what
that component brings in while it runs plus its working memory (activations). The cost of a plan
is the bytes it moves per generation plus the fp8 casts, counted as ``FP8_COST`` of a byte moved
per byte cast (a cast runs at device-memory speed, some 30x the host link). :func:`plan` searches
every combination (pipelines have a handful of model components) and returns the cheapest plan
whose peak fits, ties broken towards fewer bytes on the device: so a plan exists whenever any plan
fits, and a larger budget never gives a costlier plan.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

MODES = ("resident", "offload", "stream")
FP8_COST = 1 / 32
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}


@dataclasses.dataclass(frozen=True)
class ComponentSize:
    """What the planner knows of one component (all sizes in bytes)."""

    name: str
    weights: int
    activation: int = 0
    stream_peak: int | None = None  # weights on the device while streaming (None: cannot stream)
    fp8_saving: int = 0  # bytes fp8 storage saves (0: nothing castable)
    calls: int = 1  # forward calls per generation (the denoiser: the number of steps)

    def __post_init__(self):
        for field in ("weights", "activation", "fp8_saving", "calls"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 0:
                raise ValueError(f"{self.name}: {field} must be an int >= 0, got {getattr(self, field)!r}")
        if self.fp8_saving > self.weights:
            raise ValueError(f"{self.name}: fp8_saving ({self.fp8_saving}) exceeds the weights ({self.weights})")
        if self.stream_peak is not None and not 0 <= self.stream_peak <= self.weights:
            raise ValueError(f"{self.name}: stream_peak must be between 0 and the weights, got {self.stream_peak}")

    def stored(self, fp8: bool) -> int:
        return self.weights - (self.fp8_saving if fp8 else 0)

    def loaded(self, mode: str, fp8: bool) -> int:
        """Bytes this component brings onto the device while it runs (beyond the resident ones)."""
        if mode == "resident":
            return 0
        if mode == "offload":
            return self.stored(fp8)
        scale = self.stored(fp8) / self.weights if self.weights else 1.0
        return int(round((self.stream_peak or 0) * scale))

    def moved(self, mode: str, fp8: bool) -> int:
        return {"resident": 0, "offload": self.stored(fp8), "stream": self.stored(fp8) * self.calls}[mode]


@dataclasses.dataclass(frozen=True)
class Plan:
    """One placement: a mode per component, the components stored in fp8, and what it costs."""

    modes: dict[str, str]
    fp8: frozenset[str]
    peak: int
    resident: int
    moved: int
    cost: float
    budget: int

    def describe(self) -> str:
        rows = [f"memory plan for a budget of {format_bytes(self.budget)}: peak {format_bytes(self.peak)}, "
                f"resident weights {format_bytes(self.resident)}, {format_bytes(self.moved)} moved per generation"]
        rows += [f"  {name:<16} {mode}{' + fp8 storage' if name in self.fp8 else ''}" for name, mode in self.modes.items()]
        return "\n".join(rows)


def parse_bytes(value: int | float | str) -> int:
    """``8 * 2**30``, ``"8GB"``, ``"8 GiB"``, ``"512MiB"`` -> bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"budget={value!r}: give bytes (an int) or a size such as '8GB' or '512MiB'")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def evaluate(components: list[ComponentSize], modes: dict[str, str], fp8: frozenset[str], budget: int) -> Plan:
    """Peak, resident bytes, bytes moved and cost of one placement."""
    resident = sum(c.stored(c.name in fp8) for c in components if modes[c.name] == "resident")
    peak = max((resident + c.loaded(modes[c.name], c.name in fp8) + c.activation for c in components), default=0)
    moved = sum(c.moved(modes[c.name], c.name in fp8) for c in components)
    cast = sum((c.stored(True)) * c.calls for c in components if c.name in fp8)
    return Plan(dict(modes), fp8, peak, resident, moved, moved + FP8_COST * cast, budget)


def candidates(components: list[ComponentSize]):
    """Every placement: each component in each mode it allows, with and without fp8 where it can."""
    choices = []
    for c in components:
        modes = [m for m in MODES if m != "stream" or c.stream_peak is not None]
        choices.append([(m, f) for m in modes for f in ((False, True) if c.fp8_saving else (False,))])
    for combo in itertools.product(*choices):
        yield ({c.name: m for c, (m, _) in zip(components, combo)},
               frozenset(c.name for c, (_, f) in zip(components, combo) if f))


def plan(components: list[ComponentSize], budget: int | str) -> Plan:
    """The cheapest placement whose peak fits ``budget``; a ``ValueError`` saying how much the smallest needs."""
    budget = parse_bytes(budget)
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise ValueError(f"component names must be unique, got {names}")
    best, smallest = None, None
    for modes, fp8 in candidates(components):
        p = evaluate(components, modes, fp8, budget)
        if smallest is None or p.peak < smallest.peak:
            smallest = p
        key = (p.cost, p.peak, p.resident)
        if p.peak <= budget and (best is None or key < (best.cost, best.peak, best.resident)):
            best = p
    if best is None:
        need = smallest.peak if smallest is not None else 0
        layout = "; ".join(line.strip() for line in smallest.describe().splitlines()[1:]) if smallest else ""
        raise ValueError(f"budget {format_bytes(budget)} is below the smallest plan, which needs {format_bytes(need)} "
                         f"({need} bytes; {layout})")
    return best
