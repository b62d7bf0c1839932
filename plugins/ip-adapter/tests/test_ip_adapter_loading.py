"""Loading IP-Adapter files (``.safetensors`` / ``.bin``, folders, the Hub cache offline, the image encoder from the
adapter's repository) and bad input: every error is a clear ``ValueError`` / ``TypeError`` and leaves the pipeline
as it was."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import ip_fixtures as ipf  # noqa: E402
from ip_fixtures import single_thread  # noqa: E402,F401

from kernel_ip_adapter import installed, ip_processors  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def _unchanged(pipe, processors: dict, encoder) -> None:
    assert not installed(pipe.unet) and not ip_processors(pipe.unet)
    assert pipe.unet.encoder_hid_proj is None and pipe.unet.config.encoder_hid_dim_type is None
    assert all(pipe.unet.attn_processors[k] is v for k, v in processors.items())
    assert pipe.image_encoder is encoder


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A folder laid out like h94/IP-Adapter: models/{ip.safetensors, ip.bin, plus.bin, image_encoder/}."""
    root = tmp_path_factory.mktemp("ip-repo")
    d, _ = ipf.pipelines()
    state = ipf.random_ip_adapter(d.unet, "ip")
    ipf.save(state, root / "models" / "ip.safetensors")
    ipf.save(state, root / "models" / "ip.bin")
    ipf.save(ipf.random_ip_adapter(d.unet, "plus", seed=1), root / "models" / "plus.bin")
    ipf.image_encoder()[0].save_pretrained(root / "models" / "image_encoder")
    return root


def test_safetensors_and_bin_files_load_like_diffusers(repo):
    d, o = ipf.pipelines()
    image = ipf.ip_image()
    d.load_ip_adapter(str(repo), subfolder="models", weight_name=["ip.bin", "plus.bin"])
    o.load_ip_adapter(str(repo), subfolder="models", weight_name=["ip.safetensors", "plus.bin"])
    images = [image, ipf.ip_image(1)]
    ours = ipf.run(o, ip_adapter_image=images)
    ipf.assert_close(ours, ipf.run(d, ip_adapter_image=images))
    _, o2 = ipf.pipelines()
    o2.load_ip_adapter(repo / "models" / "ip.bin", subfolder=None, weight_name=None)  # a file path
    o2.load_ip_adapter([repo / "models" / "ip.bin", repo / "models" / "plus.bin"], None, [None, None])
    np.testing.assert_array_equal(ipf.run(o2, ip_adapter_image=images), ours)


def test_hub_cache_offline_with_the_image_encoder_from_the_repo(repo, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub" / "models--someone--tiny-ip-adapter"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(commit)
    snapshot = cache / "snapshots" / commit / "models"
    (snapshot / "image_encoder").mkdir(parents=True)
    (snapshot / "ip.safetensors").write_bytes((repo / "models" / "ip.safetensors").read_bytes())
    for f in (repo / "models" / "image_encoder").iterdir():
        (snapshot / "image_encoder" / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    _, reference = ipf.pipelines()
    reference.load_ip_adapter(repo / "models" / "ip.safetensors", None, None)
    expected = ipf.run(reference, ip_adapter_image=ipf.ip_image())

    _, o = ipf.pipelines(with_encoder=False)
    processors = dict(o.unet.attn_processors)
    with pytest.raises(FileNotFoundError):
        o.load_ip_adapter("someone/absent", subfolder="models", weight_name="ip.safetensors",
                          cache_dir=str(tmp_path / "hub"))
    _unchanged(o, processors, None)
    for folder in ("image_encoder", "models/image_encoder"):
        o.load_ip_adapter("someone/tiny-ip-adapter", subfolder="models", weight_name="ip.safetensors",
                          image_encoder_folder=folder, cache_dir=str(tmp_path / "hub"))
        assert type(o.image_encoder).__name__ == "CLIPVisionModelWithProjection"
        assert o.feature_extractor.crop_size["height"] == ipf.VISION["image_size"]
        # (from_pretrained may pick another attention kernel for the encoder than the built one: float rounding)
        ipf.assert_close(ipf.run(o, ip_adapter_image=ipf.ip_image()), expected, atol=1e-5)
        o.unload_ip_adapter()
        assert o.image_encoder is None and o.feature_extractor is None, "unload removes what the load added"
        _unchanged(o, processors, None)


def test_no_image_encoder(repo):
    d, o = ipf.pipelines(with_encoder=False)
    processors = dict(o.unet.attn_processors)
    state = ipf.random_ip_adapter(d.unet, "ip")
    with pytest.raises(ValueError, match="cannot be loaded from a state dict"):
        o.load_ip_adapter(state, subfolder=None, weight_name=None)
    _unchanged(o, processors, None)
    o.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
    with pytest.raises(ValueError, match="needs an image encoder"):
        ipf.run(o, ip_adapter_image=ipf.ip_image())
    encoder, _ = ipf.image_encoder()
    embeds = [encoder(torch.zeros(1, 3, 32, 32)).image_embeds[None]]  # (1 row, 1 image, width), no guidance
    d.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
    call = dict(ip_adapter_image_embeds=embeds, guidance_scale=1.0)
    ipf.assert_close(ipf.run(o, **call), ipf.run(d, **call))


def test_bad_call_arguments_are_clear_errors():
    d, o = ipf.pipelines()
    o.load_ip_adapter(ipf.random_ip_adapter(d.unet, "ip"), None, None, image_encoder_folder=None)
    image, width = ipf.ip_image(), ipf.VISION["projection_dim"]
    cases = [
        (dict(), "an IP-Adapter is loaded: pass ip_adapter_image"),
        (dict(ip_adapter_image=image, ip_adapter_image_embeds=[torch.zeros(2, 1, width)]), "not both"),
        (dict(ip_adapter_image=[image, image]), "2 entries for 1 IP-Adapter"),
        (dict(ip_adapter_image_embeds=[torch.zeros(2, 1, width)] * 2), "2 tensors for 1 IP-Adapter"),
        (dict(ip_adapter_image_embeds=torch.zeros(2, 1, width)), "must be a list"),
        (dict(ip_adapter_image_embeds=[torch.zeros(2, 1, 5, width)]), r"shape \(2, 1, 5, 24\).*pooled"),
        (dict(ip_adapter_image_embeds=[torch.zeros(2, 1, width + 1)]), "with width 24"),
        (dict(ip_adapter_image_embeds=[torch.zeros(3, 1, width)]), r"\[negative; positive\] halves"),
        (dict(ip_adapter_image_embeds=[torch.zeros(6, 1, width)], prompt=["a", "b"]), "give 1 row or one per image"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            ipf.run(o, **call)
    _, plain = ipf.pipelines()
    with pytest.raises(ValueError, match="no IP-Adapter is loaded"):
        ipf.run(plain, ip_adapter_image=image)
    with pytest.raises(ValueError, match="no IP-Adapter is loaded"):
        plain.set_ip_adapter_scale(0.5)


def test_bad_scales_leave_the_scales_as_they_were():
    d, o = ipf.pipelines()
    o.load_ip_adapter([ipf.random_ip_adapter(d.unet, "ip"), ipf.random_ip_adapter(d.unet, "plus", seed=1)],
                      None, [None, None], image_encoder_folder=None)
    o.set_ip_adapter_scale([0.3, 0.4])
    before = {n: list(p.scale) for n, p in ip_processors(o.unet).items()}
    cases = [
        ([0.5, 0.5, 0.5], "3 scales for 2 IP-Adapter"),
        ({"left": 1.0}, "must be 'down', 'mid' or 'up'"),
        ({"down": {"block_0": 1.0}}, r"names \['block_0'\].*\['block_1'\]"),
        ({"up": {"block_0": [1.0, 0.0, 1.0]}}, "has 3 values; the block has 2"),
        ("high", "must be a number"),
        ([True, 1.0], "must be a number"),
    ]
    for scale, message in cases:
        with pytest.raises(ValueError, match=message):
            o.set_ip_adapter_scale(scale)
        assert {n: list(p.scale) for n, p in ip_processors(o.unet).items()} == before


def test_bad_files_leave_the_pipeline_as_it_was(tmp_path, repo):
    d, o = ipf.pipelines()
    processors, encoder = dict(o.unet.attn_processors), o.image_encoder
    dxl, _ = ipf.pipelines(xl=True)
    ip = ipf.random_ip_adapter(d.unet, "ip")
    faceid = {"image_proj": {"norm.weight": torch.ones(32), "proj.0.weight": torch.ones(64, 16)},
              "ip_adapter": dict(ip["ip_adapter"])}
    lora = {"image_proj": ip["image_proj"], "ip_adapter": {**ip["ip_adapter"], "1.to_k_lora.down.weight": torch.ones(1)}}
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    cases = [
        ((ipf.random_ip_adapter(dxl.unet, "ip"), None, None), ValueError, "another model"),
        (({"image_proj": ip["image_proj"], "ip_adapter": {k: v for k, v in ip["ip_adapter"].items()
                                                        if not k.startswith("1.")}}, None, None), ValueError,
         "for 3 attention layers"),
        (({"unet.down.lora_A.weight": torch.ones(2)}, None, None), ValueError, "not an IP-Adapter file"),
        # FaceID files load (test_ip_adapter_faceid.py); incomplete ones are refused, naming what is missing
        ((faceid, None, None), ValueError, r"FaceID image projection, but missing \['norm.bias', 'proj.0.bias'"),
        ((lora, None, None), ValueError, r"FaceID LoRA of attention layer 1 lacks \['ip_adapter.1.to_q_lora.down"),
        (([ip, ip], None, [None, None, None]), ValueError, "give one of each"),
        ((str(repo), "models", "ip.pt"), ValueError, ".safetensors or .bin"),
        ((str(repo), "models", None), ValueError, "weight_name is required"),
        ((tmp_path / "broken.safetensors", None, None), ValueError, "corrupt or truncated"),
        ((3.5, None, None), TypeError, "state dict"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            o.load_ip_adapter(*args, image_encoder_folder=None)
        _unchanged(o, processors, encoder)
    with pytest.raises(TypeError, match="unexpected keyword"):
        o.load_ip_adapter(ip, None, None, image_encoder_folder=None, scale=0.5)
    _unchanged(o, processors, encoder)
