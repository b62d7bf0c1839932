"""Pipeline base: model_index.json, component resolution, overrides, from_pipe, saving, Hub cache, kernel.load."""

import json
import shutil

import pytest
import torch

import kernel
from kernel.registry import ComponentNotFoundError, Entry

#: The offload switches come from kernel-memory (the real plugin, next to the fake one).
OFFLOAD = [Entry(n, "kernel.components", f"kernel_memory.switches:{n}", "kernel-memory", "0.1.0")
           for n in ("enable_model_cpu_offload", "enable_sequential_cpu_offload")]


@pytest.fixture
def saved(tmp_path, fake_plugin, use_registry, fake_entries):
    good, _ = fake_plugin
    use_registry(fake_entries(good) + OFFLOAD)
    Pipe = kernel.component("TinyPipeline")
    torch.manual_seed(0)
    pipe = Pipe(model=kernel.component("TinyModel")(), scheduler=kernel.component("TinyScheduler")(), flavour="x")
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    return pipe, folder


def _run(pipe):
    return pipe(steps=3, generator=torch.Generator().manual_seed(0))


def test_save_writes_diffusers_layout(saved):
    pipe, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "TinyPipeline"
    assert index["model"] == ["diffusers", "TinyModel"] and index["scheduler"] == ["diffusers", "TinyScheduler"]
    assert index["flavour"] == "x"
    assert (folder / "model" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "scheduler" / "scheduler_config.json").is_file()


def test_load_detects_class_and_reproduces(saved):
    pipe, folder = saved
    loaded = kernel.load(folder)
    assert type(loaded).__name__ == "TinyPipeline" and loaded.config.flavour == "x"
    torch.testing.assert_close(_run(loaded), _run(pipe), rtol=0, atol=0)
    assert set(loaded.components) == {"model", "scheduler"}


def test_component_overrides_and_none(saved):
    pipe, folder = saved
    sched = kernel.component("TinyScheduler")(step_scale=0.1)
    loaded = kernel.load(folder, scheduler=sched)
    assert loaded.scheduler is sched
    assert kernel.load(folder, model=None).model is None
    with pytest.raises(TypeError, match="scheduler= must be a scheduler"):
        kernel.load(folder, scheduler=torch.nn.Linear(1, 1))
    with pytest.raises(TypeError, match="model= must be a torch.nn.Module"):
        kernel.load(folder, model="not a model")
    with pytest.raises(TypeError, match="unexpected arguments"):
        kernel.load(folder, wrong_name=1)


def test_from_pipe_shares_modules(saved):
    pipe, _ = saved
    other = kernel.component("SecondPipeline").from_pipe(pipe)
    assert other.model is pipe.model and other.scheduler is pipe.scheduler
    assert other.config.flavour == "x"
    swapped = kernel.component("SecondPipeline").from_pipe(pipe, flavour="y")
    assert swapped.config.flavour == "y" and swapped.model is pipe.model


def test_setting_a_component_updates_model_index(saved, tmp_path):
    pipe, _ = saved
    pipe.scheduler = kernel.component("TinyScheduler").from_config(pipe.scheduler.config, step_scale=0.2)
    pipe.save_pretrained(tmp_path / "again")
    assert kernel.load(tmp_path / "again").scheduler.config.step_scale == 0.2


def test_to_dtype_and_device(saved):
    pipe, _ = saved
    pipe.to(torch.float64)
    assert pipe.dtype == torch.float64 and pipe.model.conv_in.weight.dtype == torch.float64
    pipe.to("cpu", torch.float32)
    assert pipe.device.type == "cpu" and pipe.dtype == torch.float32
    with pytest.raises(TypeError):
        pipe.to(3.5)


def test_unknown_class_in_model_index_names_install(saved):
    _, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    index["model"] = ["diffusers", "UNet2DConditionModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ComponentNotFoundError, match="pip install kernel-unet"):
        kernel.load(folder)
    index["model"] = ["somelib", "Thing"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="trust_remote_code"):
        kernel.load(folder)


def test_missing_model_index_and_missing_component_folder(saved, tmp_path):
    _, folder = saved
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        kernel.load(tmp_path)
    shutil.rmtree(folder / "model")
    with pytest.raises(FileNotFoundError, match="model"):
        kernel.load(folder)


def test_family_load_checks_fit(saved, tmp_path):
    _, folder = saved
    assert type(kernel.load("tiny", folder)).__name__ == "TinyPipeline"
    index = json.loads((folder / "model_index.json").read_text())
    del index["scheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="does not fit family 'tiny'.*scheduler"):
        kernel.load("tiny", folder)
    with pytest.raises(ComponentNotFoundError, match="pip install kernel-sdxl|pip install kernel-sd"):
        kernel.load("sdxl", folder)


def test_callback_inputs_are_checked(saved):
    pipe, _ = saved
    assert pipe._callback_names(None, ["latents"]) == ["latents"]
    with pytest.raises(ValueError, match=r"callback_on_step_end_tensor_inputs.*noise_pred.*accepted: \['latents'\]"):
        pipe._callback_names(None, ["latents", "noise_pred"])


def test_cpu_offload_hooks_keep_outputs(saved):
    pipe, _ = saved
    expected = _run(pipe)
    pipe.enable_model_cpu_offload(device="cpu")
    torch.testing.assert_close(_run(pipe), expected, rtol=0, atol=0)
    pipe.maybe_free_model_hooks()
    pipe.enable_sequential_cpu_offload(device="cpu")
    torch.testing.assert_close(_run(pipe), expected, rtol=0, atol=0)
    pipe.remove_all_hooks()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="accelerator"):
            pipe.enable_model_cpu_offload()


def _hub_cache(tmp_path, folder, repo="org/tiny"):
    """Lay out a huggingface_hub cache holding ``folder`` as the main revision of ``repo``."""
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return cache


def test_hub_repo_loads_offline_from_cache(saved, tmp_path, monkeypatch):
    pipe, folder = saved
    cache = _hub_cache(tmp_path, folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    loaded = kernel.load("org/tiny", cache_dir=str(cache))
    torch.testing.assert_close(_run(loaded), _run(pipe), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="org/missing"):
        kernel.load("org/missing", cache_dir=str(cache))
    Model = kernel.component("TinyModel")
    model = Model.from_pretrained("org/tiny", subfolder="model", cache_dir=str(cache))
    assert torch.equal(model.conv_in.weight, pipe.model.conv_in.weight)


def test_local_path_never_touches_network(saved, monkeypatch):
    _, folder = saved
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("network used for a local path")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    kernel.load(folder)


def test_transformers_components_default_to_float32(tmp_path):
    """transformers 5 would load the dtype named in config.json; pipelines default to float32 like Diffusers."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from kernel.pipeline import _load_component

    model = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=20)).half()
    model.save_pretrained(str(tmp_path / "text_encoder"))
    loaded = _load_component(CLIPTextModel, tmp_path, "text_encoder", "transformers", None, None, None, None)
    assert loaded.dtype == torch.float32
    half = _load_component(CLIPTextModel, tmp_path, "text_encoder", "transformers", torch.float16, None, None, None)
    assert half.dtype == torch.float16
