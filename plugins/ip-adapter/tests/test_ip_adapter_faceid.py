"""IP-Adapter FaceID and FaceID Plus / PlusV2 (precomputed insightface embeddings, no face detector) on SD 1.x and
SDXL against Diffusers:
files written here in the original layout (face MLP, ``to_k_ip`` / ``to_v_ip``, a LoRA on every attention layer)
load in both libraries and give the same images; the LoRA is handled as Diffusers handles it; bad input is a clear
error."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import ip_fixtures as ipf  # noqa: E402
from ip_fixtures import single_thread  # noqa: E402,F401

from kernel_ip_adapter import (  # noqa: E402
    IPAdapter,
    IPAdapterFaceIDImageProjection,
    IPAdapterFaceIDPlusImageProjection,
    installed,
    projection_layers,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _with_negative(face: torch.Tensor) -> torch.Tensor:
    """Diffusers' documented FaceID input: ``[zeros; face]``."""
    return torch.cat([torch.zeros_like(face), face])


def _loaded(tmp_path: Path, xl: bool, suffix: str):
    d, o = ipf.pipelines(xl=xl, with_encoder=False)
    name = f"ip-adapter-faceid_{'sdxl' if xl else 'sd15'}{suffix}"
    ipf.save(ipf.random_faceid(d.unet), tmp_path / name)
    base = ipf.run(o)
    for p in (d, o):
        p.load_ip_adapter(str(tmp_path), subfolder=None, weight_name=name, image_encoder_folder=None)
    return d, o, base


@pytest.mark.parametrize("xl,suffix", [(False, ".bin"), (True, ".safetensors")], ids=["sd15-bin", "sdxl-safetensors"])
def test_faceid_matches_diffusers_and_unloads(tmp_path, xl, suffix):
    d, o, base = _loaded(tmp_path, xl, suffix)
    assert type(projection_layers(o.unet)[0]) is IPAdapterFaceIDImageProjection
    # the LoRA: adapter "faceid_0", active, in the UNet only (Diffusers: load_lora_weights + set_adapters)
    assert o.get_list_adapters() == d.get_list_adapters() == {"unet": ["faceid_0"]}
    assert o.get_active_adapters() == d.get_active_adapters() == ["faceid_0"]

    face = ipf.face()
    ours = ipf.run(o, ip_adapter_image_embeds=[_with_negative(face)])
    ipf.assert_close(ours, ipf.run(d, ip_adapter_image_embeds=[_with_negative(face)]), atol=1e-3)
    assert np.abs(ours - base).max() > 5e-2, "the FaceID adapter must change the picture"
    other = ipf.run(o, ip_adapter_image_embeds=[_with_negative(ipf.face(1))])
    assert np.abs(ours - other).max() > 1e-2, "another face must give another picture"
    # the negative half is optional here: one row is the face, with zeros as its negative (what Diffusers is given)
    np.testing.assert_array_equal(ipf.run(o, ip_adapter_image_embeds=[face]), ours)

    o.set_ip_adapter_scale(0.6)
    d.set_ip_adapter_scale(0.6)
    scaled = ipf.run(o, ip_adapter_image_embeds=[face])
    ipf.assert_close(scaled, ipf.run(d, ip_adapter_image_embeds=[_with_negative(face)]), atol=1e-3)
    assert np.abs(scaled - ours).max() > 1e-2

    # without guidance: the positive rows alone
    call = dict(guidance_scale=1.0, ip_adapter_image_embeds=[face])
    ipf.assert_close(ipf.run(o, **call), ipf.run(d, **call), atol=1e-3)

    # Diffusers' unload_ip_adapter leaves the FaceID LoRA in the UNet; so does ours
    for p in (d, o):
        p.unload_ip_adapter()
    assert not installed(o.unet) and o.get_list_adapters() == {"unet": ["faceid_0"]}
    ipf.assert_close(ipf.run(o), ipf.run(d), atol=1e-3)
    o.delete_adapters("faceid_0")
    np.testing.assert_array_equal(ipf.run(o), base)


def test_faceid_batch_of_prompts_and_several_faces_match_diffusers(tmp_path):
    d, o, _ = _loaded(tmp_path, False, ".bin")
    # Diffusers repeats the embeddings' rows for every image of the batch: one face (row) serves all prompts
    call = dict(prompt=["a photo of a girl", "a photo of a man"], negative_prompt=["blurry", "dark"],
                num_images_per_prompt=2)
    face = ipf.face(2)
    ours = ipf.run(o, ip_adapter_image_embeds=[_with_negative(face)], **call)
    assert ours.shape[0] == 4
    ipf.assert_close(ours, ipf.run(d, ip_adapter_image_embeds=[_with_negative(face)], **call), atol=1e-3)
    np.testing.assert_array_equal(ipf.run(o, ip_adapter_image_embeds=[face], **call), ours)
    # several reference faces (dim 1): every image attends to the tokens of all of them
    faces = ipf.face(3, faces=2)
    both = ipf.run(o, ip_adapter_image_embeds=[_with_negative(faces)])
    ipf.assert_close(both, ipf.run(d, ip_adapter_image_embeds=[_with_negative(faces)]), atol=1e-3)
    assert np.abs(both - ipf.run(o, ip_adapter_image_embeds=[faces[:, :1]])).max() > 1e-2


def test_faceid_next_to_a_plain_adapter_and_reloading(tmp_path):
    d, o = ipf.pipelines(with_encoder=False)
    states = [ipf.random_ip_adapter(d.unet, "ip"), ipf.random_faceid(d.unet, seed=1)]
    style = IPAdapter(ipf.random_faceid(d.unet, seed=2)).lora_state_dicts(o.unet)[0]  # a user's LoRA, loaded first
    for p in (d, o):
        p.load_lora_weights(style, adapter_name="style")
        p.load_ip_adapter(states, subfolder=None, weight_name=[None, None], image_encoder_folder=None)
    # Diffusers' set_adapters(["faceid_1"]) leaves the FaceID LoRA the only active one
    assert o.get_list_adapters() == d.get_list_adapters() == {"unet": ["style", "faceid_1"]}
    assert o.get_active_adapters() == d.get_active_adapters() == ["faceid_1"]
    image_embeds = torch.randn(2, 1, ipf.VISION["projection_dim"], generator=torch.Generator().manual_seed(5))
    call = dict(ip_adapter_image_embeds=[image_embeds, _with_negative(ipf.face())])
    ipf.assert_close(ipf.run(o, **call), ipf.run(d, **call), atol=1e-3)
    with pytest.raises(ValueError, match="IP-Adapter 1 is a FaceID adapter.*precomputed face embeddings"):
        ipf.run(o, ip_adapter_image=[ipf.ip_image(), ipf.ip_image()])
    # loading again keeps the LoRA adapter already there (Diffusers skips a loaded "faceid_<i>")
    for p in (d, o):
        p.load_ip_adapter(states, subfolder=None, weight_name=[None, None], image_encoder_folder=None)
    assert o.get_list_adapters() == {"unet": ["style", "faceid_1"]}
    ipf.assert_close(ipf.run(o, **call), ipf.run(d, **call), atol=1e-3)


def test_faceid_projection_and_bare_unet_match_diffusers():
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection as Theirs

    d, o = ipf.pipelines(with_encoder=False)
    state = ipf.random_faceid(d.unet)
    ours = IPAdapter(state).adapters[0].build_projection()
    theirs = Theirs(image_embed_dim=512, cross_attention_dim=32, mult=2, num_tokens=4).eval()
    theirs.load_state_dict(ours.state_dict())
    x = ipf.face(rows=3)[:, 0]
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)
    # the Adapter protocol on a bare UNet: the IP part only (the LoRA is the pipeline's, as in Diffusers)
    IPAdapter(state).apply(o.unet, 1.0)
    d.unet._load_ip_adapter_weights([state])
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    text = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
    faces = [ipf.face(rows=2)]
    with torch.no_grad():
        a = o.unet(latents, 10, text, added_cond_kwargs={"image_embeds": faces}).sample
        b = d.unet(latents, 10, text, added_cond_kwargs={"image_embeds": faces}).sample
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_faceid_bad_input_is_a_clear_error():
    d, o = ipf.pipelines()  # with an image encoder: images are still refused for FaceID
    o.load_ip_adapter(ipf.random_faceid(d.unet), None, None, image_encoder_folder=None)
    face = ipf.face()
    cases = [
        (dict(ip_adapter_image=ipf.ip_image()), "FaceID adapter: FaceID takes precomputed face embeddings"),
        (dict(ip_adapter_image_embeds=[torch.zeros(2, 1, 1, 511)]), r"shape \(2, 1, 1, 511\).*FaceID.*\(rows, faces, 1, 512\)"),
        (dict(ip_adapter_image_embeds=[torch.zeros(2, 1, 3, 512)]), r"shape \(2, 1, 3, 512\).*FaceID"),
        (dict(ip_adapter_image_embeds=[torch.zeros(2, 512)]), r"shape \(2, 512\).*FaceID"),
        (dict(ip_adapter_image_embeds=[torch.cat([face] * 3)]), r"\[negative; positive\] halves"),
        (dict(ip_adapter_image_embeds=[torch.cat([face] * 6)], prompt=["a", "b"]), "give 1 row or one per image"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            ipf.run(o, **call)
    with pytest.raises(ValueError, match="precomputed face embeddings"):
        o.prepare_ip_adapter_image_embeds(ipf.ip_image(), None, "cpu", 1, True)
    # prepare_ip_adapter_image_embeds with a face alone adds Diffusers' zero negative
    prepared = o.prepare_ip_adapter_image_embeds(None, [face], "cpu", 2, True)[0]
    torch.testing.assert_close(prepared, torch.cat([torch.zeros(2, 1, 1, 512), face, face]))


def test_bad_faceid_files_leave_the_pipeline_as_it_was():
    d, o = ipf.pipelines(with_encoder=False)
    processors = dict(o.unet.attn_processors)
    dxl, _ = ipf.pipelines(xl=True, with_encoder=False)
    good = ipf.random_faceid(d.unet)
    no_lora_part = {"image_proj": good["image_proj"],
                    "ip_adapter": {k: v for k, v in good["ip_adapter"].items() if k != "0.to_out_lora.up.weight"}}
    bad_rank = {"image_proj": good["image_proj"],
                "ip_adapter": {**good["ip_adapter"], "0.to_q_lora.up.weight": torch.ones(8, 3)}}
    wrong_layer = {"image_proj": good["image_proj"],
                   "ip_adapter": {**good["ip_adapter"], "0.to_q_lora.down.weight": torch.ones(4, 5),
                                  "0.to_q_lora.up.weight": torch.ones(8, 4)}}
    extra_layer = {"image_proj": good["image_proj"],
                   "ip_adapter": {**good["ip_adapter"], **{f"9.{p}": v for p, v in
                                                           ((k.split(".", 1)[1], v) for k, v in good["ip_adapter"].items()
                                                            if k.startswith("0.") and "lora" in k)}}}
    half_proj = {"image_proj": {k: v for k, v in good["image_proj"].items() if k != "proj.2.bias"},
                 "ip_adapter": good["ip_adapter"]}
    plus = {"image_proj": {"perceiver_resampler.proj_in.weight": torch.ones(8, 8), "norm.weight": torch.ones(8)},
            "ip_adapter": good["ip_adapter"]}
    good_plus = ipf.random_faceid(d.unet, plus=True)
    plus_no_out = {"image_proj": {k: v for k, v in good_plus["image_proj"].items() if "proj_out" not in k},
                   "ip_adapter": good["ip_adapter"]}
    ip = ipf.random_ip_adapter(d.unet, "ip")
    lora_on_plain = {"image_proj": ip["image_proj"],
                     "ip_adapter": {**ip["ip_adapter"], **{k: v for k, v in good["ip_adapter"].items() if "lora" in k}}}
    cases = [
        (ipf.random_faceid(dxl.unet), "another model"),
        (no_lora_part, r"LoRA of attention layer 0 lacks \['ip_adapter.0.to_out_lora.up.weight'\]"),
        (bad_rank, "are not a LoRA pair"),
        (wrong_layer, r"maps 5 -> 8 features but .*attn1.to_q maps 8 -> 8"),
        (extra_layer, "LoRA weights for attention layer 9 but this UNet has 8 attention layers"),
        (half_proj, r"FaceID image projection, but missing \['proj.2.bias'\]"),
        (plus, r"FaceID Plus image projection, but missing \['norm.bias', 'proj.0.bias'"),
        (plus_no_out, "FaceID Plus image projection needs 'proj_out.weight'"),
        (lora_on_plain, "belong to FaceID files"),
    ]
    for state, message in cases:
        with pytest.raises(ValueError, match=message):
            o.load_ip_adapter(state, None, None, image_encoder_folder=None)
        assert not installed(o.unet) and o.unet.encoder_hid_proj is None
        assert all(o.unet.attn_processors[k] is v for k, v in processors.items())
        assert o.get_list_adapters() == {}, "no LoRA adapter is left behind"


@pytest.mark.parametrize("xl", [False, True], ids=["sd15", "sdxl"])
def test_faceid_plus_and_plus_v2_match_diffusers(xl):
    d, o = ipf.pipelines(xl=xl)  # the face image's CLIP features come from the pipeline's image encoder
    state = ipf.random_faceid(d.unet, plus=True)
    base = ipf.run(o)
    for p in (d, o):
        p.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
    layer = projection_layers(o.unet)[0]
    assert type(layer) is IPAdapterFaceIDPlusImageProjection and o.get_list_adapters() == {"unet": ["faceid_0"]}
    face = _with_negative(ipf.face())
    with pytest.raises(ValueError, match="FaceID Plus needs the CLIP features of the face image"):
        ipf.run(o, ip_adapter_image_embeds=[face])
    # Diffusers' recipe: the CLIP hidden states of the face image ([black image; face image]) as clip_embeds
    clip = o.prepare_ip_adapter_image_embeds([ipf.ip_image()], None, "cpu", 1, True)[0]
    theirs = d.prepare_ip_adapter_image_embeds([ipf.ip_image()], None, "cpu", 1, True)[0]
    torch.testing.assert_close(clip, theirs, atol=1e-6, rtol=0)
    layer.clip_embeds, d.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds = clip, theirs
    results = []
    for shortcut in (False, True):  # Plus, then PlusV2
        for p in (d, o):
            p.unet.encoder_hid_proj.image_projection_layers[0].shortcut = shortcut
        ours = ipf.run(o, ip_adapter_image_embeds=[face])
        ipf.assert_close(ours, ipf.run(d, ip_adapter_image_embeds=[face]), atol=1e-3)
        results.append(ours)
    assert np.abs(results[0] - base).max() > 5e-2 and np.abs(results[1] - results[0]).max() > 1e-2
    layer.shortcut_scale = d.unet.encoder_hid_proj.image_projection_layers[0].shortcut_scale = 0.5
    o.set_ip_adapter_scale(0.7)
    d.set_ip_adapter_scale(0.7)
    ipf.assert_close(ipf.run(o, ip_adapter_image_embeds=[face]), ipf.run(d, ip_adapter_image_embeds=[face]), atol=1e-3)

    with pytest.raises(ValueError, match="FaceID Plus adapter.*clip_embeds"):
        ipf.run(o, ip_adapter_image=ipf.ip_image())
    layer.clip_embeds = clip[1:]  # made without guidance, used with it
    with pytest.raises(ValueError, match="clip_embeds holds 1 feature sets for 2 face embeddings"):
        ipf.run(o, ip_adapter_image_embeds=[face])
    layer.clip_embeds = torch.zeros(2, 1, 17, 5)
    with pytest.raises(ValueError, match=r"clip_embeds has shape \(2, 1, 17, 5\)"):
        ipf.run(o, ip_adapter_image_embeds=[face])
    for p in (d, o):
        p.unload_ip_adapter()
    o.delete_adapters("faceid_0")
    np.testing.assert_array_equal(ipf.run(o), base)
