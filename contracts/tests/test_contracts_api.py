"""The public interface: check, parametrize (ids, strict known failures), base classes, pytest options."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import kernel
import kernel_contracts
from kernel_contracts import Failure, SchedulerContract
from kernel_contracts.engine import Subject, resolve_options

DDIM = kernel.component("DDIMScheduler")


class _UpcastingDDIM(DDIM):
    def step(self, *args, **kwargs):
        out = super().step(*args, **kwargs)
        out.prev_sample = out.prev_sample.float()
        return out


def test_parametrize_ids_and_strict_known_failures():
    mark = kernel_contracts.parametrize(_UpcastingDDIM, known_failures={"step_half_precision": "upcasts"})
    params = mark.args[1]
    ids = [p.id for p in params]
    assert ids[0] == "_UpcastingDDIM-timestep_count" and "_UpcastingDDIM-exact_model_convergence" in ids
    (known,) = [p for p in params if p.id.endswith("step_half_precision")]
    (xfail,) = known.marks
    assert xfail.name == "xfail" and xfail.kwargs == {"reason": "upcasts", "strict": True}


def test_unknown_known_failure_name_is_an_error():
    with pytest.raises(ValueError, match="do not exist"):
        kernel_contracts.parametrize(DDIM, known_failures={"timestep_cnt": "typo"})


@kernel_contracts.parametrize(_UpcastingDDIM, known_failures={"step_half_precision": "the mutant upcasts to fp32"},
                              contracts=["step_half_precision", "step_shape_dtype"])
def test_parametrize_runs_contracts(contract_case):
    contract_case()


def test_check_accepts_names_instances_and_factories():
    for component in ("DDIMScheduler", DDIM(prediction_type="v_prediction"), lambda: DDIM(timestep_spacing="trailing")):
        assert kernel_contracts.check(component, contracts=["timestep_order"]) == []
    assert Subject(lambda: DDIM()).name == "DDIMScheduler"
    with pytest.raises(TypeError, match="declares no component_kind"):
        kernel_contracts.check(torch.nn.Linear(2, 2))


def test_failure_fields():
    (f,) = kernel_contracts.check(_UpcastingDDIM, contracts=["step_half_precision"])
    assert isinstance(f, Failure) and f.contract == "step_half_precision"
    assert f.example["config"] == {} and f.example["steps"] == 1  # shrunk to the simplest case
    assert "torch.float32" in f.message and "step_half_precision" in str(f)


class TestBaseClassWithKnownFailure(SchedulerContract):
    component = _UpcastingDDIM
    known_failures = {"step_half_precision": "the mutant upcasts to fp32"}
    contract_options = {"max_examples": 2}


def test_profiles_and_options():
    assert resolve_options({"profile": "thorough"})["max_examples"] == 150
    assert resolve_options({"max_examples": 3})["max_examples"] == 3
    with pytest.raises(ValueError, match="accepted values: ci, dev, thorough"):
        resolve_options({"profile": "fast"})


def test_pytest_options_are_registered(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "--contracts-profile", "dev", "--contracts-max-examples", "3",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / "test_x.py")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "kernel-contracts: profile=dev max_examples=3" in out.stdout
