"""The shapes every plugin component fits, as runtime-checkable protocols.

Each docstring states the invariants the contract suite (``kernel_contracts``) tests.
A component declares which protocol it implements with a class attribute
``component_kind`` (one of :data:`PROTOCOLS`' keys: ``"scheduler"``, ``"denoiser"``, ...);
:func:`kind_of` reads that declaration and never guesses from the members.  The protocols
themselves stay structural (``isinstance(x, Scheduler)`` checks the members), and the contract
suite tests a component against the protocol it declares.  Tensors are ``torch.Tensor``; this
module does not import torch so ``import kernel`` stays light.

Shapes use ``B`` for batch, ``C`` for channels and ``*S`` for the spatial or
spatio-temporal dims (``H, W`` for images, ``F, H, W`` for video, ``T`` or
``H, W`` spectrograms for audio), so one protocol covers images, video and audio.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Configurable(Protocol):
    """Anything with a frozen ``config`` that ``from_config(config)`` rebuilds.

    Invariants: ``type(x).from_config(x.config)`` behaves identically to ``x``;
    ``save_config(dir)`` then ``from_pretrained(dir)`` gives the same config.
    """

    config: Any

    @classmethod
    def from_config(cls, config: Any = None, **overrides: Any) -> Any: ...

    def save_config(self, save_directory: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class Scheduler(Configurable, Protocol):
    """Turns a model output into the next, less noisy sample.

    Fits discrete-time schedulers (DDPM, DDIM, DPM-Solver ...; ``timesteps`` are integer
    or fractional indices in ``[0, num_train_timesteps)``, descending) and flow-matching
    schedulers (``timesteps = sigma * num_train_timesteps`` with sigma in ``(0, 1]``,
    descending).

    Invariants:

    * after ``set_timesteps(n)``, ``len(timesteps) == n * order`` for multi-stage solvers
      that evaluate the model ``order`` times per step (Heun, KDPM2: ``2n - 1``), ``n`` otherwise;
      every timestep lies in ``[0, num_train_timesteps)``; ``timesteps`` is non-increasing;
    * ``scale_model_input(sample, t)`` keeps shape and dtype;
    * ``step(model_output, t, sample, generator=g)`` keeps shape and dtype of ``sample``,
      never changes its inputs in place, and gives identical results for identically seeded
      generators;
    * ``order`` is the number of model evaluations per step (1, or 2 for Heun-type solvers);
    * ``set_begin_index(begin_index=0)`` tells the scheduler the loop starts at
      ``timesteps[begin_index]`` (image-to-image, inpainting; pipelines pass ``t_start * order``);
      the scheduler reports it as ``begin_index`` and its step position starts there, and the loop
      from that index keeps shape and dtype.  An index inside a multi-stage step is refused with
      ``ValueError``; schedulers that locate each step by its timestep value store it all the same;
    * ``add_noise(original_samples, noise, timesteps)`` (the forward process at ``timesteps``,
      one per batch item) keeps shape; at the least noisy timestep it is close to ``x0``.  A
      scheduler that cannot noise a sample raises ``ValueError`` (or ``NotImplementedError``,
      as Diffusers' sampling-only ones do) saying so; flow matching also offers ``scale_noise``;
    * with the exact model output for its ``prediction_type`` (true noise, true velocity, true
      x0), a deterministic scheduler's loop from ``add_noise(x0, noise, timesteps[0])`` (scaled
      by ``init_noise_sigma`` for sigma-based ones) ends close to ``x0``;
    * ``from_config(config)`` round trip and ``save_config``/``from_pretrained`` round trip.
    """

    order: int
    timesteps: Any
    init_noise_sigma: float

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> None: ...

    def scale_model_input(self, sample: Any, timestep: Any = None) -> Any: ...

    def step(self, model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any: ...

    def set_begin_index(self, begin_index: int = 0) -> None: ...

    def add_noise(self, original_samples: Any, noise: Any, timesteps: Any) -> Any: ...


@runtime_checkable
class Denoiser(Configurable, Protocol):
    """A noise-prediction network: UNet (SD, SDXL) or transformer (SD3/Flux MMDiT, PixArt, CogVideoX).

    ``forward(sample, timestep, encoder_hidden_states=None, ..., return_dict=True)`` returns an
    output whose first field (``.sample``) is the prediction.

    Invariants:

    * output shape is ``(B, config.out_channels, *S)`` for an input ``(B, in_channels, *S)``
      (packed-token models such as Flux: ``(B, N, out_channels)`` for ``(B, N, in_channels)``);
    * batch independence: running a batch equals running its items one by one;
    * deterministic in eval mode; output dtype follows the parameters' dtype;
    * ``save_pretrained`` then ``from_pretrained`` gives identical outputs;
    * gradients reach every trainable parameter;
    * ``torch.compile(fullgraph=True)`` compiles the forward without graph breaks.
    """

    dtype: Any
    device: Any

    def forward(self, sample: Any, timestep: Any, *args: Any, **kwargs: Any) -> Any: ...

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> Any: ...

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class Autoencoder(Configurable, Protocol):
    """Maps pixels (or audio/video frames) to latents and back.

    ``encode(x).latent_dist`` (or ``.latents``) and ``decode(z).sample``.

    Invariants:

    * ``encode`` of ``(B, in_channels, *S)`` gives ``(B, latent_channels, *S / spatial_compression_ratio)``;
      ``decode`` inverts the shape;
    * ``normalize_latents(z)`` maps encoder latents into the space the denoiser was trained on and
      ``denormalize_latents`` inverts it (round trip within float tolerance); pipelines call these
      two and never read ``scaling_factor``/``shift_factor``/``latents_mean`` themselves;
    * ``enable_slicing()`` gives identical results; ``enable_tiling()`` matches within the
      tolerance the plugin states.
    """

    spatial_compression_ratio: int

    def encode(self, x: Any, return_dict: bool = True) -> Any: ...

    def decode(self, z: Any, return_dict: bool = True, **kwargs: Any) -> Any: ...

    def normalize_latents(self, latents: Any) -> Any: ...

    def denormalize_latents(self, latents: Any) -> Any: ...


@runtime_checkable
class Conditioner(Protocol):
    """Turns prompts into the embeddings a denoiser attends to.

    ``encode_prompt(prompt, ...)`` returns ``(prompt_embeds, pooled_or_None, ...)``.

    Invariants:

    * embeddings have shape ``(B, L, D)`` for ``B`` prompts, the same ``L`` for every item of a
      batch (padding), and pooled outputs ``(B, D')`` where the conditioner declares them;
    * prompts longer than the token limit are handled as the conditioner documents
      (truncated, or chunked and concatenated);
    * deterministic.
    """

    def encode_prompt(self, prompt: Any, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class Adapter(Protocol):
    """A removable change to a model's weights or forward (LoRA, IP-Adapter, ControlNet, ...).

    Invariants: ``apply(model)`` then ``remove(model)`` restores the exact original weights and
    outputs; an adapter at scale 0 gives the same outputs as no adapter.
    """

    def apply(self, model: Any, scale: float = 1.0) -> Any: ...

    def remove(self, model: Any) -> Any: ...


@runtime_checkable
class Quantizer(Protocol):
    """Replaces a module's weights by a compact representation.

    Invariants: the quantized module's outputs are within the tolerance the quantizer states of
    full precision; its weight memory shrinks by the stated factor; ``dequantize`` restores the
    original dtype.
    """

    def quantize(self, module: Any) -> Any: ...

    def dequantize(self, module: Any) -> Any: ...


@runtime_checkable
class Pipeline(Protocol):
    """A set of components with a ``__call__`` that generates images, video or audio.

    Invariants: every ``output_type`` (``pil``, ``np``, ``pt``, ``latent``) works;
    ``num_images_per_prompt`` multiplies the batch; the same seed gives the same output; a list of
    generators gives per-item reproducibility; ``callback_on_step_end`` sees each step and can
    interrupt; invalid arguments raise ``ValueError``.
    """

    components: dict

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> Any: ...

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class Guider(Configurable, Protocol):
    """Decides which denoiser evaluations a step needs and how to combine them (CFG, PAG, APG, ...).

    ``passes(step)`` returns the evaluations for one step (:class:`kernel.guidance.GuidancePass`:
    a name, which prompt conditioning it takes, ``"positive"`` or ``"negative"``, and options for
    the denoiser call); ``combine(predictions, step)`` takes ``{pass name: prediction}`` for exactly
    those passes and returns the guided prediction.  ``uses_negative`` says whether any step will
    ask for the negative conditioning (so the pipeline encodes a negative prompt only then).

    Invariants:

    * every prediction handed to ``combine`` has the shape of the latents, and so does the result;
      batch order is preserved (item ``i`` of the result depends only on item ``i`` of each pass);
    * at the neutral scale (1 for CFG-style guiders, 0 for the extra terms of PAG / skip-layer
      guidance) the result equals the positive prediction;
    * ``combine`` is given, and uses, exactly the passes ``passes`` declared for that step;
    * deterministic; ``from_config(config)`` rebuilds an equal guider.
    """

    uses_negative: bool

    def passes(self, step: Any) -> Any: ...

    def combine(self, predictions: Any, step: Any) -> Any: ...


PROTOCOLS = {
    "scheduler": Scheduler,
    "denoiser": Denoiser,
    "autoencoder": Autoencoder,
    "conditioner": Conditioner,
    "adapter": Adapter,
    "quantizer": Quantizer,
    "pipeline": Pipeline,
    "guider": Guider,
}


def kind_of(component: Any) -> str | None:
    """The kind a class or instance declares in ``component_kind``, or ``None`` when it declares none.

    A declared value that is not a protocol name is a bug in the component and raises ``ValueError``.
    """
    kind = getattr(component, "component_kind", None)
    if kind is None:
        return None
    if not isinstance(kind, str) or kind not in PROTOCOLS:
        name = component.__name__ if isinstance(component, type) else type(component).__name__
        raise ValueError(f"{name}.component_kind={kind!r} is not a component kind; accepted values: {', '.join(PROTOCOLS)}")
    return kind
