"""The guider contracts catch broken guiders (mutants of classifier-free guidance)."""

import pytest

import kernel_contracts
from kernel.config import register_to_config
from kernel.guidance import NEGATIVE, POSITIVE, BaseGuidance, GuidancePass


class ToyCFG(BaseGuidance):
    """A correct reference: two passes, combined linearly."""

    neutral_config = {"scale": 1.0}

    @register_to_config
    def __init__(self, scale: float = 3.0):
        self.scale = scale

    @property
    def uses_negative(self):
        return self.scale != 1.0

    def passes(self, step):
        if self.uses_negative and step.has_negative:
            return [GuidancePass("uncond", NEGATIVE), GuidancePass("cond", POSITIVE)]
        return [GuidancePass("cond", POSITIVE)]

    def combine(self, predictions, step):
        if "uncond" not in predictions:
            return predictions["cond"]
        return predictions["uncond"] + self.scale * (predictions["cond"] - predictions["uncond"])


class ReadsUndeclared(ToyCFG):
    def combine(self, predictions, step):
        try:
            return super().combine(predictions, step) + 0 * predictions["extra"]
        except KeyError:
            return predictions["cond"]


class MixesRows(ToyCFG):
    def combine(self, predictions, step):
        out = super().combine(predictions, step)
        return out + out.mean(dim=0, keepdim=True) - out  # every row becomes the batch mean


class IgnoresNegativeFlag(ToyCFG):
    def passes(self, step):
        return [GuidancePass("uncond", NEGATIVE), GuidancePass("cond", POSITIVE)] if self.uses_negative \
            else [GuidancePass("cond", POSITIVE)]


class NotNeutral(ToyCFG):
    def combine(self, predictions, step):
        return 1.01 * predictions["cond"] if "uncond" not in predictions else super().combine(predictions, step)


def test_reference_guider_passes_every_contract():
    assert kernel_contracts.check(ToyCFG, kind="guider") == []


@pytest.mark.parametrize("mutant,contract", [
    (ReadsUndeclared, "declared_passes_are_used"),
    (MixesRows, "batch_order_preserved"),
    (IgnoresNegativeFlag, "no_negative_without_one"),
    (NotNeutral, "neutral_scale_gives_positive"),
])
def test_mutants_are_caught(mutant, contract):
    failed = {f.contract for f in kernel_contracts.check(mutant, kind="guider")}
    assert contract in failed, f"{mutant.__name__} passed {contract}"


def test_guider_kind_is_declared():
    from kernel.protocols import kind_of

    assert kind_of(ToyCFG) == "guider" and kind_of(ToyCFG()) == "guider"
