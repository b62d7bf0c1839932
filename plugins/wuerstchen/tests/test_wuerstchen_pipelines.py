"""WuerstchenPriorPipeline, WuerstchenDecoderPipeline and WuerstchenCombinedPipeline against Diffusers 0.42.1 on
tiny components: numbers, arguments, folders both ways, the registry / aliases / AutoPipeline, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import kernel
from kernel_wuerstchen import (DEFAULT_STAGE_C_TIMESTEPS, WuerstchenCombinedPipeline, WuerstchenDecoderPipeline,
                               WuerstchenPriorPipeline)
from wuerstchen_fixtures import (DECODER, DECODER_TEXT, EMBED, PRIOR, combined_pipes, decoder_pipes, gen,
                                 prior_pipes)

TOL = 1e-3


@pytest.fixture(scope="module")
def priors():
    return prior_pipes()


@pytest.fixture(scope="module")
def decoders():
    return decoder_pipes()


@pytest.fixture(scope="module")
def plain_decoders():
    return decoder_pipes(DECODER)


@pytest.fixture(scope="module")
def combined():
    return combined_pipes()


def _embedding_diff(a, b, latent_mean: float = 42.0) -> float:
    """The prior's outputs are ``latents * latent_mean - latent_std``: compared in the sampler's units, where the
    fp32 rounding of the two runs is not multiplied by 42."""
    a, b = (torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x for x in (a, b))
    return (a - b).abs().max().item() / latent_mean


def _run_both(pair, *args, **kwargs):
    ref, ours = pair
    return ref(*args, **kwargs, generator=gen()), ours(*args, **kwargs, generator=gen())


# ------------------------------------------------------------------ prior
PRIOR_RUN = dict(num_inference_steps=2, height=128, width=128)


@pytest.mark.parametrize("case", [
    dict(prompt="horse"),
    dict(prompt=["horse", "a red car"], negative_prompt=["blurry", "dark"], num_images_per_prompt=2),
    dict(prompt="horse", guidance_scale=1.0),
    dict(prompt="horse", height=100, width=230),
    dict(prompt="horse", timesteps=[1.0, 0.7, 0.3, 0.0]),
], ids=["default", "negatives-several-prompts", "no-cfg", "non-square", "custom-timesteps"])
def test_prior_matches_diffusers(priors, case):
    run = {**PRIOR_RUN, **case}
    if "timesteps" in run:
        run.pop("num_inference_steps")
    expected, got = _run_both(priors, **run)
    a, b = expected.image_embeddings, got.image_embeddings
    assert a.shape == b.shape
    assert _embedding_diff(a, b) < TOL


def test_prior_explicit_latents_and_embeds_match_diffusers(priors):
    ref, ours = priors
    latents = torch.randn(2, PRIOR["c_in"], 3, 3, generator=gen(7))
    embeds = ours._encode_texts(["horse", "a cat"], "cpu")
    negative = ours._encode_texts(["", "dark"], "cpu")
    kw = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, latents=latents, **PRIOR_RUN)
    expected, got = _run_both(priors, **kw)
    assert _embedding_diff(expected.image_embeddings, got.image_embeddings) < TOL
    # the same run from the prompts gives the same embeddings
    again = ours(prompt=["horse", "a cat"], negative_prompt=["", "dark"], latents=latents, **PRIOR_RUN,
                 generator=gen()).image_embeddings
    assert torch.allclose(again, got.image_embeddings, atol=1e-5)


def test_prior_output_types(priors):
    ref, ours = priors
    array = ours("horse", **PRIOR_RUN, output_type="np", generator=gen()).image_embeddings
    tensor = ours("horse", **PRIOR_RUN, return_dict=False, generator=gen())
    assert isinstance(array, np.ndarray) and isinstance(tensor, tuple) and len(tensor) == 1
    assert np.allclose(array, tensor[0].numpy(), atol=1e-6)
    expected = ref("horse", **PRIOR_RUN, output_type="np", generator=gen()).image_embeddings
    assert _embedding_diff(expected, array) < TOL


def test_prior_callback_sees_diffusers_names(priors):
    _, ours = priors
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append({k: None if v is None else tuple(v.shape) for k, v in tensors.items()})
        return {}

    ours("horse", **PRIOR_RUN, callback_on_step_end=callback, generator=gen(),
         callback_on_step_end_tensor_inputs=["latents", "text_encoder_hidden_states", "negative_prompt_embeds"])
    assert len(seen) == 2
    assert seen[0]["latents"] == (1, PRIOR["c_in"], 3, 3)
    assert seen[0]["text_encoder_hidden_states"][0] == 2 and seen[0]["negative_prompt_embeds"][0] == 1


def test_default_stage_c_timesteps_match_diffusers():
    from diffusers.pipelines.deprecated.wuerstchen import DEFAULT_STAGE_C_TIMESTEPS as theirs

    assert np.allclose(DEFAULT_STAGE_C_TIMESTEPS, [float(t) for t in theirs], atol=0, rtol=0)


# ------------------------------------------------------------------ decoder
def _embeddings(rows=1, h=3, w=3, seed=3):
    return torch.randn(rows, 16, h, w, generator=gen(seed))


@pytest.mark.parametrize("case", [
    dict(prompt="horse"),
    dict(prompt="horse", guidance_scale=4.0, negative_prompt="blurry"),
    dict(prompt="horse", guidance_scale=4.0, num_inference_steps=3),
    dict(prompt="horse", timesteps=[1.0, 0.5, 0.0]),
], ids=["default-no-cfg", "cfg-negative", "cfg-3-steps", "custom-timesteps"])
def test_decoder_matches_diffusers(decoders, case):
    run = {"num_inference_steps": 2, "output_type": "np", **case}
    if "timesteps" in run:
        run.pop("num_inference_steps")
    expected, got = _run_both(decoders, _embeddings(), **run)
    assert got.images.shape == expected.images.shape == (1, 128, 128, 3)
    assert np.abs(got.images - expected.images).max() < TOL


def test_decoder_explicit_latents_match_diffusers(decoders):
    latents = torch.randn(1, 4, 32, 32, generator=gen(9))
    expected, got = _run_both(decoders, _embeddings(), prompt="horse", latents=latents, num_inference_steps=2,
                              output_type="pt")
    assert isinstance(got.images, torch.Tensor) and got.images.shape == (1, 3, 128, 128)
    assert (got.images - expected.images).abs().max().item() < TOL
    lat_ref, lat_ours = _run_both(decoders, _embeddings(), prompt="horse", latents=latents, num_inference_steps=2,
                                  output_type="latent")
    assert (lat_ours.images - lat_ref.images).abs().max().item() < TOL


@pytest.mark.parametrize("case", [
    dict(prompt=["horse", "a red car"], rows=2, guidance_scale=4.0, negative_prompt=["blurry", "dark"]),
    dict(prompt="horse", rows=1, num_images_per_prompt=2),
    dict(prompt="horse", rows=1, h=3, w=4),
], ids=["several-prompts-negatives", "images-per-prompt", "non-square"])
def test_decoder_batches_match_diffusers(plain_decoders, case):
    # Diffusers' own test decoder (no attention, no effnet injection): Diffusers' batch rules for several prompts
    # and images per prompt give text / embedding rows this decoder never reads, so the runs are comparable.
    case = dict(case)
    embeddings = _embeddings(case.pop("rows"), case.pop("h", 3), case.pop("w", 3))
    expected, got = _run_both(plain_decoders, embeddings, num_inference_steps=2, output_type="np", **case)
    assert got.images.shape == expected.images.shape
    assert np.abs(got.images - expected.images).max() < TOL


def test_decoder_several_prompts_condition_each_image(decoders):
    # With attention, each image reads its own prompt: the batch equals the single runs.
    _, ours = decoders
    embeddings = _embeddings(2)
    both = ours(embeddings, prompt=["horse", "a red car"], num_inference_steps=2, output_type="np",
                generator=[gen(0), gen(1)]).images
    one = ours(embeddings[:1], prompt="horse", num_inference_steps=2, output_type="np", generator=gen(0)).images
    two = ours(embeddings[1:], prompt="a red car", num_inference_steps=2, output_type="np", generator=gen(1)).images
    assert np.abs(both - np.concatenate([one, two])).max() < 1e-4


def test_decoder_return_dict_false_gives_the_images(decoders):
    _, ours = decoders
    images = ours(_embeddings(), prompt="horse", num_inference_steps=2, output_type="pil", return_dict=False,
                  generator=gen())
    assert isinstance(images, list) and images[0].size == (128, 128)


# ------------------------------------------------------------------ combined
COMBINED_RUN = dict(prior_guidance_scale=4.0, decoder_guidance_scale=4.0, num_inference_steps=2,
                    prior_num_inference_steps=2, output_type="np", height=128, width=128)


@pytest.mark.parametrize("case", [
    dict(prompt="horse"),
    dict(prompt=["horse", "a red car"], negative_prompt=["blurry", "dark"]),
    dict(prompt="horse", height=128, width=256, prior_guidance_scale=1.0, decoder_guidance_scale=0.0),
], ids=["diffusers-test", "several-prompts-negatives", "non-square-no-cfg"])
def test_combined_matches_diffusers(combined, case):
    expected, got = _run_both(combined, **{**COMBINED_RUN, **case})
    assert got.images.shape == expected.images.shape
    assert np.abs(got.images - expected.images).max() < TOL


def test_combined_size_the_decoder_cannot_take_is_a_value_error(combined):
    # 200 px -> a 5-wide embedding -> 53 latent columns, which the decoder's 2x2 patches cannot split (Diffusers
    # fails inside pixel_unshuffle).
    _, ours = combined
    with pytest.raises(ValueError, match="53 latent grid|x 53 latent grid"):
        ours("horse", **{**COMBINED_RUN, "width": 200}, generator=gen())


def test_combined_explicit_latents_match_diffusers(combined):
    latents = torch.randn(1, PRIOR["c_in"], 3, 3, generator=gen(11))
    expected, got = _run_both(combined, "horse", latents=latents, **COMBINED_RUN)
    assert np.abs(got.images - expected.images).max() < TOL


def test_combined_equals_the_two_stages_by_hand(combined):
    _, ours = combined
    out = ours(["horse", "a red car"], negative_prompt=["blurry", "dark"], **COMBINED_RUN, generator=gen()).images
    g = gen()
    prior = WuerstchenPriorPipeline(**{k[len("prior_"):]: v for k, v in ours.components.items()
                                       if k.startswith("prior_")})
    decoder = WuerstchenDecoderPipeline(**{k: v for k, v in ours.components.items() if not k.startswith("prior_")})
    for p in (prior, decoder):
        p.set_progress_bar_config(disable=True)
    embeddings = prior(["horse", "a red car"], negative_prompt=["blurry", "dark"], guidance_scale=4.0,
                       num_inference_steps=2, height=128, width=128, generator=g).image_embeddings
    images = decoder(embeddings, prompt=["horse", "a red car"], negative_prompt=["blurry", "dark"], guidance_scale=4.0,
                     num_inference_steps=2, output_type="np", generator=g).images
    assert np.array_equal(out, images)


def test_combined_defaults_are_diffusers():
    import inspect

    import diffusers

    for ours, theirs in ((WuerstchenCombinedPipeline, diffusers.WuerstchenCombinedPipeline),
                         (WuerstchenPriorPipeline, diffusers.WuerstchenPriorPipeline),
                         (WuerstchenDecoderPipeline, diffusers.WuerstchenDecoderPipeline)):
        # **kwargs included: both take Diffusers' deprecated callback keywords through it
        mine = {k: (p.kind, p.default) for k, p in inspect.signature(ours.__call__).parameters.items() if k != "self"}
        ref = {k: (p.kind, p.default) for k, p in inspect.signature(theirs.__call__).parameters.items()
               if k != "self"}
        assert mine == ref, ours.__name__
        init = {k: p.default for k, p in inspect.signature(ours.__init__).parameters.items() if k != "self"}
        ref_init = {k: p.default for k, p in inspect.signature(theirs.__init__).parameters.items() if k != "self"}
        assert init == ref_init, ours.__name__


# ------------------------------------------------------------------ folders, registry, aliases
def _library_as_on_the_hub(folder):
    """The Hub's Würstchen folders name their models' library "wuerstchen"; Diffusers 0.42.1 writes "diffusers"."""
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    for name, entry in index.items():
        if isinstance(entry, list) and entry[1] in ("WuerstchenPrior", "WuerstchenDiffNeXt", "PaellaVQModel"):
            entry[0] = "wuerstchen"
    path.write_text(json.dumps(index))


@pytest.mark.parametrize("library", ["diffusers", "wuerstchen"])
def test_diffusers_combined_folder_loads_here(combined, tmp_path, library):
    ref, _ = combined
    ref.save_pretrained(tmp_path / "c")
    if library == "wuerstchen":
        _library_as_on_the_hub(tmp_path / "c")
    for load in (lambda: kernel.load(str(tmp_path / "c")), lambda: kernel.load("wuerstchen", str(tmp_path / "c")),
                 lambda: kernel.component("AutoPipelineForText2Image").from_pretrained(tmp_path / "c")):
        mine = load()
        assert type(mine) is WuerstchenCombinedPipeline
    mine.set_progress_bar_config(disable=True)
    expected = ref("horse", **COMBINED_RUN, generator=gen()).images
    assert np.abs(mine("horse", **COMBINED_RUN, generator=gen()).images - expected).max() < TOL


def test_stage_folders_both_ways(priors, decoders, tmp_path):
    from diffusers.pipelines.deprecated import wuerstchen as theirs

    import diffusers

    for (ref, ours), name in ((priors, "prior"), (decoders, "decoder")):
        ref.save_pretrained(tmp_path / f"theirs-{name}")
        _library_as_on_the_hub(tmp_path / f"theirs-{name}")
        mine = kernel.load(str(tmp_path / f"theirs-{name}"))
        assert type(mine) is type(ours)
        assert type(getattr(mine, name)) is type(getattr(ours, name))
        ours.save_pretrained(tmp_path / f"ours-{name}")
        index = json.loads((tmp_path / f"ours-{name}" / "model_index.json").read_text())
        theirs_index = json.loads((tmp_path / f"theirs-{name}" / "model_index.json").read_text())
        assert index["_class_name"] == theirs_index["_class_name"]
        assert {k for k in index if not k.startswith("_")} == {k for k in theirs_index if not k.startswith("_")}
    # Diffusers 0.42.1 resolves neither ["diffusers", "WuerstchenPrior"] (what its own save_pretrained writes) nor the
    # Hub's ["wuerstchen", ...]; ours writes ["stable_cascade", ...], with which Diffusers takes the models passed in.
    assert index["decoder"] == ["stable_cascade", "WuerstchenDiffNeXt"] and index["vqgan"][0] == "stable_cascade"
    folder = tmp_path / "ours-prior"
    back = diffusers.WuerstchenPriorPipeline.from_pretrained(
        folder, prior=theirs.WuerstchenPrior.from_pretrained(folder, subfolder="prior"))
    back.set_progress_bar_config(disable=True)
    expected = priors[0]("horse", **PRIOR_RUN, generator=gen()).image_embeddings
    assert _embedding_diff(back("horse", **PRIOR_RUN, generator=gen()).image_embeddings, expected) < 1e-6
    folder = tmp_path / "ours-decoder"
    back = diffusers.WuerstchenDecoderPipeline.from_pretrained(
        folder, decoder=theirs.WuerstchenDiffNeXt.from_pretrained(folder, subfolder="decoder"),
        vqgan=theirs.PaellaVQModel.from_pretrained(folder, subfolder="vqgan"))
    back.set_progress_bar_config(disable=True)
    run = dict(prompt="horse", num_inference_steps=2, output_type="np")
    expected = decoders[0](_embeddings(), **run, generator=gen()).images
    assert np.abs(back(_embeddings(), **run, generator=gen()).images - expected).max() < 1e-6


def test_our_combined_folder_loads_in_diffusers(combined, tmp_path):
    from diffusers.pipelines.deprecated import wuerstchen as theirs

    import diffusers

    ref, ours = combined
    ours.save_pretrained(tmp_path / "c")
    folder = tmp_path / "c"
    back = diffusers.WuerstchenCombinedPipeline.from_pretrained(
        folder, prior_prior=theirs.WuerstchenPrior.from_pretrained(folder, subfolder="prior_prior"),
        decoder=theirs.WuerstchenDiffNeXt.from_pretrained(folder, subfolder="decoder"),
        vqgan=theirs.PaellaVQModel.from_pretrained(folder, subfolder="vqgan"))
    back.set_progress_bar_config(disable=True)
    expected = ref("horse", **COMBINED_RUN, generator=gen()).images
    assert np.abs(back("horse", **COMBINED_RUN, generator=gen()).images - expected).max() < 1e-6
    assert type(kernel.load(str(folder))) is WuerstchenCombinedPipeline


def test_registry_and_aliases():
    from kernel.registry import get_registry

    assert kernel.component("WuerstchenPriorPipeline") is WuerstchenPriorPipeline
    assert kernel.component("WuerstchenDecoderPipeline") is WuerstchenDecoderPipeline
    assert kernel.component("WuerstchenCombinedPipeline") is WuerstchenCombinedPipeline
    aliases = {"wuerstchen": WuerstchenCombinedPipeline, "wuerstchen-prior": WuerstchenPriorPipeline,
               "wuerstchen-decoder": WuerstchenDecoderPipeline}
    for alias, cls in aliases.items():
        assert get_registry().resolve(alias, "kernel.aliases") is cls


def test_auto_pipeline_keeps_each_stage(priors, tmp_path):
    _, ours = priors
    ours.save_pretrained(tmp_path / "p")
    auto = kernel.component("AutoPipelineForText2Image")
    assert type(auto.from_pretrained(tmp_path / "p")) is WuerstchenPriorPipeline
    assert type(auto.from_pipe(ours)) is WuerstchenPriorPipeline


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompt_embeds=torch.randn(1, 77, EMBED + 1)), ValueError, r"prompt_embeds must be \(batch, tokens, 32\)"),
    (dict(prompt="a", negative_prompt_embeds=torch.randn(1, 77, 7)), ValueError, "negative_prompt_embeds must be"),
    (dict(prompt="a", height=0), ValueError, "height must be a positive int"),
    (dict(prompt="a", width=12.5), ValueError, "width must be a positive int"),
    (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), ValueError, "negative_prompt has 3 entries"),
    (dict(prompt="a", prompt_embeds=torch.randn(1, 77, EMBED)), ValueError, "either prompt or prompt_embeds"),
    (dict(prompt=3), ValueError, "prompt must be a str"),
    (dict(prompt="a", output_type="pil"), ValueError, "output_type='pil' is not supported by the prior"),
    (dict(prompt="a", latents=torch.randn(1, 2, 4, 4)), ValueError, "latents must have shape"),
    (dict(prompt="a", num_inference_steps=0), ValueError, "num_inference_steps must be a positive int"),
])
def test_prior_bad_input(priors, kwargs, error, match):
    _, ours = priors
    with pytest.raises(error, match=match):
        ours(**{"num_inference_steps": 2, "height": 128, "width": 128, **kwargs})


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(image_embeddings=torch.randn(1, 8, 3, 3)), ValueError, r"\(batch, 16, height.*decoder's effnet_embd"),
    (dict(image_embeddings=[torch.randn(1, 8, 3, 3)]), ValueError, r"image_embeddings must be \(batch, 16, height"),
    (dict(image_embeddings=torch.randn(16, 3, 3)), ValueError, "image_embeddings must be"),
    (dict(image_embeddings="x"), TypeError, "image_embeddings must be a tensor"),
    (dict(image_embeddings=torch.randn(1, 16, 3, 2)), ValueError, "must be divisible by 4"),
    (dict(prompt=None), ValueError, "prompt is required"),
    (dict(output_type="jpeg"), ValueError, "output_type='jpeg' is not supported"),
    (dict(image_embeddings=torch.randn(3, 16, 3, 3), prompt=["a", "b"]), ValueError, "3 rows for 2 prompts"),
])
def test_decoder_bad_input(decoders, kwargs, error, match):
    _, ours = decoders
    with pytest.raises(error, match=match):
        ours(**{"image_embeddings": _embeddings(), "prompt": "a", "num_inference_steps": 2, **kwargs})


def test_decoder_callback_steps_and_interrupt(decoders):
    _, ours = decoders
    seen, stopped = [], []

    def record(pipe, i, t, tensors):
        seen.append((i, float(t), tuple(tensors["image_embeddings"].shape)))
        return {}

    def interrupt(pipe, i, t, tensors):
        stopped.append(i)
        pipe._interrupt = True
        return {}

    ours(_embeddings(), prompt="horse", num_inference_steps=3, output_type="latent", callback_on_step_end=record,
         callback_on_step_end_tensor_inputs=["latents", "image_embeddings"], generator=gen())
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][1] == 1.0 and seen[0][2] == (1, 16, 3, 3)
    # Diffusers' name for the token states, both ways: seen [negative; positive] under guidance, and replaced
    states = []

    def read_and_zero(pipe, i, t, tensors):
        states.append(tensors["text_encoder_hidden_states"].clone())
        return {"text_encoder_hidden_states": torch.zeros_like(tensors["text_encoder_hidden_states"])}

    ours(_embeddings(), prompt="horse", guidance_scale=4.0, num_inference_steps=2, output_type="latent",
         callback_on_step_end=read_and_zero, callback_on_step_end_tensor_inputs=["text_encoder_hidden_states"],
         generator=gen())
    assert states[0].shape[0] == 2 and states[0].abs().sum() > 0 and states[1].abs().sum() == 0
    ours(_embeddings(), prompt="horse", num_inference_steps=3, output_type="latent", callback_on_step_end=interrupt,
         generator=gen())
    ours._interrupt = False
    assert stopped == [0]
