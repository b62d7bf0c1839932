"""What the Stable Cascade prior (stage C) and decoder (stage B) pipelines share: CLIP text conditioning, the
ratio schedule and the batch checks.

Both stages run the kernel's one loop (:mod:`kernel.engine`).  Their scheduler, :class:`DDPMWuerstchenScheduler`,
gives ``n + 1`` timestep ratios from 1 to 0 for ``n`` steps; the denoiser is evaluated at the first ``n`` and each
step lands on the next ratio (:meth:`_CascadeStage._retrieve_timesteps`).  Guidance is Diffusers'
``lerp(uncond, cond, scale)``, which is classifier-free guidance at ``scale`` (on while ``scale > 1``), so the
engine's guider runs it.

The hooks a subclass overrides (Würstchen's pipelines reuse these classes this way):

* :meth:`_text_encoder_outputs` - prompts -> ``(token states, pooled)`` from the text encoder;
* :meth:`kernel.engine.Engine._evaluate` - one denoiser call;
* :meth:`kernel.tasks.TaskMixin._latent_shape` - the latent grid;
* the decoder's :meth:`_vae_decode` - latents -> pixels in ``[0, 1]``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from kernel.pipeline import DiffusionPipeline
from kernel.pipeline_utils import batch_size_of, tokenize



def prompt_list(value: Any, name: str) -> list[str]:
    """``value`` (a str or a non-empty list of str) as a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{name} must be a str or a non-empty list of str, got {type(value).__name__}")


def check_prompt_sources(call: SimpleNamespace) -> None:
    """``prompt`` (a str or a non-empty list of str) xor ``prompt_embeds``; ``negative_prompt`` xor
    ``negative_prompt_embeds``."""
    if call.prompt is not None and call.prompt_embeds is not None:
        raise ValueError("pass either prompt or prompt_embeds, not both")
    if call.prompt is None and call.prompt_embeds is None:
        raise ValueError("pass prompt (a str or a list of str) or prompt_embeds")
    if call.prompt is not None:
        prompt_list(call.prompt, "prompt")
    if call.negative_prompt is not None and call.negative_prompt_embeds is not None:
        raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")


def check_text_inputs(call: SimpleNamespace) -> None:
    """Diffusers' prompt rules: :func:`check_prompt_sources`, each embedding with its pooled one, equal shapes on
    both sides, one negative prompt per prompt."""
    check_prompt_sources(call)
    for name in ("prompt_embeds", "prompt_embeds_pooled", "negative_prompt_embeds", "negative_prompt_embeds_pooled"):
        value = getattr(call, name)
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    for seq in ("prompt_embeds", "negative_prompt_embeds"):
        if getattr(call, seq) is not None and getattr(call, f"{seq}_pooled") is None:
            raise ValueError(f"{seq} needs {seq}_pooled from the same text encoder; pass both")
    for seq in ("prompt_embeds", "prompt_embeds_pooled"):
        pos, neg = getattr(call, seq), getattr(call, f"negative_{seq}")
        if pos is not None and neg is not None and pos.shape != neg.shape:
            raise ValueError(f"{seq} {tuple(pos.shape)} and negative_{seq} {tuple(neg.shape)} must have the same shape")
    if call.negative_prompt is not None:
        negatives = prompt_list(call.negative_prompt, "negative_prompt")
        prompts = batch_size_of(call.prompt, call.prompt_embeds)
        if len(negatives) not in (1, prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries but there are {prompts} prompts; give one "
                             "negative prompt, or one per prompt")


class StageAEntry:
    """Writes stage A as ``["stable_cascade", "PaellaVQModel"]`` in ``model_index.json``.

    Diffusers 0.42.1 writes ``["diffusers", "PaellaVQModel"]`` but cannot resolve that entry itself (the class moved
    to its deprecated Würstchen package), not even when the model is passed in; with a pipeline-package library it
    accepts the model passed to ``from_pretrained(..., vqgan=...)``.  Both entries load here.
    """

    _stage_a_entry = ["stable_cascade", "PaellaVQModel"]

    def _fix_stage_a_entries(self) -> None:
        for name in self.__dict__.get("_component_keys", ()):
            if type(self.__dict__.get(name)).__name__ == "PaellaVQModel":
                self.register_to_config(**{name: list(self._stage_a_entry)})

    def register_modules(self, **modules: Any) -> None:
        super().register_modules(**modules)
        self._fix_stage_a_entries()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.__dict__.get("_component_keys", ()):
            self._fix_stage_a_entries()


class _CascadeStage(StageAEntry, DiffusionPipeline):
    """Shared by the prior and the decoder (see the module docstring)."""

    pipeline_family = "stable-cascade"
    #: How the latent shape is made, for the error on ``latents`` of the wrong shape.
    _latent_rule = ""

    # ---------------------------------------------------------------- text (a subclass hook)
    def _text_encoder_outputs(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token states (B, L, C), pooled (B, 1, C))`` of ``prompts``: the last hidden state before the final
        layer norm and the projected pooled output of a ``CLIPTextModelWithProjection``, tokens padded to the
        tokenizer's length with their attention mask."""
        inputs = tokenize(self.tokenizer, prompts)
        out = self.text_encoder(inputs.input_ids.to(device), attention_mask=inputs.attention_mask.to(device),
                                output_hidden_states=True)
        return out.hidden_states[-1], out.text_embeds.unsqueeze(1)

    def _text_conditioning(self, call: SimpleNamespace, negative: bool, repeats: int):
        """``({"prompt_embeds", "prompt_embeds_pooled"}, same for the negative or None)``, each row repeated
        ``repeats`` times; the negative side is encoded (``negative_prompt`` or ``""``) only when ``negative``."""
        device, dtype = call.device, self.text_encoder.dtype

        def side(hidden, pooled):
            return {"prompt_embeds": hidden.to(device=device, dtype=dtype).repeat_interleave(repeats, dim=0),
                    "prompt_embeds_pooled": pooled.to(device=device, dtype=dtype).repeat_interleave(repeats, dim=0)}

        prompts = batch_size_of(call.prompt, call.prompt_embeds)
        if call.prompt_embeds is None:
            hidden, pooled = self._text_encoder_outputs(prompt_list(call.prompt, "prompt"), device)
            if call.prompt_embeds_pooled is not None:
                pooled = call.prompt_embeds_pooled
        else:
            hidden, pooled = call.prompt_embeds, call.prompt_embeds_pooled
        positive = side(hidden, pooled)
        if not negative:
            return positive, None
        if call.negative_prompt_embeds is not None:
            return positive, side(call.negative_prompt_embeds, call.negative_prompt_embeds_pooled)
        texts = [""] * prompts if call.negative_prompt is None else prompt_list(call.negative_prompt, "negative_prompt")
        if len(texts) == 1 and prompts > 1:
            texts = texts * prompts
        return positive, side(*self._text_encoder_outputs(texts, device))

    # ---------------------------------------------------------------- schedule and latents
    def _retrieve_timesteps(self, call: SimpleNamespace) -> tuple[torch.Tensor, int]:
        """The scheduler's ``n + 1`` ratios (from ``num_inference_steps`` or the call's ``timesteps``); the model
        is evaluated at all but the last, which the last step lands on."""
        custom = getattr(call, "timesteps", None)
        if custom is not None:
            if len(custom) < 2:
                raise ValueError(f"timesteps must hold at least 2 ratios (the model runs at all but the last), "
                                 f"got {list(custom)}")
            self.scheduler.set_timesteps(timesteps=custom, device=call.device)
        else:
            steps = call.num_inference_steps
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValueError(f"num_inference_steps must be a positive int, got {steps!r}")
            self.scheduler.set_timesteps(steps, device=call.device)
        timesteps = self.scheduler.timesteps[:-1]
        return timesteps, len(timesteps)

    def _given_latents(self, call: SimpleNamespace, shape: tuple[int, ...]) -> torch.Tensor:
        if tuple(call.latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {tuple(shape)} for this call ({self._latent_rule}), got "
                             f"{tuple(call.latents.shape)}")
        return call.latents.to(device=call.device, dtype=call.dtype)

    @staticmethod
    def _ratio(timestep: torch.Tensor, model_input: torch.Tensor) -> torch.Tensor:
        """The timestep ratio, one per row of ``model_input``, in its dtype (what the UNet's ``timestep_ratio`` takes)."""
        return timestep.expand(model_input.shape[0]).to(model_input.dtype)
