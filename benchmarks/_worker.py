"""One measurement in a fresh process; prints a JSON line {"seconds": ..., "peak_rss_mb": ...}.

Usage: python _worker.py CASE LIB [ARGS_JSON]    (LIB is "ours" or "diffusers")
"""

from __future__ import annotations

import json
import resource
import sys
import time


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_pipeline(lib: str, folder: str, **kwargs):
    if lib == "ours":
        import kernel

        return kernel.load(folder, **kwargs)
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder, **kwargs)


def case_import(lib: str, args: dict) -> dict:
    t0 = time.perf_counter()
    if lib == "ours":
        import kernel

        if args.get("resolve"):
            kernel.component(args["resolve"])
    else:
        import diffusers

        getattr(diffusers, args["resolve"])
    return {"seconds": time.perf_counter() - t0}


def warm_imports(lib: str) -> None:
    """Import the library and the text-encoder classes first, so load times exclude imports
    (the import rows measure those)."""
    import transformers

    transformers.CLIPTextModel, transformers.CLIPTokenizer  # noqa: B018 - resolve the lazy modules
    if lib == "ours":
        import kernel

        for name in ("StableDiffusionPipeline", "UNet2DConditionModel", "AutoencoderKL", "DDIMScheduler"):
            kernel.component(name)
    else:
        import diffusers

        diffusers.StableDiffusionPipeline, diffusers.UNet2DConditionModel, diffusers.DDIMScheduler  # noqa: B018


def case_load(lib: str, args: dict) -> dict:
    import torch

    warm_imports(lib)
    kwargs = {}
    if args.get("fp16"):
        kwargs = {"torch_dtype": torch.float16, "variant": "fp16"}
    t0 = time.perf_counter()
    pipe = load_pipeline(lib, args["folder"], **kwargs)
    # Weights may be memory-mapped and read lazily: touch every tensor so the time includes reading.
    with torch.no_grad():
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            for p in module.parameters():
                p.sum()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def load_unet(lib: str, folder: str):
    if lib == "ours":
        import kernel

        cls = kernel.component("UNet2DConditionModel")
    else:
        from diffusers import UNet2DConditionModel as cls
    return cls.from_pretrained(folder, subfolder="unet").eval()


def step_inputs(unet, args: dict):
    import torch

    g = torch.Generator().manual_seed(0)
    size = args.get("latent", 64)
    return (torch.randn(2, 4, size, size, generator=g), 500,
            torch.randn(2, 77, unet.config.cross_attention_dim, generator=g))


def case_step(lib: str, args: dict) -> dict:
    import torch

    unet = load_unet(lib, args["folder"])
    inputs = step_inputs(unet, args)
    times = []
    with torch.inference_mode():
        unet(*inputs)  # warm-up
        for _ in range(args.get("repeats", 3)):
            t0 = time.perf_counter()
            unet(*inputs)
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"seconds": times[len(times) // 2], "peak_rss_mb": peak_rss_mb()}


def case_step_ab(lib: str, args: dict) -> dict:
    """Both UNets in one process, forwards alternating: the machine's slow and fast spells hit both
    libraries alike, unlike separate processes (``lib`` is ignored)."""
    import torch

    models = {name: load_unet(name, args["folder"]) for name in ("ours", "diffusers")}
    inputs = step_inputs(models["ours"], args)
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(*inputs)  # warm-up
        for i in range(args.get("rounds", 3)):
            for name in (list(models) if i % 2 == 0 else list(models)[::-1]):
                t0 = time.perf_counter()
                models[name](*inputs)
                times[name].append(time.perf_counter() - t0)
    return times


def case_pipeline(lib: str, args: dict) -> dict:
    import torch

    pipe = load_pipeline(lib, args["folder"])
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt="a red circle", num_inference_steps=args.get("steps", 10), height=args["size"],
                width=args["size"], output_type="np")
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = pipe(**call, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "checksum": float(abs(out.images).mean())}


def case_cold_start(lib: str, args: dict) -> dict:
    import torch

    pipe = load_pipeline(lib, args["folder"])
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    image.save(args["out"])
    return {"peak_rss_mb": peak_rss_mb()}


CASES = {"import": case_import, "load": case_load, "step": case_step, "step_ab": case_step_ab,
         "pipeline": case_pipeline, "cold_start": case_cold_start}

if __name__ == "__main__":
    case, lib = sys.argv[1], sys.argv[2]
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    print(json.dumps(CASES[case](lib, args)))
