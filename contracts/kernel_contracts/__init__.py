"""Contract tests every kernel plugin must pass (a pytest plugin and a library).

    import kernel_contracts
    failures = kernel_contracts.check("EulerDiscreteScheduler")     # [] when every contract holds

    @kernel_contracts.parametrize(MyScheduler, known_failures={"timestep_range": "why"})
    def test_my_scheduler(contract_case):
        contract_case()

    class TestMyScheduler(kernel_contracts.SchedulerContract):
        component = "MyScheduler"

See ``docs/plugins.md``.
"""

from kernel_contracts.engine import CONTRACTS, PROFILES, Failure, Subject, check, contracts_for
from kernel_contracts.cases import Case, cases, parametrize, parametrize_registered
from kernel_contracts.classes import (
    AdapterContract,
    AutoencoderContract,
    ConditionerContract,
    DenoiserContract,
    GuiderContract,
    PipelineContract,
    QuantizerContract,
    SchedulerContract,
)

__all__ = [
    "CONTRACTS",
    "PROFILES",
    "Failure",
    "Subject",
    "check",
    "contracts_for",
    "Case",
    "cases",
    "parametrize",
    "parametrize_registered",
    "SchedulerContract",
    "DenoiserContract",
    "AutoencoderContract",
    "ConditionerContract",
    "AdapterContract",
    "QuantizerContract",
    "PipelineContract",
    "GuiderContract",
]
