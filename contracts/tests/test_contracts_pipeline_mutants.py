"""Mutation tests for the pipeline and conditioner contracts: broken variants must fail ``check``.

Pipeline mutants subclass the project's tiny unconditional ``DDIMPipeline`` (pixel space, no text
encoder, so each run takes milliseconds) and break one invariant each; conditioner mutants break a
tiny stand-alone conditioner.  The unbroken originals pass the same contracts.
"""

from __future__ import annotations

import pytest
import torch

import kernel
import kernel_contracts
from kernel_contracts.cases import cases

DDIMPipeline = kernel.component("DDIMPipeline")


def _unet():
    torch.manual_seed(0)
    return kernel.component("UNet2DModel")(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=4).eval()


class OneGeneratorForAll(DDIMPipeline):
    """Draws the whole batch from the first generator of a list."""

    def __call__(self, *args, generator=None, **kwargs):
        return super().__call__(*args, generator=generator[0] if isinstance(generator, list) else generator, **kwargs)


class IgnoresGenerator(DDIMPipeline):
    def __call__(self, *args, generator=None, **kwargs):
        return super().__call__(*args, generator=None, **kwargs)


class AcceptsAnyBatchSize(DDIMPipeline):
    """Turns an invalid batch size into 1 instead of raising."""

    def __call__(self, batch_size=1, **kwargs):
        return super().__call__(batch_size=max(int(batch_size), 1), **kwargs)


def _factory(cls):
    def make():
        return cls(unet=_unet(), scheduler=kernel.component("DDIMScheduler")())
    make.__name__ = cls.__name__
    return make


def _inputs(pipe, batch_size, generator):
    return dict(batch_size=batch_size, num_inference_steps=2, generator=generator)


PIPELINE_OPTIONS = dict(inputs=_inputs, output_types=("pil", "np", "pt"),
                        invalid_inputs=[{"batch_size": 0}, {"output_type": "latent"}])

PIPELINE_MUTANTS = [
    (OneGeneratorForAll, "generator_list_per_item"),
    (IgnoresGenerator, "same_seed_same_output"),
    (AcceptsAnyBatchSize, "invalid_arguments_raise"),
]


@pytest.mark.parametrize("mutant,contract", PIPELINE_MUTANTS, ids=[m.__name__ for m, _ in PIPELINE_MUTANTS])
def test_pipeline_mutant_is_caught_and_original_passes(mutant, contract):
    failures = kernel_contracts.check(_factory(mutant), kind="pipeline", contracts=[contract], **PIPELINE_OPTIONS)
    assert [f.contract for f in failures] == [contract], failures
    assert not kernel_contracts.check(_factory(DDIMPipeline), kind="pipeline", contracts=[contract], **PIPELINE_OPTIONS)


def test_pipeline_capabilities_come_from_the_call_signature():
    """Without ``num_images_per_prompt`` / ``callback_on_step_end`` those contracts do not apply (a reason, not a pass)."""
    reasons = {c.values[0].contract: c.values[0].run() for c in cases(_factory(DDIMPipeline), kind="pipeline",
                                                                       **PIPELINE_OPTIONS)}
    assert reasons["num_images_per_prompt"] == "DDIMPipeline.__call__ takes no num_images_per_prompt"
    assert reasons["callback_on_step_end"] == "DDIMPipeline.__call__ takes no callback_on_step_end"
    assert {k for k, v in reasons.items() if v is not None} == {"num_images_per_prompt", "callback_on_step_end"}


# --------------------------------------------------------------------------- conditioners
class WordConditioner:
    """Embeds each word as a fixed random vector, padded to ``length`` tokens; returns (embeds, pooled)."""

    length = 6

    def __init__(self):
        self.table = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))

    def _rows(self, prompts):
        return [[sum(map(ord, w)) % 64 for w in p.split()][: self.length] for p in prompts]

    def encode_prompt(self, prompts):
        rows = self._rows(prompts)
        embeds = torch.zeros(len(rows), self._padded(rows), 4)
        for i, row in enumerate(rows):
            if row:
                embeds[i, : len(row)] = self.table[row]
        return embeds, embeds.mean(1)

    def _padded(self, rows):
        return self.length


class PadsToLongest(WordConditioner):
    def _padded(self, rows):
        return max(1, max(len(r) for r in rows))


class Noisy(WordConditioner):
    def encode_prompt(self, prompts):
        embeds, pooled = super().encode_prompt(prompts)
        return embeds + 1e-3 * torch.randn_like(embeds), pooled


class DropsThePool(WordConditioner):
    def encode_prompt(self, prompts):
        embeds, pooled = super().encode_prompt(prompts)
        return embeds, pooled[:1]


CONDITIONER_MUTANTS = [
    (PadsToLongest, "embedding_shapes"), (Noisy, "deterministic"), (DropsThePool, "embedding_shapes"),
]


@pytest.mark.parametrize("mutant,contract", CONDITIONER_MUTANTS, ids=[m.__name__ for m, _ in CONDITIONER_MUTANTS])
def test_conditioner_mutant_is_caught_and_original_passes(mutant, contract):
    failures = kernel_contracts.check(mutant, kind="conditioner", contracts=[contract])
    assert [f.contract for f in failures] == [contract], failures
    assert not kernel_contracts.check(WordConditioner, kind="conditioner", contracts=[contract])
