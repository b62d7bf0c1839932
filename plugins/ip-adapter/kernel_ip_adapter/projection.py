"""Image projections: image-encoder outputs -> extra context tokens for the UNet's cross-attention.

* :class:`ImageProjection` (IP-Adapter, Ye et al. 2023, arXiv:2308.06721): the pooled, projected CLIP
  image embedding ``(N, D)`` -> ``(N, T, cross_attention_dim)`` by one linear layer and a layer norm
  (shared with Kandinsky 2.2, so it lives in :mod:`kernel_layers.embeddings`).
* :class:`IPAdapterPlusImageProjection` (IP-Adapter Plus): a Perceiver resampler (Jaegle et al. 2021,
  arXiv:2103.03206; Alayrac et al. 2022, Flamingo) whose ``num_queries`` learned latents attend to the
  penultimate CLIP hidden states ``(N, S, embed_dims)`` -> ``(N, num_queries, output_dims)``.
* :class:`IPAdapterFullImageProjection` (IP-Adapter Full-face): an MLP and a layer norm on every hidden
  state ``(N, S, D)`` -> ``(N, S, cross_attention_dim)``.
* :class:`IPAdapterFaceIDImageProjection` (IP-Adapter FaceID, tencent-ailab/IP-Adapter): an MLP from one
  insightface face embedding ``(N, 512)`` to ``num_tokens`` tokens and a layer norm per token
  ``-> (N, num_tokens, cross_attention_dim)``; it takes precomputed face embeddings, never images.
* :class:`IPAdapterFaceIDPlusImageProjection` (IP-Adapter FaceID Plus / PlusV2): the face embedding's
  ``num_tokens`` tokens are the queries of a Perceiver resampler over the CLIP hidden states of the face
  image, which the caller sets as ``clip_embeds`` before the call (Diffusers' interface); PlusV2 adds the
  face tokens back (``shortcut=True``, weighted by ``shortcut_scale``).
* :class:`MultiIPAdapterImageProjection`: one projection per loaded IP-Adapter; installed as the UNet's
  ``encoder_hid_proj`` with ``encoder_hid_dim_type="ip_image_proj"``.

Attribute names are Diffusers' (``image_embeds``, ``layers.<i>.attn.to_q``, ``ff.net.0.proj`` ...).
"""

from __future__ import annotations

import torch
from torch import nn

from kernel_layers.activations import FeedForward
from kernel_layers.attention import Attention
from kernel_layers.embeddings import ImageProjection

__all__ = ["ImageProjection", "IPAdapterFaceIDImageProjection", "IPAdapterFaceIDPlusImageProjection",
           "IPAdapterFullImageProjection",
           "IPAdapterPlusImageProjection", "IPAdapterPlusImageProjectionBlock", "MultiIPAdapterImageProjection",
           "embeds_layout", "is_faceid"]


class IPAdapterFullImageProjection(nn.Module):
    """Every hidden state through an MLP and a layer norm: ``(N, S, D) -> (N, S, cross_attention_dim)``."""

    def __init__(self, image_embed_dim: int = 1024, cross_attention_dim: int = 1024, inner_dim: int | None = None):
        super().__init__()
        self.ff = FeedForward(image_embed_dim, cross_attention_dim, mult=1, activation_fn="gelu", inner_dim=inner_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.ff(image_embeds))


class IPAdapterFaceIDImageProjection(nn.Module):
    """A face embedding through an MLP into ``num_tokens`` tokens, each layer-normed:
    ``(N, image_embed_dim)`` or ``(N, 1, image_embed_dim)`` -> ``(N, num_tokens, cross_attention_dim)``.

    The hidden width is ``image_embed_dim * mult`` unless ``inner_dim`` says otherwise.
    """

    def __init__(self, image_embed_dim: int = 1024, cross_attention_dim: int = 1024, mult: int = 1,
                 num_tokens: int = 1, inner_dim: int | None = None):
        super().__init__()
        self.num_tokens = num_tokens
        self.cross_attention_dim = cross_attention_dim
        self.ff = FeedForward(image_embed_dim, cross_attention_dim * num_tokens, mult=mult, activation_fn="gelu",
                              inner_dim=inner_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.ff(image_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim)
        return self.norm(tokens)


class IPAdapterPlusImageProjectionBlock(nn.Module):
    """One resampler layer: the latents attend to ``[features; latents]``, then a pre-norm feed-forward."""

    def __init__(self, embed_dims: int = 768, dim_head: int = 64, heads: int = 16, ffn_ratio: float = 4):
        super().__init__()
        self.ln0 = nn.LayerNorm(embed_dims)
        self.ln1 = nn.LayerNorm(embed_dims)
        self.attn = Attention(query_dim=embed_dims, dim_head=dim_head, heads=heads, out_bias=False)
        self.ff = nn.Sequential(nn.LayerNorm(embed_dims),
                                FeedForward(embed_dims, embed_dims, activation_fn="gelu", mult=ffn_ratio, bias=False))

    def forward(self, x: torch.Tensor, latents: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        latents = self.ln1(latents)
        context = torch.cat([self.ln0(x), latents], dim=-2)
        latents = self.attn(latents, context) + residual
        return self.ff(latents) + latents


class IPAdapterPlusImageProjection(nn.Module):
    """Perceiver resampler of IP-Adapter Plus: ``(N, S, embed_dims) -> (N, num_queries, output_dims)``."""

    def __init__(self, embed_dims: int = 768, output_dims: int = 1024, hidden_dims: int = 1280, depth: int = 4,
                 dim_head: int = 64, heads: int = 16, num_queries: int = 8, ffn_ratio: float = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, hidden_dims) / hidden_dims**0.5)
        self.proj_in = nn.Linear(embed_dims, hidden_dims)
        self.proj_out = nn.Linear(hidden_dims, output_dims)
        self.norm_out = nn.LayerNorm(output_dims)
        self.layers = nn.ModuleList([IPAdapterPlusImageProjectionBlock(hidden_dims, dim_head, heads, ffn_ratio)
                                     for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for block in self.layers:
            latents = block(x, latents, latents)
        return self.norm_out(self.proj_out(latents))


class IPAdapterFaceIDPlusImageProjection(nn.Module):
    """Face resampler of IP-Adapter FaceID Plus / PlusV2.

    ``forward(id_embeds)``: face embeddings ``(N, id_embeddings_dim)`` (or ``(N, 1, id_embeddings_dim)``) ->
    ``(N, num_tokens, output_dims)``.  The CLIP side is the attribute ``clip_embeds``: penultimate hidden
    states of the face image, ``(rows, images, S, hidden_dims)`` with ``rows * images == N`` (for a guided call
    the ``[negative; positive]`` rows ``prepare_ip_adapter_image_embeds(..., do_classifier_free_guidance=True)``
    makes).  ``shortcut`` (PlusV2) returns ``face tokens + shortcut_scale * resampled``; it needs
    ``output_dims == embed_dims``.
    """

    def __init__(self, embed_dims: int = 768, output_dims: int = 768, hidden_dims: int = 1280,
                 id_embeddings_dim: int = 512, depth: int = 4, dim_head: int = 64, heads: int = 16, num_tokens: int = 4,
                 num_queries: int = 8, ffn_ratio: float = 4, ffproj_ratio: int = 2, proj_inner_dim: int | None = None):
        super().__init__()
        self.num_tokens, self.embed_dim = num_tokens, embed_dims
        self.clip_embeds: torch.Tensor | None = None
        self.shortcut, self.shortcut_scale = False, 1.0
        self.proj = FeedForward(id_embeddings_dim, embed_dims * num_tokens, activation_fn="gelu", mult=ffproj_ratio,
                                inner_dim=proj_inner_dim)
        self.norm = nn.LayerNorm(embed_dims)
        self.proj_in = nn.Linear(hidden_dims, embed_dims)
        self.proj_out = nn.Linear(embed_dims, output_dims)
        self.norm_out = nn.LayerNorm(output_dims)
        self.layers = nn.ModuleList([IPAdapterPlusImageProjectionBlock(embed_dims, dim_head, heads, ffn_ratio)
                                     for _ in range(depth)])

    def check_clip_embeds(self, rows: int | None = None) -> None:
        """``ValueError`` unless ``clip_embeds`` is set, shaped ``(rows, images, S, hidden_dims)``, and (given
        ``rows``, the face embeddings' ``rows * images``) has that many feature sets."""
        clip = self.clip_embeds
        hint = ("set pipe.unet.encoder_hid_proj.image_projection_layers[i].clip_embeds = "
                "pipe.prepare_ip_adapter_image_embeds([face_images], None, device, num_images, True)[i]")
        if not isinstance(clip, torch.Tensor):
            raise ValueError(f"IP-Adapter FaceID Plus needs the CLIP features of the face image: {hint}")
        if clip.ndim not in (3, 4) or clip.shape[-1] != self.proj_in.in_features:
            raise ValueError(f"clip_embeds has shape {tuple(clip.shape)}; FaceID Plus takes penultimate CLIP hidden "
                             f"states (rows, images, tokens, {self.proj_in.in_features}); {hint}")
        have = clip.shape[0] * (clip.shape[1] if clip.ndim == 4 else 1)
        if rows is not None and have != rows:
            raise ValueError(f"clip_embeds holds {have} feature sets for {rows} face embeddings in this UNet call; "
                             "make them with the same do_classifier_free_guidance and number of images as the call")

    def forward(self, id_embeds: torch.Tensor) -> torch.Tensor:
        self.check_clip_embeds()
        weight = self.proj_in.weight
        clip = self.clip_embeds.to(device=weight.device, dtype=weight.dtype)
        faces = self.norm(self.proj(id_embeds.to(weight.dtype)).reshape(-1, self.num_tokens, self.embed_dim))
        self.check_clip_embeds(faces.shape[0])
        x = self.proj_in(clip.reshape(-1, *clip.shape[-2:]))
        latents = faces
        for block in self.layers:
            latents = block(x, latents, latents)
        out = self.norm_out(self.proj_out(latents))
        if not self.shortcut:
            return out
        if out.shape[-1] != faces.shape[-1]:
            raise ValueError(f"shortcut=True adds the face tokens (width {faces.shape[-1]}) to the output (width "
                             f"{out.shape[-1]}); this FaceID Plus projection cannot (use shortcut=False)")
        return faces + self.shortcut_scale * out


_FACE_PROJECTIONS = (IPAdapterFaceIDImageProjection, IPAdapterFaceIDPlusImageProjection)


def is_faceid(projection: nn.Module) -> bool:
    """Whether a projection takes face embeddings (FaceID, FaceID Plus) rather than image-encoder outputs."""
    return isinstance(projection, _FACE_PROJECTIONS)


def embeds_layout(projection: nn.Module) -> tuple[int, int, str]:
    """``(ndim, width, what)`` of the per-adapter embeddings a projection takes: ``(batch, images, width)``
    pooled image embeddings for :class:`ImageProjection`, ``(batch, images, tokens, width)`` hidden states
    for the others; ``(batch, images, 1, width)`` face embeddings for FaceID (``(batch, images, width)`` is
    read the same)."""
    if isinstance(projection, IPAdapterFaceIDImageProjection):
        return 4, projection.ff.net[0].proj.in_features, "precomputed face embeddings (insightface normed_embedding)"
    if isinstance(projection, IPAdapterFaceIDPlusImageProjection):
        return 4, projection.proj.net[0].proj.in_features, "precomputed face embeddings (insightface normed_embedding)"
    if isinstance(projection, ImageProjection):
        return 3, projection.image_embeds.in_features, "pooled image embeddings (image_encoder(...).image_embeds)"
    if isinstance(projection, IPAdapterPlusImageProjection):
        return 4, projection.proj_in.in_features, "penultimate hidden states of the image encoder"
    if isinstance(projection, IPAdapterFullImageProjection):
        return 4, projection.ff.net[0].proj.in_features, "penultimate hidden states of the image encoder"
    raise TypeError(f"unknown IP-Adapter image projection {type(projection).__name__}")


class MultiIPAdapterImageProjection(nn.Module):
    """One projection per IP-Adapter.  Takes a list with one ``(batch, images, ...)`` tensor per adapter and
    returns a list of ``(batch, images, tokens, cross_attention_dim)`` tensors."""

    def __init__(self, IPAdapterImageProjectionLayers: list[nn.Module] | tuple[nn.Module, ...]):  # noqa: N803 - Diffusers' name
        super().__init__()
        self.image_projection_layers = nn.ModuleList(IPAdapterImageProjectionLayers)

    @property
    def num_ip_adapters(self) -> int:
        return len(self.image_projection_layers)

    def forward(self, image_embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(image_embeds, torch.Tensor):  # one adapter, one image per row (Diffusers' older form)
            image_embeds = [image_embeds.unsqueeze(1)]
        if len(image_embeds) != len(self.image_projection_layers):
            raise ValueError(f"image_embeds has {len(image_embeds)} entries for {len(self.image_projection_layers)} "
                             "IP-Adapters; give one tensor per adapter")
        out = []
        for embeds, layer in zip(image_embeds, self.image_projection_layers):
            batch, images = embeds.shape[:2]
            tokens = layer(embeds.flatten(0, 1))
            out.append(tokens.reshape(batch, images, *tokens.shape[1:]))
        return out
