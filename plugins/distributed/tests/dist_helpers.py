"""Shared by the distributed tests and their worker processes: tiny models, inputs, and launching."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODELS = ("flux", "sd3", "pixart")
MODES = {  # name -> ContextParallelConfig arguments
    "ulysses": dict(ulysses_degree=2),
    "ring": dict(ring_degree=2),
    "ring_p2p": dict(ring_degree=2, rotate_method="p2p"),
}
PROMPTS = ["a red circle at the top left on a white background", "a blue star at the center on a black background",
           "a green square", "a yellow triangle at the bottom right"]


def _noisy(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def tiny_model(name: str) -> torch.nn.Module:
    """Seeded tiny transformers (odd token counts, so shards are uneven; SD3 with a dual-attention layer)."""
    torch.manual_seed(0)
    if name == "flux":
        from kernel_flux import FluxTransformer2DModel

        return _noisy(FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
            guidance_embeds=True))
    if name == "sd3":
        from kernel_sd3 import SD3Transformer2DModel

        return _noisy(SD3Transformer2DModel(
            sample_size=32, patch_size=1, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=16,
            pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm"))
    from kernel_pixart import PixArtTransformer2DModel

    return _noisy(PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, caption_channels=32, patch_size=2, sample_size=8))


def tiny_inputs(name: str) -> dict:
    g = torch.Generator().manual_seed(1)
    if name == "flux":
        return dict(hidden_states=torch.randn(2, 15, 16, generator=g), encoder_hidden_states=torch.randn(2, 7, 32, generator=g),
                    pooled_projections=torch.randn(2, 32, generator=g), timestep=torch.tensor([0.3, 0.7]),
                    img_ids=torch.randint(0, 8, (15, 3), generator=g).float(), txt_ids=torch.zeros(7, 3),
                    guidance=torch.tensor([3.5, 3.5]))
    if name == "sd3":
        return dict(hidden_states=torch.randn(2, 16, 6, 5, generator=g), encoder_hidden_states=torch.randn(2, 7, 32, generator=g),
                    pooled_projections=torch.randn(2, 64, generator=g), timestep=torch.tensor([300.0, 700.0]))
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0  # a padded caption: the cross-attention mask must still work (it stays local)
    return dict(hidden_states=torch.randn(2, 4, 10, 6, generator=g), encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
                timestep=torch.tensor([300, 700]), encoder_attention_mask=mask)


def forward(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def tiny_pipeline_folders(root: Path) -> dict[str, Path]:
    """Tiny Flux and SD3 pipelines built with Diffusers (the oracle) and saved for kernel.load."""
    import diffusers
    from kernel_clip.testing import tiny_clip_text_model, tiny_clip_tokenizer
    from kernel_t5.testing import tiny_t5_encoder, tiny_t5_tokenizer

    def vae(latent_channels: int):
        torch.manual_seed(0)
        return diffusers.AutoencoderKL(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
            latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=0.0609, scaling_factor=1.5035)

    folders = {}
    torch.manual_seed(0)
    flux = _noisy(diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True))
    tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    diffusers.FluxPipeline(
        transformer=flux, vae=vae(4), text_encoder=tiny_clip_text_model(tok, seed=1), tokenizer=tok,
        text_encoder_2=tiny_t5_encoder(t5_tok, d_model=32, seed=2), tokenizer_2=t5_tok,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=16,
                                                            max_image_seq_len=256),
    ).save_pretrained(root / "flux_pipe")
    folders["flux"] = root / "flux_pipe"
    torch.manual_seed(0)
    sd3 = _noisy(diffusers.SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=16,
        pos_embed_max_size=32))
    tok, tok_2, t5_tok = tiny_clip_tokenizer(), tiny_clip_tokenizer(), tiny_t5_tokenizer()
    diffusers.StableDiffusion3Pipeline(
        transformer=sd3, vae=vae(16), scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=tiny_clip_text_model(tok, seed=1, with_projection=True), tokenizer=tok,
        text_encoder_2=tiny_clip_text_model(tok_2, seed=2, with_projection=True), tokenizer_2=tok_2,
        text_encoder_3=tiny_t5_encoder(t5_tok, d_model=32, seed=3), tokenizer_3=t5_tok,
    ).save_pretrained(root / "sd3_pipe")
    folders["sd3"] = root / "sd3_pipe"
    return folders


PIPELINE_CALL = {  # 2 steps; text lengths 77 + 9 (Flux: 9) tokens, so the text shards are uneven too
    "flux": dict(prompt="a photo of a cat", height=32, width=32, num_inference_steps=2, max_sequence_length=9,
                 guidance_scale=3.5),
    "sd3": dict(prompt="a photo of a cat", negative_prompt="a dog", height=32, width=24, num_inference_steps=2,
                max_sequence_length=9, guidance_scale=4.0),
}


def run_pipeline(pipe, name: str):
    pipe.set_progress_bar_config(disable=True)
    return pipe(**PIPELINE_CALL[name], generator=torch.Generator().manual_seed(0), output_type="np").images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", **extra)
    return env


def launch(script: str, *args: str, nproc: int = 2, **env: str) -> list[subprocess.Popen]:
    """Start ``nproc`` ranks of ``script`` with the environment torchrun would give them (RANK, LOCAL_RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT) on the CPU.  Unlike torchrun's agent, nothing kills the other
    ranks when one fails, so the tests see what a surviving rank reports."""
    port = str(free_port())
    procs = []
    for rank in range(nproc):
        rank_env = worker_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env)
        procs.append(subprocess.Popen([sys.executable, str(HERE / script), *args], env=rank_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """``(returncode, stdout, stderr)`` of every rank; a rank still running after ``timeout`` s is killed."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def custom_model():
    """A tiny model of plain kernel-layers parts with its own plan in Diffusers' style (no attention entry, so
    the splits must be even): the path a third-party model takes.  Returns ``(model, plan, input)``."""
    from torch import nn

    from kernel_distributed import ContextParallelInput, ContextParallelOutput
    from kernel_layers.attention import Attention, AttentionMixin

    class Tiny(AttentionMixin, nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.attn, self.out = nn.Linear(8, 8), Attention(8, heads=2, dim_head=4), nn.Linear(8, 8)

        def forward(self, x):
            return self.out(self.attn(self.proj(x)))

    torch.manual_seed(0)
    plan = {"": {"x": ContextParallelInput(split_dim=1, expected_dims=3)},
            "out": ContextParallelOutput(gather_dim=1, expected_dims=3)}
    return Tiny().eval(), plan, torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(2))
