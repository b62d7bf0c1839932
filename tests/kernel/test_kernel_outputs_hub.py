"""Output containers and Hub download selection."""

import dataclasses

import pytest
import torch

import kernel
from kernel.outputs import BaseOutput
from kernel.scheduling import SchedulerOutputWithX0, randn_tensor


@dataclasses.dataclass
class Out(BaseOutput):
    images: object
    nsfw_content_detected: object = None


def test_output_as_attribute_dict_and_tuple():
    o = Out(images=[1, 2])
    assert o.images == [1, 2] and o["images"] == [1, 2] and o[0] == [1, 2]
    assert o.to_tuple() == ([1, 2],)  # None fields are left out, like return_dict=False
    full = SchedulerOutputWithX0(prev_sample=torch.ones(1), pred_original_sample=torch.zeros(1))
    prev, x0 = full.to_tuple()
    assert torch.equal(prev, torch.ones(1)) and torch.equal(x0, torch.zeros(1))
    assert list(full.keys()) == ["prev_sample", "pred_original_sample"]
    with pytest.raises(KeyError):
        o["missing"]


def test_randn_tensor_generator_list_reproduces_items():
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    batch = randn_tensor((2, 3, 4), generator=gens)
    single = randn_tensor((1, 3, 4), generator=torch.Generator().manual_seed(2))
    assert torch.equal(batch[1:], single)
    with pytest.raises(ValueError, match="3 generators"):
        randn_tensor((2, 3), generator=[torch.Generator()] * 3)


def test_hub_download_asks_only_for_needed_files(tmp_path, monkeypatch, fake_plugin, use_registry, fake_entries):
    good, _ = fake_plugin
    use_registry(fake_entries(good))
    Pipe = kernel.component("TinyPipeline")
    pipe = Pipe(model=kernel.component("TinyModel")(), scheduler=kernel.component("TinyScheduler")())
    folder = tmp_path / "p"
    pipe.save_pretrained(folder)
    import huggingface_hub

    seen = {}

    def fake_snapshot(repo_id, allow_patterns=None, **kwargs):
        seen["repo"], seen["patterns"], seen["kwargs"] = repo_id, allow_patterns, kwargs
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, filename, subfolder=None, **kw: str(folder / filename))
    kernel.load("org/tiny", revision="abc", variant="fp16", model=pipe.model)
    assert seen["repo"] == "org/tiny" and seen["kwargs"]["revision"] == "abc"
    patterns = seen["patterns"]
    assert "model_index.json" in patterns
    assert not any(p.startswith("model/") for p in patterns)  # overridden: nothing downloaded for it
    assert "scheduler/*.json" in patterns
    assert not any(p.endswith(".bin") for p in patterns)


def test_bad_source_names():
    with pytest.raises(FileNotFoundError, match="neither an existing local folder nor a Hub repository"):
        kernel.load("./does/not/exist")
