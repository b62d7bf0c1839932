"""The training scripts on a tiny config: the loss falls, resume is exact, EMA, LoRA, VAE."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from kernel_train import EMAModel, common, text_to_image, vae

pytest.importorskip("kernel_shapes_model")
from kernel_shapes_model.recipe import write_init_folder  # noqa: E402

TINY_VAE = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 8], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 4,
    "sample_size": 16, "scaling_factor": 1.0,
}
TINY_UNET = {
    "_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [16, 32], "layers_per_block": 1, "cross_attention_dim": 64, "attention_head_dim": 4,
    "norm_num_groups": 8,
}
COMMON = ["--dataset", "shapes", "--dataset_length", "64", "--resolution", "16", "--train_batch_size", "8",
          "--learning_rate", "2e-3", "--log_every", "1", "--num_threads", "1"]


@pytest.fixture(scope="module")
def init_folder(tmp_path_factory):
    return write_init_folder(tmp_path_factory.mktemp("init"), unet_config=TINY_UNET, vae_config=TINY_VAE)


@pytest.fixture(scope="module")
def trained_vae_folder(init_folder, tmp_path_factory):
    """A tiny VAE trained for a few steps, installed into a copy of the init folder."""
    out = tmp_path_factory.mktemp("vae")
    vae.main(["--pretrained_model_name_or_path", str(init_folder), "--init_from_config", "--output_dir", str(out),
              "--max_train_steps", "30", *COMMON])
    folder = tmp_path_factory.mktemp("base") / "pipe"
    shutil.copytree(init_folder, folder)
    shutil.copytree(out / "vae", folder / "vae", dirs_exist_ok=True)
    return folder, out


def _log(folder):
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_vae_training_lowers_the_loss_and_sets_the_scaling_factor(trained_vae_folder):
    folder, out = trained_vae_folder
    rows = [r for r in _log(out) if "mse" in r]
    assert [r["step"] for r in rows] == list(range(1, 31))
    first, last = sum(r["mse"] for r in rows[:3]) / 3, sum(r["mse"] for r in rows[-3:]) / 3
    assert last < 0.7 * first
    config = json.loads((folder / "vae" / "config.json").read_text())
    assert config["scaling_factor"] != 1.0 and config["scaling_factor"] > 0


def _t2i(folder, out, *extra):
    text_to_image.main(["--pretrained_model_name_or_path", str(folder), "--output_dir", str(out), *COMMON, *extra])


def test_text_to_image_loss_falls_and_resume_is_exact(trained_vae_folder, tmp_path):
    folder, _ = trained_vae_folder
    args = ["--init_from_config", "--train_text_encoder", "--use_ema", "--ema_decay", "0.9", "--snr_gamma", "5",
            "--max_train_steps", "40", "--checkpointing_steps", "20", "--gradient_accumulation_steps", "2"]
    full = tmp_path / "full"
    _t2i(folder, full, *args)
    losses = [r["loss"] for r in _log(full)]
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.75 * sum(losses[:5]) / 5

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-20", resumed / "checkpoint-20")
    _t2i(folder, resumed, *args, "--resume_from_checkpoint", "latest")
    assert [r["loss"] for r in _log(resumed)] == [r["loss"] for r in _log(full) if r["step"] > 20]
    for sub, name in (("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        a, b = load_file(str(full / sub / name)), load_file(str(resumed / sub / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    # the saved folder is a complete pipeline
    index = json.loads((full / "model_index.json").read_text())
    assert all((full / k).is_dir() for k, v in index.items() if isinstance(v, list) and v[0])


def test_lora_trains_only_adapters_and_saves_diffusers_keys(trained_vae_folder, tmp_path):
    pytest.importorskip("peft")
    folder, _ = trained_vae_folder
    base = tmp_path / "base"
    _t2i(folder, base, "--init_from_config", "--max_train_steps", "3", "--checkpointing_steps", "100")
    lora = tmp_path / "lora"
    _t2i(base, lora, "--train_lora", "--rank", "2", "--max_train_steps", "5", "--checkpointing_steps", "100")
    weights = load_file(str(lora / text_to_image.LORA_WEIGHTS))
    assert weights and all(k.startswith("unet.") and ".lora_" in k for k in weights)
    assert any(k.endswith("attn2.to_k.lora_A.weight") for k in weights)
    assert not (lora / "unet").exists()  # the base model is untouched: only the adapter is written
    # lora_B starts at zero under gaussian init; training moved it
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)


def test_ema_follows_weights_with_warmup_and_round_trips():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMAModel([p], decay=0.5)
    with torch.no_grad():
        p.fill_(1.0)
    ema.step([p])  # step 0 decay = min(0.5, 1/10) = 0.1
    assert torch.allclose(ema.shadow[0], torch.full((3,), 0.9))
    state = ema.state_dict()
    other = EMAModel([torch.nn.Parameter(torch.ones(3))], decay=0.9)
    other.load_state_dict(state)
    assert other.optimization_step == 1 and torch.equal(other.shadow[0], ema.shadow[0])
    ema.store([p])
    ema.copy_to([p])
    assert torch.allclose(p, torch.full((3,), 0.9))
    ema.restore([p])
    assert torch.equal(p.detach(), torch.ones(3))
    with pytest.raises(ValueError, match="decay"):
        EMAModel([p], decay=1.5)


def test_batches_and_lr_schedule_are_deterministic():
    a = common.batch_indices(10, 4, seed=1, step=3)
    assert torch.equal(a, common.batch_indices(10, 4, seed=1, step=3))
    epoch = torch.cat([common.batch_indices(12, 4, seed=0, step=s) for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(12))  # one epoch visits every item once
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = common.make_lr_scheduler(opt, "cosine", warmup=2, total=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[-1] < 0.1


def test_bad_arguments_are_named(init_folder, tmp_path):
    with pytest.raises(ValueError, match="train_batch_size"):
        text_to_image.parse_args(["--pretrained_model_name_or_path", "x", "--output_dir", "y", "--train_batch_size", "0"])
    with pytest.raises(ValueError, match="train_lora"):
        text_to_image.parse_args(["--pretrained_model_name_or_path", "x", "--output_dir", "y", "--train_lora",
                                  "--train_text_encoder"])
    with pytest.raises(ValueError, match="--dataset"):
        _t2i(init_folder, tmp_path, "--dataset", "no-such-dataset", "--init_from_config")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        _t2i(tmp_path, tmp_path / "o")


def test_decoder_only_fine_tuning_keeps_the_encoder_and_scaling(trained_vae_folder, tmp_path):
    folder, _ = trained_vae_folder
    out = tmp_path / "dec"
    vae.main(["--pretrained_model_name_or_path", str(folder), "--output_dir", str(out), "--train_decoder_only",
              "--max_train_steps", "3", "--detail_weight", "5", *COMMON])
    before = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(out / "vae" / "diffusion_pytorch_model.safetensors"))
    enc = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    dec = [k for k in before if k.startswith("decoder.")]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in dec)
    scale = lambda f: json.loads((f / "vae" / "config.json").read_text())["scaling_factor"]  # noqa: E731
    assert scale(out) == scale(folder)


def test_image_folder_dataset(tmp_path):
    from PIL import Image

    from kernel_train.datasets import load_dataset, pixel_tensor

    rows = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (40, 20), colour).save(tmp_path / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"picture {i}"}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(rows))
    ds = load_dataset(str(tmp_path), resolution=16)
    pixels, texts = pixel_tensor(ds, 16)
    assert pixels.shape == (2, 3, 16, 16) and texts == ["picture 0", "picture 1"]
    assert torch.allclose(pixels[0, 0], torch.ones(16, 16)) and torch.allclose(pixels[1, 2], torch.ones(16, 16))
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "0.png"}')
    with pytest.raises(ValueError, match="text"):
        load_dataset(str(tmp_path), resolution=16)
