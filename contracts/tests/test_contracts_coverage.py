"""Meta-test: every name every installed plugin registers is covered by a contract test.

Coverage is read from the test files (see ``kernel_contracts.coverage``).  A new plugin whose
names no contract test covers makes this test fail.  ``PENDING`` lists names that are known to
lack coverage today (their plugins must add a contract test); it is strict too: once a name is
covered, the test asks for it to be removed from the list.
"""

from __future__ import annotations

from pathlib import Path

from kernel.registry import get_registry
from kernel_contracts.coverage import Coverage, contract_test_files, scan, scan_file
from kernel_contracts.engine import detect_kind

ROOT = Path(__file__).resolve().parents[2]

#: Names that declare no component kind, with the reason.  They are not contract-tested.
_SWITCH = "a memory switch: a function the kernel calls as a model/pipeline method (kernel.modeling.plugin_method)"
NOT_A_PROTOCOL: dict[str, str] = {
    "PipelineQuantizationConfig": "a table of per-component quantization configs read by a pipeline load",
    **{name: _SWITCH for name in ("enable_attention_slicing", "disable_attention_slicing", "enable_vae_slicing",
                                  "disable_vae_slicing", "enable_vae_tiling", "disable_vae_tiling",
                                  "enable_model_cpu_offload", "enable_sequential_cpu_offload", "enable_layerwise_casting",
                                  "enable_group_offload", "enable_auto_memory", "memory_plan", "dequantize")},
    **{name: "a parallelism setting read by enable_parallelism (kernel-distributed)"
       for name in ("ContextParallelConfig", "ParallelConfig")},
    **{name: "a function the kernel calls as a model/pipeline method (kernel.modeling.plugin_method)"
       for name in ("balanced_device_map", "enable_parallelism", "reset_device_map")},
}

#: Registered today without a contract test; each plugin must add one (then remove it here).
PENDING: set[str] = set()


def _kinds() -> dict[str, str | None]:
    registry = get_registry()
    out = {}
    for name in registry.names():
        try:
            out[name] = detect_kind(registry.resolve(name))
        except Exception:  # noqa: BLE001 - a plugin that fails to load is uncovered
            out[name] = None
    return out


def test_every_registered_name_is_covered():
    coverage = scan(contract_test_files(ROOT))
    kinds = _kinds()
    uncovered = sorted(
        n for n, k in kinds.items() if n not in NOT_A_PROTOCOL and n not in PENDING and not coverage.covers(n, k)
    )
    assert not uncovered, (
        f"registered names without a contract test: {uncovered}. Add a test such as\n"
        "    class TestX(kernel_contracts.SchedulerContract):\n        component = 'Name'\n"
        "to the plugin's tests (see docs/plugins.md)"
    )
    now_covered = sorted(n for n in PENDING if n in kinds and coverage.covers(n, kinds[n]))
    assert not now_covered, f"these names are covered now; remove them from PENDING: {now_covered}"


def test_not_a_protocol_entries_really_fit_no_protocol():
    kinds = _kinds()
    wrong = {n: kinds[n] for n in NOT_A_PROTOCOL if n in kinds and kinds[n] is not None}
    assert not wrong, f"these fit a protocol now and need contract tests: {wrong}"


def test_scanner_finds_each_declaration_style(tmp_path):
    (tmp_path / "test_a.py").write_text(
        "from kernel_contracts import SchedulerContract\n"
        "class TestMine(SchedulerContract):\n    component = 'MyScheduler'\n"
    )
    (tmp_path / "test_b.py").write_text(
        "import kernel, kernel_contracts\n"
        "@kernel_contracts.parametrize('OtherScheduler')\ndef test(contract_case):\n    contract_case()\n"
        "def make():\n    return kernel.component('TinyModel')()\n"
    )
    (tmp_path / "test_c.py").write_text("component = 'NotATest'\n")  # no contract usage: does not count
    (tmp_path / "test_d.py").write_text(
        "import kernel_contracts\n@kernel_contracts.parametrize_registered('denoiser')\ndef test(c):\n    c()\n"
    )
    coverage = scan(sorted(tmp_path.glob("*.py")))
    assert set(coverage.names) == {"MyScheduler", "OtherScheduler", "TinyModel"}
    assert coverage.covers("AnyDenoiser", "denoiser") and not coverage.covers("NotATest", "pipeline")
    lone = Coverage()
    scan_file(tmp_path / "test_c.py", lone)
    assert lone.names == {}
