"""KandinskyV22PriorEmb2EmbPipeline against Diffusers (the oracle): same weights, same numbers; folders both ways;
interpolate; bad input."""

from __future__ import annotations

import functools

import numpy as np
import PIL.Image
import pytest
import torch

import diffusers
import kernel
from kernel_kandinsky import KandinskyV22PriorEmb2EmbPipeline, KandinskyV22PriorPipeline

from kandinsky_fixtures import EMBED, gen, max_diff, prior_pipes

STEPS = 10
TOL = 1e-3


def _image(seed: int = 0, size: int = 40) -> PIL.Image.Image:
    return PIL.Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8))


def _embedding(batch: int = 1, seed: int = 8) -> torch.Tensor:
    return torch.randn(batch, EMBED, generator=gen(seed))


#: Diffusers' test scheduler (x0 prediction) leaves the tiny prior's output almost independent of where it starts
#: (strength, image and seed move it by < 1e-3), so every parity case also runs with epsilon prediction, where
#: they move it by more than 1.
SCHEDULERS = {"diffusers_test": {}, "epsilon": {"prediction_type": "epsilon"}}


@functools.lru_cache(maxsize=None)
def _pipes(scheduler: str):
    ref, ours = prior_pipes(**SCHEDULERS[scheduler])
    ref = diffusers.KandinskyV22PriorEmb2EmbPipeline(**ref.components)
    ref.set_progress_bar_config(disable=True)
    return ref, KandinskyV22PriorEmb2EmbPipeline.from_pipe(ours)


@pytest.fixture(scope="module")
def pipes():
    return _pipes("diffusers_test")


@pytest.fixture(scope="module")
def eps():
    return _pipes("epsilon")


CASES = {
    "default": dict(prompt="a red cat"),
    "negative_prompts_several_prompts": dict(prompt=["a red cat", "a dog"], negative_prompt=["low", "bad"]),
    "one_negative_prompt": dict(prompt="a red cat", negative_prompt="blurry"),
    "no_cfg": dict(prompt="a red cat", guidance_scale=1.0),
    "strength_0.5": dict(prompt="a red cat", strength=0.5),
    "strength_1": dict(prompt="a red cat", strength=1.0),
    "num_images_per_prompt": dict(prompt=["a red cat", "a dog"], num_images_per_prompt=2),
    "num_images_negative": dict(prompt=["a red cat", "a dog"], negative_prompt=["low", "bad"], num_images_per_prompt=2),
    "image_embedding": dict(prompt=["a red cat", "a dog"], image=_embedding()),
    "embedding_per_prompt": dict(prompt=["a red cat", "a dog"], image=[_embedding(1, 1), _embedding(1, 2)]),
    "pixel_tensor": dict(prompt="a red cat", image=torch.rand(1, 3, 32, 32, generator=gen(4)) * 2 - 1),
    "pil_list": dict(prompt=["a red cat", "a dog"], image=[_image(1), _image(2)], num_images_per_prompt=2),
    "generator_list": dict(prompt=["a red cat", "a dog"], generator=[gen(1), gen(2)]),
    "numpy": dict(prompt="a red cat", output_type="np"),
}


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("case", list(CASES))
def test_emb2emb_matches_diffusers(case, scheduler):
    ref, ours = _pipes(scheduler)
    kwargs = dict(CASES[case])
    kwargs.setdefault("image", _image())
    generators = kwargs.pop("generator", None)

    def run(pipe):
        g = [torch.Generator().manual_seed(x.initial_seed()) for x in generators] if generators else gen(3)
        return pipe(**kwargs, generator=g, num_inference_steps=STEPS)

    a, b = run(ref), run(ours)
    assert max_diff(a.image_embeds, b.image_embeds) < TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) < TOL
    prompts = kwargs["prompt"] if isinstance(kwargs["prompt"], list) else [kwargs["prompt"]]
    rows = len(prompts) * kwargs.get("num_images_per_prompt", 1)
    assert tuple(b.image_embeds.shape) == (rows, EMBED) == tuple(b.negative_image_embeds.shape)
    assert float(torch.as_tensor(b.image_embeds).std()) > 0.05  # not a constant output
    if scheduler == "epsilon":  # the starting embedding matters: another seed moves the result far
        g = [gen(x.initial_seed() + 10) for x in generators] if generators else gen(4)
        other = ours(**kwargs, generator=g, num_inference_steps=STEPS)
        assert max_diff(b.image_embeds, other.image_embeds) > 0.1
    if case == "numpy":
        assert isinstance(b.image_embeds, np.ndarray)


def test_strength_and_image_change_the_embedding(eps):
    _, ours = eps

    def run(**kwargs):
        return ours(**{"prompt": "a red cat", "image": _image(), **kwargs}, generator=gen(3),
                    num_inference_steps=STEPS).image_embeds

    weak = run(strength=0.2)
    assert max_diff(weak, run(strength=0.9)) > 1e-2
    assert max_diff(weak, run(image=_image(5))) > 1e-2


def test_return_tuple(pipes):
    ref, ours = pipes
    a = ref("a cat", _image(), generator=gen(), num_inference_steps=STEPS, return_dict=False)
    b = ours("a cat", _image(), generator=gen(), num_inference_steps=STEPS, return_dict=False)
    assert isinstance(b, tuple) and len(b) == 2
    assert max_diff(a[0], b[0]) < TOL and max_diff(a[1], b[1]) < TOL


def test_interpolate(eps):
    ref, ours = eps
    images = [_image(1), torch.rand(1, 3, 32, 32, generator=gen(4))]
    # Images only: Diffusers' weighted sum (its negative is torch.randn_like noise, so only the sum is compared).
    a = ref.interpolate(images, [0.3, 0.7], num_inference_steps=STEPS, generator=gen(6))
    b = ours.interpolate(images, [0.3, 0.7], num_inference_steps=STEPS, generator=gen(6))
    assert max_diff(a.image_embeds, b.image_embeds) < TOL
    # With a prompt (Diffusers' emb2emb interpolate cannot sample one): the text prior's interpolate.
    text = KandinskyV22PriorPipeline.from_pipe(ours)
    mixed = ["a cat", images[0]]
    c = ours.interpolate(mixed, [0.4, 0.6], num_inference_steps=STEPS, generator=gen(6))
    d = text.interpolate(mixed, [0.4, 0.6], num_inference_steps=STEPS, generator=gen(6))
    assert max_diff(c.image_embeds, d.image_embeds) < 1e-6
    assert max_diff(c.negative_image_embeds, d.negative_image_embeds) < 1e-6
    assert torch.allclose(c.negative_image_embeds, ours.get_zero_embed(1), atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        ours.interpolate(["a"], [0.5, 0.5])


def test_folders_both_ways(eps, tmp_path):
    ref, ours = eps
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = diffusers.KandinskyV22PriorEmb2EmbPipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert isinstance(mine, KandinskyV22PriorEmb2EmbPipeline)
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    a, b, c = (p("a cat", _image(), generator=gen(), num_inference_steps=STEPS).image_embeds
               for p in (back, mine, ours))
    assert max_diff(a, b) < TOL and max_diff(b, c) < TOL


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(strength=1.5), ValueError, r"strength must be a number in \[0.0, 1.0\]"),
    (dict(strength=-0.1), ValueError, r"strength must be a number in \[0.0, 1.0\]"),
    (dict(strength=0.05), ValueError, "leaves no denoising step"),
    (dict(image=torch.zeros(1, EMBED + 1)), ValueError, "image embeddings have width 33 but this prior takes width 32"),
    (dict(image=[torch.zeros(1, 16)]), ValueError, "image embeddings have width 16"),
    (dict(image=torch.zeros(1, 3, 16, 16)), ValueError, "image encoder takes"),
    (dict(image=torch.zeros(3, EMBED, 1)), ValueError, "image tensors must be image embeddings"),
    (dict(image="cat.png"), ValueError, "image must be a PIL image, a torch.Tensor"),
    (dict(image=[]), ValueError, "image must not be an empty list"),
    (dict(image=torch.zeros(3, EMBED)), ValueError, "3 images .* for 1 prompts"),
    (dict(prompt=3), ValueError, "prompt must be a str"),
    (dict(prompt=["a", "b"], negative_prompt=["c"]), ValueError, "one negative prompt per prompt"),
    (dict(output_type="pil"), ValueError, "output_type"),
    (dict(generator=[gen(), gen()]), ValueError, "generator"),
])
def test_bad_input_is_a_clear_error(pipes, kwargs, error, match):
    _, ours = pipes
    args = dict(prompt="a cat", image=_image(), num_inference_steps=STEPS)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ours(**args)
