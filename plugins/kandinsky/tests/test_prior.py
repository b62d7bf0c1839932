"""PriorTransformer and KandinskyV22PriorPipeline against Diffusers (the oracle): same weights, same numbers."""

from __future__ import annotations

import pytest
import torch

import diffusers
import kernel
from kernel_kandinsky import KandinskyV22PriorPipeline, PriorTransformer

from kandinsky_fixtures import EMBED, gen, max_diff, prior, prior_pipes

STEPS = 3
TOL = 1e-3

PRIOR_VARIANTS = {
    "kandinsky": dict(num_attention_heads=2, attention_head_dim=12, embedding_dim=EMBED, num_layers=1),
    "norms_no_prd": dict(num_attention_heads=2, attention_head_dim=8, embedding_dim=EMBED, num_layers=2,
                         norm_in_type="layer", embedding_proj_norm_type="layer", added_emb_type=None,
                         num_embeddings=6, additional_embeddings=3, embedding_proj_dim=20, clip_embed_dim=24),
    "no_text_tokens": dict(num_attention_heads=2, attention_head_dim=8, embedding_dim=EMBED, num_layers=1,
                           encoder_hid_proj_type=None, num_embeddings=0, additional_embeddings=4),
}


def _prior_pair(name):
    torch.manual_seed(0)
    ref = diffusers.PriorTransformer(**PRIOR_VARIANTS[name]).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    ours = PriorTransformer(**PRIOR_VARIANTS[name]).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@torch.no_grad()
@pytest.mark.parametrize("name", list(PRIOR_VARIANTS))
def test_prior_transformer_matches_diffusers(name):
    ref, ours = _prior_pair(name)
    cfg = PRIOR_VARIANTS[name]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, EMBED, generator=g)
    proj = torch.randn(3, cfg.get("embedding_proj_dim", EMBED), generator=g)
    kwargs = {}
    if cfg.get("encoder_hid_proj_type", "linear") is not None:
        tokens = cfg.get("num_embeddings", 77)
        mask = torch.ones(3, tokens, dtype=torch.bool)
        mask[0, 3:] = False
        kwargs = dict(encoder_hidden_states=torch.randn(3, tokens, EMBED, generator=g), attention_mask=mask)
    for t in (torch.tensor(7), 500, torch.tensor([1, 2, 3])):
        a = ref(x, t, proj, **kwargs).predicted_image_embedding
        b = ours(x, t, proj, **kwargs).predicted_image_embedding
        assert max_diff(a, b) < 1e-5
    assert torch.allclose(ours.post_process_latents(b), ref.post_process_latents(b))


def test_prior_transformer_needs_text_tokens_when_it_projects_them():
    _, ours = _prior_pair("kandinsky")
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        ours(torch.zeros(1, EMBED), 1, torch.zeros(1, EMBED))


@pytest.mark.parametrize("bad", [{"norm_in_type": "rms"}, {"added_emb_type": "cls"}, {"encoder_hid_proj_type": "mlp"}])
def test_prior_transformer_bad_config(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        PriorTransformer(**{**PRIOR_VARIANTS["kandinsky"], **bad})


@pytest.fixture(scope="module")
def pipes():
    return prior_pipes()


CASES = {
    "default": dict(prompt="a red cat"),
    "negative_prompt": dict(prompt="a red cat", negative_prompt="blurry"),
    "batch": dict(prompt=["a red cat", "a dog"], num_images_per_prompt=2),
    "batch_negative": dict(prompt=["a red cat", "a dog"], negative_prompt=["low", "bad"]),
    "guidance_off": dict(prompt="a red cat", guidance_scale=1.0),
    "latents": dict(prompt="a red cat", latents=torch.randn(1, EMBED, generator=torch.Generator().manual_seed(5))),
    "numpy": dict(prompt="a red cat", output_type="np"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prior_pipeline_matches_diffusers(pipes, case):
    ref, ours = pipes
    kwargs = dict(CASES[case])
    a = ref(**kwargs, generator=gen(3), num_inference_steps=STEPS)
    b = ours(**kwargs, generator=gen(3), num_inference_steps=STEPS)
    assert max_diff(a.image_embeds, b.image_embeds) < TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) < TOL
    assert float(torch.as_tensor(b.image_embeds).std()) > 0.05  # not a constant output
    if case == "batch":
        assert b.image_embeds.shape == (4, EMBED)


def test_guidance_changes_the_embedding(pipes):
    _, ours = pipes
    on = ours("a red cat", generator=gen(3), num_inference_steps=STEPS).image_embeds
    off = ours("a red cat", generator=gen(3), num_inference_steps=STEPS, guidance_scale=1.0).image_embeds
    assert max_diff(on, off) > 1e-3


def test_return_tuple_and_generator_list(pipes):
    ref, ours = pipes
    a = ref(["a", "b"], generator=[gen(1), gen(2)], num_inference_steps=STEPS, return_dict=False)
    b = ours(["a", "b"], generator=[gen(1), gen(2)], num_inference_steps=STEPS, return_dict=False)
    assert isinstance(b, tuple) and len(b) == 2
    assert max_diff(a[0], b[0]) < TOL and max_diff(a[1], b[1]) < TOL


def test_callback_sees_the_guided_batch_and_can_replace_latents(pipes):
    ref, ours = pipes
    seen = {}

    def record(tag):
        def callback(pipe, i, t, tensors):
            seen.setdefault(tag, []).append({k: v.clone() for k, v in tensors.items()})
            return {"latents": tensors["latents"] * 0.5} if i == 0 else {}
        return callback

    names = ["latents", "prompt_embeds", "text_encoder_hidden_states", "text_mask"]
    a = ref("a cat", generator=gen(), num_inference_steps=STEPS, callback_on_step_end=record("ref"),
            callback_on_step_end_tensor_inputs=names).image_embeds
    b = ours("a cat", generator=gen(), num_inference_steps=STEPS, callback_on_step_end=record("ours"),
             callback_on_step_end_tensor_inputs=names).image_embeds
    assert max_diff(a, b) < TOL
    assert len(seen["ours"]) == STEPS
    for x, y in zip(seen["ref"], seen["ours"]):
        for name in names:
            assert x[name].shape == y[name].shape and max_diff(x[name], y[name]) < TOL


def test_interpolate_matches_diffusers(pipes):
    ref, ours = pipes
    image = torch.rand(1, 3, 32, 32, generator=gen(4))
    kwargs = dict(images_and_prompts=["a cat", image], weights=[0.3, 0.7], num_inference_steps=STEPS)
    a = ref.interpolate(**kwargs, generator=gen(6))
    b = ours.interpolate(**kwargs, generator=gen(6))
    assert max_diff(a.image_embeds, b.image_embeds) < TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) < TOL
    with pytest.raises(ValueError, match="weights"):
        ours.interpolate(["a"], [0.5, 0.5])
    with pytest.raises(ValueError, match="images_and_prompts"):
        ours.interpolate([3], [1.0])


def test_folders_both_ways(pipes, tmp_path):
    ref, ours = pipes
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "theirs")
    back = diffusers.KandinskyV22PriorPipeline.from_pretrained(tmp_path / "ours")
    mine = kernel.load(str(tmp_path / "theirs"))
    assert isinstance(mine, KandinskyV22PriorPipeline)
    for p in (back, mine):
        p.set_progress_bar_config(disable=True)
    a = back("a cat", generator=gen(), num_inference_steps=STEPS).image_embeds
    b = mine("a cat", generator=gen(), num_inference_steps=STEPS).image_embeds
    c = ours("a cat", generator=gen(), num_inference_steps=STEPS).image_embeds
    assert max_diff(a, b) < TOL and max_diff(b, c) < TOL


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompt=3), ValueError, "prompt must be a str"),
    (dict(prompt="a", negative_prompt=5), ValueError, "negative_prompt must be a str"),
    (dict(prompt=["a", "b"], negative_prompt=["c"]), ValueError, "one negative prompt per prompt"),
    (dict(prompt="a", output_type="pil"), ValueError, "output_type"),
    (dict(prompt="a", latents=torch.zeros(2, EMBED)), ValueError, r"latents must have shape \(1, 32\)"),
    (dict(prompt="a", num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
    (dict(prompt="a", generator=[gen(), gen()]), ValueError, "generator"),
    (dict(prompt="a", callback_on_step_end_tensor_inputs=["image_embeds"]), ValueError, "image_embeds"),
])
def test_bad_input_is_a_clear_error(pipes, kwargs, error, match):
    _, ours = pipes
    with pytest.raises(error, match=match):
        ours(**kwargs, num_inference_steps=STEPS)


def test_prior_output_is_not_an_image_pipeline_output(pipes):
    _, ours = pipes
    out = ours("a", num_inference_steps=STEPS, generator=gen())
    assert set(out.keys()) == {"image_embeds", "negative_image_embeds"}
    zero = ours.get_zero_embed(2)
    assert zero.shape == (2, EMBED) and torch.allclose(out.negative_image_embeds, zero[:1], atol=1e-6)


def test_prior_module_is_shared_not_copied(pipes):
    _, ours = pipes
    assert ours.components["prior"] is ours.prior and prior  # fixture builder importable
