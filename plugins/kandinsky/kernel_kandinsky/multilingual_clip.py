"""Kandinsky 2.1's text encoder: an XLM-RoBERTa (from transformers) whose mask-weighted mean token state is
projected to the CLIP width by one linear layer.

The config and state dict keep the layout of the released checkpoint (``model_type="M-CLIP"``, the sizes in
``transformerDimensions`` / ``numDims``, the weights under ``transformer.`` and ``LinearTransformation.``),
so a Diffusers ``text_encoder`` folder loads here and ours loads in Diffusers.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, XLMRobertaConfig, XLMRobertaModel


class MCLIPConfig(XLMRobertaConfig):
    """An XLM-RoBERTa config plus the text width (``transformerDimensions``) and the output width (``numDims``)."""

    model_type = "M-CLIP"

    def __init__(self, transformerDimSize: int = 1024, imageDimSize: int = 768, **kwargs):  # noqa: N803 - checkpoint names
        self.transformerDimensions = kwargs.pop("transformerDimensions", transformerDimSize)
        self.numDims = kwargs.pop("numDims", imageDimSize)
        super().__init__(**kwargs)


class MultilingualCLIP(PreTrainedModel):
    """``forward(input_ids, attention_mask) -> (pooled_projection (B, numDims), hidden_states (B, L, hidden))``."""

    config_class = MCLIPConfig
    base_model_prefix = "mclip"

    def __init__(self, config: MCLIPConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        if config.transformerDimensions != config.hidden_size:
            raise ValueError(f"transformerDimensions={config.transformerDimensions} must equal hidden_size="
                             f"{config.hidden_size}: the projection reads the transformer's token states")
        self.transformer = XLMRobertaModel(config)
        self.LinearTransformation = torch.nn.Linear(config.transformerDimensions, config.numDims)  # noqa: N815
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        if attention_mask is None or attention_mask.shape != input_ids.shape:
            raise ValueError("attention_mask is required and must have the shape of input_ids "
                             f"{tuple(input_ids.shape)}")
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        return self.LinearTransformation(pooled), hidden
