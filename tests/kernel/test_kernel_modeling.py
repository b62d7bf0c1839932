"""Model loading and saving: safetensors, shards, variants, dtype, device maps, bad files."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from kernel.config import register_to_config
from kernel.modeling import ModelMixin


class Net(ModelMixin):
    _keep_in_fp32_modules = ["norm"]

    @register_to_config
    def __init__(self, width: int = 8, depth: int = 2):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(width)
        self.register_buffer("scale", torch.full((width,), 2.0), persistent=False)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.norm(x) * self.scale


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net(width=8, depth=3).eval()


def _x():
    return torch.randn(2, 8, generator=torch.Generator().manual_seed(1))


def test_round_trip_single_file(net, tmp_path):
    net.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = Net.from_pretrained(tmp_path)
    assert loaded.config == net.config
    torch.testing.assert_close(loaded(_x()), net(_x()), rtol=0, atol=0)
    assert loaded.scale.device.type == "cpu" and torch.equal(loaded.scale, net.scale)


def test_loading_builds_on_meta_without_random_init(net, tmp_path, monkeypatch):
    net.save_pretrained(tmp_path)
    calls = []
    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", lambda self: calls.append(1))
    Net.from_pretrained(tmp_path)
    # reset_parameters may be called on meta tensors (no memory), never on real ones:
    loaded = Net.from_pretrained(tmp_path)
    assert all(p.device.type == "cpu" for p in loaded.parameters())


def test_sharded_round_trip(net, tmp_path):
    net.save_pretrained(tmp_path, max_shard_size=400)
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((tmp_path / s).is_file() for s in shards)
    torch.testing.assert_close(Net.from_pretrained(tmp_path)(_x()), net(_x()), rtol=0, atol=0)
    net.save_pretrained(tmp_path)  # re-saving unsharded removes the stale shards
    assert not list(tmp_path.glob("*-of-*")) and not (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()


def test_variant_and_dtype(net, tmp_path):
    net.half().save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = Net.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)
    assert loaded.layers[0].weight.dtype == torch.float16
    assert loaded.norm.weight.dtype == torch.float32  # _keep_in_fp32_modules
    with pytest.raises(ValueError, match="variant='bf16'"):
        Net.from_pretrained(tmp_path, variant="bf16")
    with pytest.raises(TypeError, match="torch_dtype"):
        Net.from_pretrained(tmp_path, variant="fp16", torch_dtype="float16")


def test_device_maps(net, tmp_path):
    net.save_pretrained(tmp_path)
    for device_map in ("cpu", "auto", "balanced", {"": "cpu"}, torch.device("cpu")):
        loaded = Net.from_pretrained(tmp_path, device_map=device_map)
        assert loaded.device.type == "cpu"
        torch.testing.assert_close(loaded(_x()), net(_x()), rtol=0, atol=0)
    with pytest.raises(ValueError, match="device_map='gpu-please'"):
        Net.from_pretrained(tmp_path, device_map="gpu-please")


def test_missing_and_unexpected_keys(net, tmp_path, caplog):
    net.save_pretrained(tmp_path)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("layers.2")}
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="layers.2"):
        Net.from_pretrained(tmp_path)
    full = dict(net.state_dict())
    full["extra.weight"] = torch.zeros(1)
    save_file(full, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    _, info = Net.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == ["extra.weight"]


def test_corrupt_and_truncated_safetensors(net, tmp_path):
    net.save_pretrained(tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        Net.from_pretrained(tmp_path)
    file.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        Net.from_pretrained(tmp_path)


def test_missing_config_and_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Net.from_pretrained(tmp_path)
    Net().save_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model weights"):
        Net.from_pretrained(tmp_path)


def test_legacy_bin_loads_with_weights_only(net, tmp_path):
    net.save_config(tmp_path)
    torch.save(net.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    torch.testing.assert_close(Net.from_pretrained(tmp_path)(_x()), net(_x()), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError):
        Net.from_pretrained(tmp_path, use_safetensors=True)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only=True"):
        Net.from_pretrained(tmp_path)


def test_failed_save_leaves_nothing_half_written(net, tmp_path, monkeypatch):
    net.save_pretrained(tmp_path)
    before = (tmp_path / "diffusion_pytorch_model.safetensors").read_bytes()
    import safetensors.torch

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with torch.no_grad():
        net.layers[0].weight.add_(1)
    with pytest.raises(OSError, match="disk full"):
        net.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_diffusers_model_folder_loads_and_ours_loads_in_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.modeling_utils import ModelMixin as DModelMixin
    from diffusers.configuration_utils import register_to_config as d_register

    class DNet(DModelMixin, diffusers.ConfigMixin):
        @d_register
        def __init__(self, width: int = 8, depth: int = 2):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
            self.norm = torch.nn.LayerNorm(width)

    torch.manual_seed(3)
    theirs = DNet(width=8, depth=3)
    theirs.save_pretrained(tmp_path / "d", max_shard_size="1KB")
    ours = Net.from_pretrained(tmp_path / "d")
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)
    ours.save_pretrained(tmp_path / "o", max_shard_size=500, variant="fp16")
    back = DNet.from_pretrained(tmp_path / "o", variant="fp16")
    for k, v in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


class Block(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.proj = torch.nn.Linear(width, width)

    def forward(self, x):
        return torch.tanh(self.proj(x))


class Blocky(ModelMixin):
    _repeated_blocks = ["Block"]

    @register_to_config
    def __init__(self, width: int = 8):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(width) for _ in range(3))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def test_compile_repeated_blocks_keeps_outputs():
    torch.manual_seed(0)
    model = Blocky()
    expected = model(_x())
    assert model.compile_repeated_blocks(backend="eager", fullgraph=True) == 3
    torch.testing.assert_close(model(_x()), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="_repeated_blocks"):
        Net().compile_repeated_blocks()  # Net names no block classes
