"""Diffusers' IP-Adapter methods for the UNet pipelines (SD 1.x/2.x, SDXL, and what builds on them).

    pipe.load_ip_adapter("h94/IP-Adapter", subfolder="models", weight_name="ip-adapter_sd15.safetensors")
    pipe.set_ip_adapter_scale(0.6)                      # or [0.6, 0.3], or {"up": {"block_0": [0.0, 1.0, 0.0]}}
    image = pipe("a cat", ip_adapter_image=picture).images[0]
    pipe.unload_ip_adapter()                            # the pipeline as before the load

    # FaceID: precomputed insightface embeddings (no face detector here), (2, faces, 1, 512) = [zeros; face]
    pipe.load_ip_adapter("h94/IP-Adapter-FaceID", subfolder=None, weight_name="ip-adapter-faceid_sd15.bin",
                         image_encoder_folder=None)       # its LoRA becomes LoRA adapter "faceid_0", as in Diffusers
    image = pipe("a photo of a girl", ip_adapter_image_embeds=[face_embeds]).images[0]
    pipe.unload_ip_adapter(); pipe.delete_adapters("faceid_0")

How it composes with the engine (no loop of its own):

* the image embeddings are prompt-side conditioning: :meth:`_late_conditioning` puts one tensor per
  adapter (``ip_adapter_image_embeds_<i>``, one row per generated image) into the call's
  :class:`kernel.engine.Conditioning`: the image's embeddings on the positive side, zeros (pooled
  embeddings) or the encoding of a black image (hidden states) on the negative side.  The loop stacks
  them with the guider's passes like the prompt embeddings (so CFG, PAG and a callback that ends
  guidance all see matching rows);
* :meth:`_added_cond` hands them to the UNet as ``added_cond_kwargs["image_embeds"]``, which the UNet
  projects with the adapters' ``encoder_hid_proj`` into image tokens for the IP attention processors
  (:mod:`kernel_ip_adapter.adapter`).

The family pipeline cooperates through two calls up the class chain: its ``_late_conditioning`` and
``_added_cond`` call ``super()``, which reaches this mixin.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import torch

from kernel import hub

from kernel_ip_adapter import adapter as installer
from kernel_ip_adapter.adapter import IPAdapter, ip_processors, projection_layers
from kernel_ip_adapter.formats import load
from kernel_ip_adapter.projection import IPAdapterFaceIDPlusImageProjection, embeds_layout, is_faceid
from kernel_ip_adapter.scales import check_scale, expand_block_scales

logger = logging.getLogger(__name__)

#: Conditioning name prefix of the image embeddings: ``ip_adapter_image_embeds_0``, ``_1``, ...
IMAGE_EMBEDS = "ip_adapter_image_embeds"
_ADDED = "_ip_adapter_added_components"
_DEFAULT_CLIP_SIZE = 224  # the feature extractor's size when no image encoder is loaded (FaceID-style use)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


class IPAdapterMixin:
    """``load_ip_adapter``, ``set_ip_adapter_scale``, ``unload_ip_adapter``, ``prepare_ip_adapter_image_embeds``
    and the ``ip_adapter_image`` / ``ip_adapter_image_embeds`` call arguments (see the module docstring)."""

    # ------------------------------------------------------------------ loading
    def load_ip_adapter(self, pretrained_model_name_or_path_or_dict: Any, subfolder: str | list[str] | None,
                        weight_name: str | list[str] | None, image_encoder_folder: str | None = "image_encoder",
                        **kwargs: Any) -> None:
        """Load one IP-Adapter, or several at once (lists of sources / subfolders / weight names).

        ``pretrained_model_name_or_path_or_dict``: a Hub repo id, a folder, a file, or a state dict in the
        original layout (one, or a list).  ``weight_name``: the ``.safetensors`` / ``.bin`` file in
        ``subfolder``.  ``image_encoder_folder``: where the CLIP image encoder lies when the pipeline has
        none (a name inside ``subfolder``, or a path from the repo root when it contains ``/``); ``None``
        loads none (then only ``ip_adapter_image_embeds`` work).  ``cache_dir``, ``revision``, ``token``,
        ``local_files_only``, ``force_download`` and ``HF_HUB_OFFLINE`` are honoured.  Loading replaces
        IP-Adapters loaded before.  Everything is checked before the pipeline changes.

        FaceID files (``ip-adapter-faceid_sd15.bin`` / ``_sdxl``) take precomputed face embeddings
        (``ip_adapter_image_embeds``); FaceID Plus / PlusV2 files take them too, plus the face image's CLIP hidden
        states set as ``unet.encoder_hid_proj.image_projection_layers[i].clip_embeds`` (and ``shortcut = True``
        for PlusV2), as in Diffusers.  Their LoRA is handled exactly as Diffusers does: with LoRA support
        (``kernel-lora``) it is loaded into the UNet as LoRA adapter ``faceid_<i>`` (``i``: the adapter's
        place in the list) at weight 1.0 and made the active adapter (``set_adapters(["faceid_<i>"])``), unless
        an adapter of that name is loaded already; ``unload_ip_adapter`` leaves it, and
        ``delete_adapters("faceid_<i>")`` takes it out.
        """
        kwargs.pop("low_cpu_mem_usage", None)  # always: tensors go straight into place
        hub_kwargs = hub.split_hub_kwargs(kwargs)
        if kwargs:
            raise TypeError(f"load_ip_adapter() got unexpected keyword arguments {sorted(kwargs)}")
        names = _as_list(weight_name)
        sources = _as_list(pretrained_model_name_or_path_or_dict)
        subfolders = _as_list(subfolder)
        sources = sources * len(names) if len(sources) == 1 else sources
        subfolders = subfolders * len(names) if len(subfolders) == 1 else subfolders
        if not len(names) == len(sources) == len(subfolders):
            raise ValueError(f"load_ip_adapter got {len(sources)} sources, {len(subfolders)} subfolders and "
                             f"{len(names)} weight names; give one of each per IP-Adapter (or one to share)")
        unet = getattr(self, "unet", None)
        if unet is None:
            raise ValueError(f"{type(self).__name__} has no unet to load an IP-Adapter into")

        loaded = [load(src, sub, name, hub_kwargs) for src, sub, name in zip(sources, subfolders, names)]
        adapter = IPAdapter([state for state, _ in loaded], [where for _, where in loaded])
        checked = adapter.check(unet)
        components = self._component_names() if hasattr(self, "_component_names") else []
        new: dict[str, Any] = {}
        if "image_encoder" in components and getattr(self, "image_encoder", None) is None:
            if image_encoder_folder is not None:
                new["image_encoder"] = self._load_image_encoder(sources[0], subfolders[0], image_encoder_folder,
                                                                hub_kwargs)
            else:
                logger.warning("no image encoder loaded (image_encoder_folder=None): pass ip_adapter_image_embeds "
                               "to the pipeline, not ip_adapter_image")
        if "feature_extractor" in components and getattr(self, "feature_extractor", None) is None:
            from transformers import CLIPImageProcessor

            encoder = new.get("image_encoder", getattr(self, "image_encoder", None))
            size = encoder.config.image_size if encoder is not None else _DEFAULT_CLIP_SIZE
            new["feature_extractor"] = CLIPImageProcessor(size=size, crop_size=size)

        loras = adapter.lora_state_dicts(unet)
        if loras:  # first: a LoRA load is all or nothing, and after it nothing below can fail
            self._load_faceid_loras(loras)
        adapter.apply(unet, 1.0, checked=checked)
        if new:
            self.register_modules(**new)
        added = self.__dict__.setdefault(_ADDED, set())
        added.update(new)

    def _load_faceid_loras(self, loras: dict[int, dict[str, torch.Tensor]]) -> None:
        """Each FaceID adapter's LoRA as LoRA adapter ``faceid_<i>`` at weight 1.0, made active, as Diffusers does."""
        if not hasattr(self, "load_lora_weights"):
            logger.warning("this FaceID IP-Adapter carries LoRA weights for the UNet, but %s cannot load LoRA "
                           "(install kernel-lora); they are not applied", type(self).__name__)
            return
        loaded = self.get_list_adapters().get("unet", [])
        for i, state in loras.items():
            name = f"faceid_{i}"
            if name not in loaded:
                self.load_lora_weights(state, adapter_name=name)
                self.set_adapters([name], adapter_weights=[1.0])

    def _load_image_encoder(self, source: Any, subfolder: str | None, folder: str, hub_kwargs: dict):
        if isinstance(source, Mapping):
            raise ValueError("the image encoder cannot be loaded from a state dict: pass image_encoder_folder=None "
                             "(and ip_adapter_image_embeds to the pipeline), or give the pipeline an image_encoder")
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"cannot load an image encoder from a {type(source).__name__}")
        base = Path(source).expanduser()
        if base.is_file():  # a weight file: the encoder folder is beside it
            source, subfolder = base.parent, None
        where = Path(folder).as_posix() if "/" in str(folder) else Path(subfolder or "", folder).as_posix()
        local = hub.resolve_folder(source, subfolder=where, allow_patterns=["config.json", "*.safetensors"], **hub_kwargs)
        if not any(local.glob("*.safetensors")):
            local = hub.resolve_folder(source, subfolder=where, allow_patterns=["config.json", "*.bin"], **hub_kwargs)
        from transformers import CLIPVisionModelWithProjection

        logger.info("loading the IP-Adapter image encoder from %s", local)
        encoder = CLIPVisionModelWithProjection.from_pretrained(str(local), **_dtype_kwarg(self.dtype))
        return encoder.to(self.device).eval()

    # ------------------------------------------------------------------ scales and unloading
    def set_ip_adapter_scale(self, scale: Any) -> None:
        """The IP-Adapters' weight: a number for all layers; a list with one entry per adapter; per-image lists
        (with region masks); or per-block dicts such as ``{"down": {"block_2": [0.0, 1.0]}, "up": {"block_0":
        [0.0, 1.0, 0.0]}}`` (blocks left out get 0)."""
        unet = getattr(self, "unet", None)
        processors = ip_processors(unet) if unet is not None else {}
        if not processors:
            raise ValueError("no IP-Adapter is loaded; call load_ip_adapter(...) first")
        n = len(next(iter(processors.values())).scale)
        configs = [check_scale(c, f"for IP-Adapter {i}") for i, c in enumerate(_as_list(scale))]
        if len(configs) == 1:
            configs = configs * n
        elif len(configs) != n:
            raise ValueError(f"set_ip_adapter_scale got {len(configs)} scales for {n} IP-Adapter(s); give one for "
                             "all, or one per adapter")
        configs = [expand_block_scales(unet, c) if isinstance(c, dict) else c for c in configs]
        plan = {}
        for name, processor in processors.items():
            values = []
            for config in configs:
                if isinstance(config, dict):
                    config = next((s for prefix, s in config.items() if name.startswith(prefix + ".")), 0.0)
                values.append(list(config) if isinstance(config, list) else config)
            plan[name] = values
        for name, values in plan.items():
            processors[name].scale = values

    def unload_ip_adapter(self) -> None:
        """Take the IP-Adapters out: the UNet's own attention processors, projection and config again, and the
        image encoder / feature extractor that ``load_ip_adapter`` added removed (ones the pipeline was given
        stay).  A FaceID LoRA stays loaded, as in Diffusers: ``delete_adapters("faceid_0")`` removes it."""
        unet = getattr(self, "unet", None)
        if unet is not None:
            installer.remove(unet)
        for name in sorted(self.__dict__.pop(_ADDED, set())):
            setattr(self, name, None)

    # ------------------------------------------------------------------ image embeddings
    def encode_image(self, image: Any, device: Any, num_images_per_prompt: int, output_hidden_states: bool | None = None):
        """``(embeddings, negative embeddings)`` of ``image`` (PIL images, arrays or ``pixel_values``), each
        repeated ``num_images_per_prompt`` times: the projected pooled embeddings and zeros, or (with
        ``output_hidden_states``) the penultimate hidden states of the image and of a black image."""
        encoder = getattr(self, "image_encoder", None)
        if encoder is None:
            raise ValueError("ip_adapter_image needs an image encoder: load_ip_adapter(..., image_encoder_folder=...) "
                             "or give the pipeline image_encoder=CLIPVisionModelWithProjection...; or pass "
                             "ip_adapter_image_embeds instead")
        dtype = next(encoder.parameters()).dtype
        if not isinstance(image, torch.Tensor):
            if getattr(self, "feature_extractor", None) is None:
                raise ValueError("ip_adapter_image as images needs a feature_extractor (CLIPImageProcessor); give one, "
                                 "or pass pixel values as a tensor")
            image = self.feature_extractor(image, return_tensors="pt").pixel_values
        image = image.to(device=device, dtype=dtype)
        if output_hidden_states:
            states = encoder(image, output_hidden_states=True).hidden_states[-2]
            blank = encoder(torch.zeros_like(image), output_hidden_states=True).hidden_states[-2]
            return states.repeat_interleave(num_images_per_prompt, 0), blank.repeat_interleave(num_images_per_prompt, 0)
        embeds = encoder(image).image_embeds.repeat_interleave(num_images_per_prompt, 0)
        return embeds, torch.zeros_like(embeds)

    def _ip_embeds(self, image: Any, embeds: Any, device: Any, negative: bool) -> list[tuple[torch.Tensor, Any]]:
        """``[(positive, negative or None)]`` per adapter, each ``(rows, images, ...)`` as given or encoded."""
        layers = projection_layers(self.unet)
        out = []
        if embeds is None:
            for single, layer in zip(_as_list(image), layers):
                pos, neg = self.encode_image(single, device, 1, embeds_layout(layer)[0] == 4)
                out.append((pos[None], neg[None] if negative else None))
            return out
        for i, (x, layer) in enumerate(zip(embeds, layers)):
            if negative and x.shape[0] == 1 and is_faceid(layer):  # a face alone: zeros are its negative
                out.append((x, torch.zeros_like(x)))
            elif negative:
                if x.shape[0] % 2:
                    raise ValueError(f"ip_adapter_image_embeds[{i}] has {x.shape[0]} rows; with classifier-free "
                                     "guidance each tensor must hold [negative; positive] halves (as "
                                     "prepare_ip_adapter_image_embeds(..., do_classifier_free_guidance=True) makes)")
                neg, pos = x.chunk(2)
                out.append((pos, neg))
            else:
                out.append((x, None))
        return out

    def prepare_ip_adapter_image_embeds(self, ip_adapter_image: Any, ip_adapter_image_embeds: Any, device: Any,
                                        num_images_per_prompt: int, do_classifier_free_guidance: bool) -> list[torch.Tensor]:
        """One tensor per adapter, ``(rows * num_images_per_prompt, images, ...)``, with the negative half first
        when ``do_classifier_free_guidance``: what ``ip_adapter_image_embeds`` takes (Diffusers' layout)."""
        self._check_ip_inputs(ip_adapter_image, ip_adapter_image_embeds, "prepare_ip_adapter_image_embeds")
        result = []
        for pos, neg in self._ip_embeds(ip_adapter_image, ip_adapter_image_embeds, device, do_classifier_free_guidance):
            pos = pos.repeat(num_images_per_prompt, *([1] * (pos.ndim - 1)))
            if neg is not None:
                pos = torch.cat([neg.repeat(num_images_per_prompt, *([1] * (neg.ndim - 1))), pos])
            result.append(pos.to(device=device))
        return result

    # ------------------------------------------------------------------ checks
    def _check_ip_inputs(self, image: Any, embeds: Any, where: str = "the call") -> None:
        unet = getattr(self, "unet", None)
        layers = projection_layers(unet) if unet is not None else []
        if not layers:
            raise ValueError("ip_adapter_image / ip_adapter_image_embeds were given but no IP-Adapter is loaded; call "
                             "load_ip_adapter(...) first")
        if image is not None and embeds is not None:
            raise ValueError("give ip_adapter_image or ip_adapter_image_embeds, not both")
        if image is None and embeds is None:
            raise ValueError(f"{where} needs ip_adapter_image or ip_adapter_image_embeds")
        n = len(layers)
        if image is not None:
            for i, layer in enumerate(layers):
                plus = isinstance(layer, IPAdapterFaceIDPlusImageProjection)
                if plus and where != "the call":
                    continue  # the face image's CLIP features for clip_embeds, as Diffusers' FaceID Plus recipe makes them
                if is_faceid(layer):
                    raise ValueError(
                        f"ip_adapter_image was given, but IP-Adapter {i} is a FaceID{' Plus' if plus else ''} adapter: "
                        "FaceID takes precomputed face embeddings (insightface's normed_embedding), not images; pass "
                        "ip_adapter_image_embeds=[face_embeds] with face_embeds shaped (2, faces, 1, 512) ([negative; "
                        "positive]) or (1, faces, 1, 512)"
                        + ("; the face image's CLIP features go to image_projection_layers[i].clip_embeds "
                           "(prepare_ip_adapter_image_embeds([face_image], None, device, n, True)[i])" if plus else ""))
            images = _as_list(image)
            if len(images) != n:
                raise ValueError(f"ip_adapter_image has {len(images)} entries for {n} IP-Adapter(s); give one image "
                                 "(or one list of images) per adapter")
            if getattr(self, "image_encoder", None) is None:
                raise ValueError("ip_adapter_image needs an image encoder, and this pipeline has none: "
                                 "load_ip_adapter(..., image_encoder_folder=...) or give the pipeline "
                                 "image_encoder=CLIPVisionModelWithProjection...; or pass ip_adapter_image_embeds")
            return
        if not isinstance(embeds, (list, tuple)) or not all(isinstance(x, torch.Tensor) for x in embeds):
            raise ValueError("ip_adapter_image_embeds must be a list with one tensor per IP-Adapter, got "
                             f"{type(embeds).__name__}")
        if len(embeds) != n:
            raise ValueError(f"ip_adapter_image_embeds has {len(embeds)} tensors for {n} IP-Adapter(s); give one per "
                             "adapter")
        for i, (x, layer) in enumerate(zip(embeds, layers)):
            ndim, width, what = embeds_layout(layer)
            if is_faceid(layer):
                if not (x.ndim == 3 or (x.ndim == 4 and x.shape[2] == 1)) or x.shape[-1] != width:
                    raise ValueError(f"ip_adapter_image_embeds[{i}] has shape {tuple(x.shape)}; IP-Adapter {i} is a "
                                     f"FaceID adapter and takes {what}, shaped (rows, faces, 1, {width}) (or (rows, "
                                     f"faces, {width})), with rows = 2 ([negative; positive]) or 1 (the face alone; "
                                     "zeros as negative), or twice / once the number of images")
                if isinstance(layer, IPAdapterFaceIDPlusImageProjection) and where == "the call":
                    layer.check_clip_embeds()
                continue
            if x.ndim != ndim or x.shape[-1] != width:
                shape = "(rows, images, width)" if ndim == 3 else "(rows, images, tokens, width)"
                raise ValueError(f"ip_adapter_image_embeds[{i}] has shape {tuple(x.shape)}; IP-Adapter {i} takes "
                                 f"{what}, shaped {shape} with width {width}")

    # ------------------------------------------------------------------ engine hooks
    def _check_call(self, call: SimpleNamespace) -> None:
        super()._check_call(call)
        image, embeds = getattr(call, "ip_adapter_image", None), getattr(call, "ip_adapter_image_embeds", None)
        unet = getattr(self, "unet", None)
        if image is None and embeds is None:
            if unet is not None and projection_layers(unet):
                missing = "" if hasattr(call, "ip_adapter_image") else \
                    f" ({type(self).__name__}.__call__ does not take them)"
                raise ValueError(f"an IP-Adapter is loaded: pass ip_adapter_image or ip_adapter_image_embeds{missing}, "
                                 "or call unload_ip_adapter() first")
            return
        self._check_ip_inputs(image, embeds)

    def _late_conditioning(self, call: SimpleNamespace, cond, latents: torch.Tensor) -> None:
        super()._late_conditioning(call, cond, latents)
        image, embeds = getattr(call, "ip_adapter_image", None), getattr(call, "ip_adapter_image_embeds", None)
        if image is None and embeds is None:
            return
        dtype = self.unet.dtype
        for i, (pos, neg) in enumerate(self._ip_embeds(image, embeds, call.device, cond.negative is not None)):
            key = f"{IMAGE_EMBEDS}_{i}"
            cond.positive[key] = self._per_image(pos, call.batch, i).to(device=call.device, dtype=dtype)
            if cond.negative is not None:
                cond.negative[key] = self._per_image(neg, call.batch, i).to(device=call.device, dtype=dtype)

    @staticmethod
    def _per_image(x: torch.Tensor, batch: int, i: int) -> torch.Tensor:
        """One row per generated image: a single row is repeated, ``batch`` rows are kept."""
        if x.shape[0] == batch:
            return x
        if x.shape[0] == 1:
            return x.repeat(batch, *([1] * (x.ndim - 1)))
        raise ValueError(f"ip_adapter_image_embeds[{i}] has {x.shape[0]} rows (per guidance half) for {batch} images "
                         "(prompts x num_images_per_prompt); give 1 row or one per image")

    def _added_cond(self, cond: dict) -> dict | None:
        """``{"image_embeds": [one tensor per adapter]}`` when the call has IP-Adapter images, else None."""
        keys = sorted((k for k in cond if k.startswith(IMAGE_EMBEDS + "_")), key=lambda k: int(k.rsplit("_", 1)[1]))
        return {"image_embeds": [cond[k] for k in keys]} if keys else None
