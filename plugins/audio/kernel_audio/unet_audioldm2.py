"""AudioLDM 2's denoiser and text projection (Liu et al. 2023, "AudioLDM 2", arXiv:2308.05734).

:class:`AudioLDM2ProjectionModel` maps the two text encoders' states (CLAP, and T5 / Flan-T5) to the
language model's width and frames each sequence with learned start / end vectors; GPT-2 continues
that sequence into the "language of audio" (``generated_prompt_embeds``).

:class:`AudioLDM2UNet2DConditionModel` is a latent-diffusion UNet whose attention stages hold several
spatial transformers per ResNet, one per entry of ``cross_attention_dim``: an entry ``None`` is a
self-attention-only transformer, entries 0 and 1 attend to ``encoder_hidden_states`` (GPT-2's
states) and entries 2 and 3 to ``encoder_hidden_states_1`` (the T5 states, with their mask).
Config keys and state-dict layout are Diffusers', so checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernel.config import register_to_config
from kernel.modeling import ModelMixin
from kernel.outputs import BaseOutput
from kernel_layers.activations import get_activation
from kernel_layers.attention import AttentionMixin
from kernel_layers.blocks_2d import run_checkpointed
from kernel_layers.embeddings import TimestepEmbedding, Timesteps
from kernel_layers.resnet import ResnetBlock2D
from kernel_layers.sampling import Downsample2D, Upsample2D
from kernel_layers.transformer_2d import Transformer2DModel, mask_to_bias
from kernel_unet.blocks import DownBlock2D, UpBlock2D
from kernel_unet.unet_2d_condition import broadcast_timesteps, up_path

MAX_STREAMS = 4


# ---------------------------------------------------------------------------------------- projection
@dataclass
class AudioLDM2ProjectionModelOutput(BaseOutput):
    """``hidden_states`` ``(B, 2 + S0 + 2 + S1, langauge_model_dim)`` and their keep-mask (or ``None``)."""

    hidden_states: torch.Tensor = None
    attention_mask: torch.LongTensor | None = None


def _frame(states: torch.Tensor, mask: torch.Tensor | None, start: torch.Tensor, end: torch.Tensor):
    """Put the learned ``start`` / ``end`` vectors around each sequence (and two kept mask slots)."""
    b = states.shape[0]
    states = torch.cat([start.expand(b, 1, -1), states, end.expand(b, 1, -1)], dim=1)
    if mask is not None:
        one = mask.new_ones((b, 1))
        mask = torch.cat([one, mask, one], dim=-1)
    return states, mask


class AudioLDM2ProjectionModel(ModelMixin):
    """Projects CLAP (``text_encoder_dim``) and T5 / VITS (``text_encoder_1_dim``) states to the language
    model's width (``langauge_model_dim``, Diffusers' spelling), frames each with learned start / end
    vectors and concatenates them (CLAP first).  ``use_learned_position_embedding`` adds a learned
    ``(text_encoder_1_dim, max_seq_length)`` table to the second encoder's states (VITS)."""

    @register_to_config
    def __init__(self, text_encoder_dim: int, text_encoder_1_dim: int, langauge_model_dim: int,
                 use_learned_position_embedding: bool | None = None, max_seq_length: int | None = None):
        super().__init__()
        self.projection = nn.Linear(text_encoder_dim, langauge_model_dim)
        self.projection_1 = nn.Linear(text_encoder_1_dim, langauge_model_dim)
        self.sos_embed = nn.Parameter(torch.ones(langauge_model_dim))
        self.eos_embed = nn.Parameter(torch.ones(langauge_model_dim))
        self.sos_embed_1 = nn.Parameter(torch.ones(langauge_model_dim))
        self.eos_embed_1 = nn.Parameter(torch.ones(langauge_model_dim))
        self.use_learned_position_embedding = use_learned_position_embedding
        if use_learned_position_embedding is not None:
            if max_seq_length is None:
                raise ValueError("use_learned_position_embedding needs max_seq_length (the table's length)")
            self.learnable_positional_embedding = nn.Parameter(torch.zeros((1, text_encoder_1_dim, max_seq_length)))

    def forward(self, hidden_states: torch.Tensor | None = None, hidden_states_1: torch.Tensor | None = None,
                attention_mask: torch.LongTensor | None = None, attention_mask_1: torch.LongTensor | None = None):
        if hidden_states is None or hidden_states_1 is None:
            raise ValueError("AudioLDM2ProjectionModel needs hidden_states (CLAP) and hidden_states_1 (T5 / VITS)")
        first, mask = _frame(self.projection(hidden_states), attention_mask, self.sos_embed, self.eos_embed)
        if self.use_learned_position_embedding is not None:
            hidden_states_1 = hidden_states_1 + self.learnable_positional_embedding.transpose(1, 2)
        second, mask_1 = _frame(self.projection_1(hidden_states_1), attention_mask_1, self.sos_embed_1,
                                self.eos_embed_1)
        states = torch.cat([first, second], dim=1)
        if mask is None and mask_1 is None:
            mask = None
        else:
            mask = first.new_ones(first.shape[:2], dtype=torch.long) if mask is None else mask
            mask_1 = second.new_ones(second.shape[:2], dtype=torch.long) if mask_1 is None else mask_1
            mask = torch.cat([mask, mask_1.to(mask.dtype)], dim=-1)
        return AudioLDM2ProjectionModelOutput(hidden_states=states, attention_mask=mask)


# ---------------------------------------------------------------------------------------- stages
def _dims(cross_attention_dim) -> tuple:
    dims = (cross_attention_dim,) if cross_attention_dim is None or isinstance(cross_attention_dim, int) \
        else tuple(cross_attention_dim)
    if len(dims) > MAX_STREAMS:
        raise ValueError(f"cross_attention_dim has {len(dims)} entries per stage; at most {MAX_STREAMS} "
                         "transformers per ResNet are supported")
    return dims


def _transformers(dims, channels, heads, layers, groups, linear, only_cross, upcast) -> list[Transformer2DModel]:
    return [Transformer2DModel(heads, channels // heads, in_channels=channels, num_layers=layers, cross_attention_dim=d,
                               norm_num_groups=groups, use_linear_projection=linear, only_cross_attention=only_cross,
                               upcast_attention=upcast, double_self_attention=d is None) for d in dims]


def _streams(states, mask, states_1, mask_1):
    """The ``(context, mask)`` each transformer slot reads: slots 0-1 the first stream, 2-3 the second
    (which falls back to the first when not given)."""
    if states_1 is None:
        states_1 = states
    return (states, mask), (states, mask), (states_1, mask_1), (states_1, mask_1)


class _MultiStream:
    """Runs the transformers that follow ResNet ``i``: one per ``cross_attention_dim`` entry."""

    def _attend(self, i: int, hidden_states, streams, attention_mask):
        n = len(self.cross_attention_dim)
        for idx, dim in enumerate(self.cross_attention_dim):
            context, mask = streams[idx] if dim is not None else (None, None)
            hidden_states = self.attentions[i * n + idx](hidden_states, encoder_hidden_states=context,
                                                         attention_mask=attention_mask, encoder_attention_mask=mask,
                                                         return_dict=False)[0]
        return hidden_states


def _resnet(cin, cout, temb, eps, groups, dropout, act, shift, scale, pre_norm):
    return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=temb, eps=eps, groups=groups,
                         dropout=dropout, time_embedding_norm=shift, non_linearity=act, output_scale_factor=scale,
                         pre_norm=pre_norm)


class AudioLDM2CrossAttnDownBlock2D(_MultiStream, nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, transformer_layers_per_block: int = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_pre_norm: bool = True, num_attention_heads: int = 1, cross_attention_dim=1280,
                 output_scale_factor: float = 1.0, downsample_padding: int = 1, add_downsample: bool = True,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False):
        super().__init__()
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        self.cross_attention_dim = dims = _dims(cross_attention_dim)
        resnets, attentions = [], []
        for i in range(num_layers):
            resnets.append(_resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps,
                                   resnet_groups, dropout, resnet_act_fn, resnet_time_scale_shift, output_scale_factor,
                                   resnet_pre_norm))
            attentions += _transformers(dims, out_channels, num_attention_heads, transformer_layers_per_block,
                                        resnet_groups, use_linear_projection, only_cross_attention, upcast_attention)
        self.resnets, self.attentions = nn.ModuleList(resnets), nn.ModuleList(attentions)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                                        padding=downsample_padding, name="op")]) \
            if add_downsample else None
        self.gradient_checkpointing = False

    def forward(self, hidden_states, temb=None, encoder_hidden_states=None, attention_mask=None,
                cross_attention_kwargs=None, encoder_attention_mask=None, encoder_hidden_states_1=None,
                encoder_attention_mask_1=None):
        streams = _streams(encoder_hidden_states, encoder_attention_mask, encoder_hidden_states_1,
                           encoder_attention_mask_1)
        skips = ()
        for i, resnet in enumerate(self.resnets):
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
            hidden_states = self._attend(i, hidden_states, streams, attention_mask)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class AudioLDM2UNetMidBlock2DCrossAttn(_MultiStream, nn.Module):
    def __init__(self, in_channels: int, temb_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 transformer_layers_per_block: int = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int | None = 32,
                 resnet_pre_norm: bool = True, num_attention_heads: int = 1, output_scale_factor: float = 1.0,
                 cross_attention_dim=1280, use_linear_projection: bool = False, upcast_attention: bool = False):
        super().__init__()
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        self.cross_attention_dim = dims = _dims(cross_attention_dim)
        args = (in_channels, in_channels, temb_channels, resnet_eps, groups, dropout, resnet_act_fn,
                resnet_time_scale_shift, output_scale_factor, resnet_pre_norm)
        resnets, attentions = [_resnet(*args)], []
        for _ in range(num_layers):
            attentions += _transformers(dims, in_channels, num_attention_heads, transformer_layers_per_block, groups,
                                        use_linear_projection, False, upcast_attention)
            resnets.append(_resnet(*args))
        self.resnets, self.attentions = nn.ModuleList(resnets), nn.ModuleList(attentions)
        self.gradient_checkpointing = False

    def forward(self, hidden_states, temb=None, encoder_hidden_states=None, attention_mask=None,
                cross_attention_kwargs=None, encoder_attention_mask=None, encoder_hidden_states_1=None,
                encoder_attention_mask_1=None):
        streams = _streams(encoder_hidden_states, encoder_attention_mask, encoder_hidden_states_1,
                           encoder_attention_mask_1)
        hidden_states = run_checkpointed(self.resnets[0], self, hidden_states, temb)
        for i, resnet in enumerate(self.resnets[1:]):
            hidden_states = self._attend(i, hidden_states, streams, attention_mask)
            hidden_states = run_checkpointed(resnet, self, hidden_states, temb)
        return hidden_states


class AudioLDM2CrossAttnUpBlock2D(_MultiStream, nn.Module):
    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 dropout: float = 0.0, num_layers: int = 1, transformer_layers_per_block: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, num_attention_heads: int = 1,
                 cross_attention_dim=1280, output_scale_factor: float = 1.0, add_upsample: bool = True,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False):
        super().__init__()
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        self.cross_attention_dim = dims = _dims(cross_attention_dim)
        resnets, attentions = [], []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            cin = (prev_output_channel if i == 0 else out_channels) + skip
            resnets.append(_resnet(cin, out_channels, temb_channels, resnet_eps, resnet_groups, dropout,
                                   resnet_act_fn, resnet_time_scale_shift, output_scale_factor, resnet_pre_norm))
            attentions += _transformers(dims, out_channels, num_attention_heads, transformer_layers_per_block,
                                        resnet_groups, use_linear_projection, only_cross_attention, upcast_attention)
        self.resnets, self.attentions = nn.ModuleList(resnets), nn.ModuleList(attentions)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) \
            if add_upsample else None
        self.gradient_checkpointing = False

    def forward(self, hidden_states, res_hidden_states_tuple, temb=None, encoder_hidden_states=None,
                cross_attention_kwargs=None, upsample_size=None, attention_mask=None, encoder_attention_mask=None,
                encoder_hidden_states_1=None, encoder_attention_mask_1=None):
        streams = _streams(encoder_hidden_states, encoder_attention_mask, encoder_hidden_states_1,
                           encoder_attention_mask_1)
        for i, resnet in enumerate(self.resnets):
            skip, res_hidden_states_tuple = res_hidden_states_tuple[-1], res_hidden_states_tuple[:-1]
            hidden_states = run_checkpointed(resnet, self, torch.cat([hidden_states, skip], dim=1), temb)
            hidden_states = self._attend(i, hidden_states, streams, attention_mask)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, upsample_size)
        return hidden_states


DOWN_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D")


def _strip(block_type: str) -> str:
    return block_type[7:] if block_type.startswith("UNetRes") else block_type


def _per_block(value, n: int, name: str) -> list:
    if value is None or isinstance(value, (int, bool)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} down blocks; give one per block or a single value")
    return value


# ---------------------------------------------------------------------------------------- the UNet
class AudioLDM2UNet2DConditionModel(ModelMixin, AttentionMixin):
    """AudioLDM 2's UNet (see the module docstring); Diffusers' config keys."""

    component_kind = "denoiser"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                             "DownBlock2D"),
        mid_block_type: str = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                           "CrossAttnUpBlock2D"),
        only_cross_attention: bool | tuple[bool] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple = 1280,
        transformer_layers_per_block: int | tuple[int] = 1,
        attention_head_dim: int | tuple[int] = 8,
        num_attention_heads: int | tuple[int] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        class_embeddings_concat: bool = False,
    ):
        super().__init__()
        self.sample_size = sample_size
        if num_attention_heads is not None:
            raise ValueError("num_attention_heads is not read by AudioLDM2UNet2DConditionModel (as in Diffusers, "
                             "attention_head_dim gives the number of heads); leave it None")
        n = len(down_block_types)
        if len(up_block_types) != n or len(block_out_channels) != n:
            raise ValueError(f"down_block_types ({n}), up_block_types ({len(up_block_types)}) and block_out_channels "
                             f"({len(block_out_channels)}) must have the same length")
        for t in down_block_types:
            if _strip(t) not in DOWN_TYPES:
                raise ValueError(f"down block type {t!r} is not supported; use one of {DOWN_TYPES}")
        for t in up_block_types:
            if _strip(t) not in UP_TYPES:
                raise ValueError(f"up block type {t!r} is not supported; use one of {UP_TYPES}")
        if mid_block_type != "UNetMidBlock2DCrossAttn":
            raise ValueError(f"mid_block_type={mid_block_type!r}; AudioLDM 2 uses 'UNetMidBlock2DCrossAttn'")
        if time_embedding_type != "positional":
            raise ValueError(f"time_embedding_type={time_embedding_type!r}; AudioLDM 2 uses 'positional'")

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=conv_in_kernel,
                                 padding=(conv_in_kernel - 1) // 2)
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn,
                                                post_act_fn=timestep_post_act, cond_proj_dim=time_cond_proj_dim)
        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, time_embed_dim)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        elif class_embed_type in ("projection", "simple_projection"):
            if projection_class_embeddings_input_dim is None:
                raise ValueError(f"class_embed_type={class_embed_type!r} needs projection_class_embeddings_input_dim")
            self.class_embedding = (TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
                                    if class_embed_type == "projection"
                                    else nn.Linear(projection_class_embeddings_input_dim, time_embed_dim))
        elif class_embed_type is None:
            self.class_embedding = None
        else:
            raise ValueError(f"class_embed_type={class_embed_type!r}; use None, 'timestep', 'identity', "
                             "'projection' or 'simple_projection'")
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn is not None else None

        only_cross = _per_block(only_cross_attention, n, "only_cross_attention")
        heads = _per_block(attention_head_dim, n, "attention_head_dim")
        cross = [cross_attention_dim] * n if cross_attention_dim is None or isinstance(cross_attention_dim, int) \
            else _per_block(cross_attention_dim, n, "cross_attention_dim")
        layers = _per_block(layers_per_block, n, "layers_per_block")
        tlayers = _per_block(transformer_layers_per_block, n, "transformer_layers_per_block")
        temb = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim
        common = dict(temb_channels=temb, resnet_eps=norm_eps, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                      resnet_time_scale_shift=resnet_time_scale_shift)
        attn = dict(use_linear_projection=use_linear_projection, upcast_attention=upcast_attention)

        self.down_blocks = nn.ModuleList()
        out_ch = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            kw = dict(num_layers=layers[i], in_channels=in_ch, out_channels=out_ch, add_downsample=i < n - 1,
                      downsample_padding=downsample_padding, **common)
            if _strip(block_type) == "DownBlock2D":
                self.down_blocks.append(DownBlock2D(**kw))
            else:
                self.down_blocks.append(AudioLDM2CrossAttnDownBlock2D(
                    transformer_layers_per_block=tlayers[i], cross_attention_dim=cross[i],
                    num_attention_heads=heads[i], only_cross_attention=only_cross[i], **attn, **kw))

        self.mid_block = AudioLDM2UNetMidBlock2DCrossAttn(
            transformer_layers_per_block=tlayers[-1], in_channels=block_out_channels[-1],
            output_scale_factor=mid_block_scale_factor, cross_attention_dim=cross[-1], num_attention_heads=heads[-1],
            **attn, **common)

        self.num_upsamplers = 0
        rev_out, rev_heads, rev_layers = block_out_channels[::-1], heads[::-1], layers[::-1]
        rev_cross, rev_tlayers, rev_only = cross[::-1], tlayers[::-1], only_cross[::-1]
        self.up_blocks = nn.ModuleList()
        out_ch = rev_out[0]
        for i, block_type in enumerate(up_block_types):
            last = i == n - 1
            prev, out_ch = out_ch, rev_out[i]
            in_ch = rev_out[min(i + 1, n - 1)]
            self.num_upsamplers += 0 if last else 1
            kw = dict(num_layers=rev_layers[i] + 1, in_channels=in_ch, out_channels=out_ch, prev_output_channel=prev,
                      add_upsample=not last, **common)
            if _strip(block_type) == "UpBlock2D":
                self.up_blocks.append(UpBlock2D(**kw))
            else:
                self.up_blocks.append(AudioLDM2CrossAttnUpBlock2D(
                    transformer_layers_per_block=rev_tlayers[i], cross_attention_dim=rev_cross[i],
                    num_attention_heads=rev_heads[i], only_cross_attention=rev_only[i], **attn, **kw))

        if norm_num_groups is not None:
            self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups,
                                              eps=norm_eps)
            self.conv_act = get_activation(act_fn)
        else:
            self.conv_norm_out = self.conv_act = None
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=conv_out_kernel,
                                  padding=(conv_out_kernel - 1) // 2)

    def _embedding(self, sample, timestep, timestep_cond, class_labels) -> torch.Tensor:
        t_emb = self.time_proj(broadcast_timesteps(timestep, sample.shape[0], sample.device)).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels must be given: this UNet has a class embedding "
                                 f"(class_embed_type={self.config.class_embed_type!r})")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(dtype=sample.dtype)
            class_emb = self.class_embedding(class_labels).to(dtype=sample.dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if self.config.class_embeddings_concat else emb + class_emb
        return self.time_embed_act(emb) if self.time_embed_act is not None else emb

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        encoder_hidden_states_1: torch.Tensor | None = None,
        encoder_attention_mask_1: torch.Tensor | None = None,
    ):
        """Predict the noise for ``sample`` ``(B, C, H, W)``; the ``*_mask`` arguments are ``(B, tokens)``
        keep-masks (1 keep, 0 drop) for the self-attention, the first and the second context."""
        if sample.ndim != 4:
            raise ValueError(f"sample must be (batch, channels, height, width), got shape {tuple(sample.shape)}")
        up_factor = 2**self.num_upsamplers
        forward_upsample_size = any(dim % up_factor != 0 for dim in sample.shape[-2:])
        attention_mask = mask_to_bias(attention_mask, sample.dtype)
        encoder_attention_mask = mask_to_bias(encoder_attention_mask, sample.dtype)
        encoder_attention_mask_1 = mask_to_bias(encoder_attention_mask_1, sample.dtype)
        emb = self._embedding(sample, timestep, timestep_cond, class_labels)
        attn = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs, encoder_attention_mask=encoder_attention_mask,
                    encoder_hidden_states_1=encoder_hidden_states_1, encoder_attention_mask_1=encoder_attention_mask_1)

        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, **attn)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res
        sample = self.mid_block(sample, emb, **attn)

        return up_path(self, sample, emb, skips, attn, forward_upsample_size, return_dict)
