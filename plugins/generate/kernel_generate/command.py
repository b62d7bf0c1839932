"""``kernel generate``: text to picture from the command line, with the embedded model by default.

    kernel generate "a blue star at the center on a black background"
    kernel generate "a red circle at the top left on a white background" --sampler "DPM++ 2M" --steps 20 --batch 4
    kernel generate --from output.png            # the same picture again, from its parameters
    kernel generate "a bird" --control canny:photo.png --controlnet ./sd-controlnet-canny

The model defaults to the one an installed plugin offers through the ``kernel.models``
entry-point group (``name = "module:function"``, the function returning the model folder);
``kernel-shapes-model`` offers ``shapes-64``.  ``--model`` takes such a name, a folder or a
Hub id.

Each PNG carries its generation parameters in a ``parameters`` text chunk, written the way
AUTOMATIC1111's webui writes them (prompt, ``Negative prompt:`` line, then ``Key: value``
pairs), so other tools read them and ``--from`` reproduces the picture.  Pictures of a batch
use seeds ``seed, seed + 1, ...`` (as the webui does) and are generated one at a time, so
``--from`` on any of them gives that exact picture.

``--control KIND:PATH --controlnet NET`` steers the picture with a ControlNet (see
:mod:`kernel_generate.control`); the control and the net are recorded in the PNG too.

``--batch-file prompts.txt --out DIR`` makes one picture per non-empty line, ``DIR/0000.png``,
``DIR/0001.png``, ..., prompt ``i`` with seed ``--seed + i``.  Started by ``torchrun`` or
``accelerate launch`` with several processes, the prompts are shared out between them
(``kernel-distributed``): each picture is written once, identical to a single-process run.

Video and audio models are written too (see :func:`run_media`):

    kernel generate "a cat walking" --model ./animatediff --frames 16 --fps 8 --out cat.mp4   # or cat.gif
    kernel generate "rain on a roof" --model ./audioldm --seconds 5 --out rain.wav
    kernel generate --model ./dance-diffusion --seconds 2 --out beat.wav               # no prompt

A video model (its output has ``.frames``: AnimateDiff, CogVideoX) gives an ``.mp4`` (``kernel-video``,
PyAV) whose ``comment`` tag holds the parameters text, or a ``.gif`` with it as the GIF comment; an
audio model (output ``.audios``: AudioLDM, MusicLDM, Stable Audio, Dance Diffusion) gives a 32-bit float
``.wav`` (``kernel-audio``) at the pipeline's sampling rate, the parameters text in its INFO comment.
An option the model does not take (``--size`` for audio, ``--sampler`` for a model without a
scheduler, a prompt for Dance Diffusion, ...) is a clear error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
from pathlib import Path
from typing import Any

from kernel_generate import control

MODELS_GROUP = "kernel.models"
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0
DEFAULT_FPS = 8.0
KEY_FRAMES, KEY_FPS, KEY_SECONDS, KEY_RATE = "Frames", "FPS", "Seconds", "Sampling rate"
VIDEO_SUFFIXES, AUDIO_SUFFIXES = (".mp4", ".gif"), (".wav",)
#: Infotext keys this command writes and reads back (A1111 names where A1111 has one).
KEY_STEPS, KEY_SAMPLER, KEY_CFG, KEY_SEED, KEY_SIZE, KEY_MODEL, KEY_DTYPE = (
    "Steps", "Sampler", "CFG scale", "Seed", "Size", "Model", "Dtype")
KEY_CONTROL, KEY_CONTROLNET, KEY_CONTROL_SCALE = "Control", "ControlNet", "Control scale"


# ---------------------------------------------------------------------------- models
def installed_models() -> list[str]:
    """Names of the models offered through the ``kernel.models`` entry points (registry-filtered)."""
    from kernel.registry import get_registry

    return get_registry().names(MODELS_GROUP)


def resolve_model(model: str | None) -> tuple[str, str]:
    """``(name for the infotext, folder or Hub id to load)`` for ``--model`` (None: the default)."""
    models = installed_models()
    if model is None:
        if not models:
            raise ValueError("no default model is installed (pip install kernel-shapes-model), "
                             "so --model is needed: a folder, a Hub id, or an installed model name")
        model = models[0]
    if model in models:
        from kernel.registry import get_registry

        try:
            folder = get_registry().resolve(model, MODELS_GROUP)()
        except Exception as err:  # noqa: BLE001 - a plugin's failure becomes one clear line
            raise ValueError(f"--model {model!r}: the installed model could not be located ({err})") from None
        return model, str(folder)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"--model {model!r}: the folder has no model_index.json, so it is not a pipeline folder")
        return model, str(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        return model, model
    raise ValueError(f"--model {model!r} is neither a folder, a Hub id (org/name) nor an installed model "
                     f"(installed: {', '.join(models) or 'none'})")


# ---------------------------------------------------------------------------- infotext
def format_infotext(prompt: str, negative: str, params: dict[str, Any]) -> str:
    """A1111's ``parameters`` text: prompt, optional ``Negative prompt:`` line, then ``Key: value, ...``."""
    def value(v: Any) -> str:
        text = str(v)
        return json.dumps(text) if any(c in text for c in ',:"\n') else text

    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {value(v)}" for k, v in params.items() if v is not None))
    return "\n".join(lines)


_PAIR = re.compile(r'\s*([\w \-/]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """``(prompt, negative prompt, {key: value})`` from an A1111 ``parameters`` text."""
    lines = text.strip().split("\n")
    params: dict[str, str] = {}
    found = [(m.group(1).strip(), m.group(2).strip()) for m in _PAIR.finditer(lines[-1])]
    if len(found) >= 2 and lines[-1].lstrip().startswith(found[0][0] + ":"):
        for key, raw in found:
            params[key] = json.loads(raw) if raw.startswith('"') else raw
        lines = lines[:-1]
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines).strip(), "\n".join(negative_lines).strip(), params


def read_parameters(png: str) -> tuple[str, str, dict[str, str]]:
    from PIL import Image

    path = Path(png)
    if not path.is_file():
        raise FileNotFoundError(f"--from {png!r}: no such file")
    try:
        with Image.open(path) as im:
            text = im.info.get("parameters") or getattr(im, "text", {}).get("parameters")
    except OSError as err:
        raise ValueError(f"--from {png!r}: not a readable picture ({err})") from None
    if not text:
        raise ValueError(f"--from {png!r}: the picture has no 'parameters' text chunk to reproduce it from")
    return parse_infotext(text)


# ---------------------------------------------------------------------------- arguments
def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"--size must be WIDTHxHEIGHT, like 64x64; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def apply_infotext(args: argparse.Namespace, given: set[str]) -> None:
    """Fill every option not given on the command line from ``--from``'s picture."""
    prompt, negative, params = read_parameters(args.from_png)
    def take(dest: str, key: str, convert=str) -> None:
        if dest in given or key not in params:
            return
        try:
            setattr(args, dest, convert(params[key]))
        except ValueError:
            raise ValueError(f"--from {args.from_png!r}: bad {key!r} value {params[key]!r}") from None

    if "prompt" not in given or not args.prompt:
        args.prompt = prompt
    if "negative" not in given:
        args.negative = negative
    take("steps", KEY_STEPS, int)
    take("sampler", KEY_SAMPLER)
    take("guidance", KEY_CFG, float)
    take("seed", KEY_SEED, int)
    take("size", KEY_SIZE)
    take("model", KEY_MODEL)
    take("dtype", KEY_DTYPE)
    take("control", KEY_CONTROL)
    take("controlnet", KEY_CONTROLNET)
    take("control_scale", KEY_CONTROL_SCALE, float)
    if "batch" not in given:
        args.batch = 1


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="generate a picture from a prompt (embedded model by default)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("prompt", nargs="?", default=None, help="what to draw")
    p.add_argument("--model", default=None, help="folder, Hub id, or installed model name (default: the embedded one)")
    p.add_argument("--steps", type=int, default=None, help=f"denoising steps (default {DEFAULT_STEPS})")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, recorded in the PNG)")
    p.add_argument("--sampler", default=None,
                   help="A1111 sampler name (`kernel samplers`) or scheduler class name (default: the model's own)")
    p.add_argument("--guidance", type=float, default=None, help=f"classifier-free guidance scale (default {DEFAULT_GUIDANCE})")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's native size)")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--batch", type=int, default=None, help="pictures to make (saved one by one plus a grid)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="weights dtype (default: float16 on CUDA, else float32)")
    p.add_argument("--out", default=None, help="PNG to write (default output.png; a folder gets output.png inside)")
    p.add_argument("--from", dest="from_png", default=None, metavar="PNG",
                   help="reproduce a picture from the parameters stored in it (other options override)")
    p.add_argument("--control", default=None, metavar="KIND:PATH",
                   help="control image for --controlnet: canny:PICTURE (edges made from a picture) or image:PATH "
                        "(an already prepared control image)")
    p.add_argument("--controlnet", default=None, metavar="NET",
                   help="ControlNet folder or Hub id (needs kernel-controlnet); the model's ControlNet pipeline is used")
    p.add_argument("--control-scale", dest="control_scale", type=float, default=None,
                   help="controlnet_conditioning_scale (default: the pipeline's, 1.0)")
    p.add_argument("--batch-file", dest="batch_file", default=None, metavar="FILE",
                   help="one prompt per line; writes --out DIR/0000.png, ... (prompt i with seed --seed + i); "
                        "shared out between processes under torchrun / accelerate launch")
    p.add_argument("--frames", type=int, default=None, help="video models: frames to make (num_frames)")
    p.add_argument("--fps", type=float, default=None, help=f"video models: frames per second of the file (default {DEFAULT_FPS:g})")
    p.add_argument("--seconds", type=float, default=None, help="audio models: length in seconds (audio_length_in_s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_generate, _parser=p)
    return p


# ---------------------------------------------------------------------------- running
def _device_and_dtype(device: str | None, dtype: str | None):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine")
    if dtype in (None, "auto"):
        dtype = "float16" if dev.type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return dev, getattr(torch, dtype), dtype


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as tlogging
    except ImportError:  # pragma: no cover - transformers is only needed by models that use it
        return
    tlogging.disable_progress_bar()
    tlogging.set_verbosity_error()


def _load_pipeline(model_name: str, source: str, dtype, device):
    import kernel

    _quiet_transformers()
    try:
        pipe = kernel.load(source, torch_dtype=dtype)
    except (ValueError, TypeError, FileNotFoundError, LookupError, ImportError, OSError) as err:
        raise ValueError(f"--model {model_name!r}: cannot load the pipeline: {err}") from None
    except Exception as err:  # noqa: BLE001 - e.g. corrupt weights: one clear line, no traceback
        raise ValueError(f"--model {model_name!r}: cannot load the pipeline: {type(err).__name__}: {err}") from None
    return pipe.to(device)


def _vae_factor(pipe) -> int:
    factor = getattr(pipe, "vae_scale_factor", None)
    return int(factor) if factor else int(pipe.vae.spatial_compression_ratio)


def _native_size(pipe) -> tuple[int, int]:
    sample = pipe.unet.config.sample_size
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    side = int(sample) * _vae_factor(pipe)
    return side, side


def grid(images: list) -> Any:
    from PIL import Image

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w, rows * h), (0, 0, 0))
    for i, im in enumerate(images):
        sheet.paste(im, ((i % cols) * w, (i // cols) * h))
    return sheet


def _out_paths(out: str | None, count: int) -> tuple[list[Path], Path | None]:
    path = Path(out or "output.png")
    if path.is_dir() or (out or "").endswith(("/", "\\")):
        path = path / "output.png"
    if path.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file or a folder; got {out!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if count == 1:
        return [path], None
    return [path.with_name(f"{path.stem}-{i}.png") for i in range(count)], path.with_name(f"{path.stem}-grid.png")


def infotext_params(*, steps: int, sampler: str, guidance: float, seed: int, width: int, height: int,
                    model: str, dtype: str, control: str | None = None, controlnet: str | None = None,
                    control_scale: float | None = None) -> dict[str, Any]:
    """The ``Key: value`` pairs of one picture's ``parameters`` text (what ``--from`` reads back; the control
    keys only when a ControlNet was used)."""
    return {KEY_STEPS: steps, KEY_SAMPLER: sampler, KEY_CFG: guidance, KEY_SEED: seed,
            KEY_SIZE: f"{width}x{height}", KEY_MODEL: model, KEY_DTYPE: dtype, KEY_CONTROL: control,
            KEY_CONTROLNET: controlnet, KEY_CONTROL_SCALE: control_scale, "Version": "kernel"}


def render(pipe, prompt: str, negative: str | None, *, steps: int, guidance: float, seed: int, width: int,
           height: int, **call_kwargs: Any):
    """One picture, exactly as ``kernel generate`` makes it: the seed drives a CPU generator.

    ``call_kwargs`` go to the pipeline call as they are (``kernel serve`` passes ``callback_on_step_end``
    for its progress and cancel).
    """
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.inference_mode():
        return pipe(prompt, negative_prompt=negative or None, num_inference_steps=steps, guidance_scale=guidance,
                    height=height, width=width, generator=generator, **call_kwargs).images[0]


def read_batch_file(path: str) -> list[str]:
    """The prompts of ``--batch-file``: one per line, blank lines skipped."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--batch-file {path!r}: no such file")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--batch-file {path!r}: cannot be read as UTF-8 text ({err})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"--batch-file {path!r} has no prompts (one prompt per line)")
    return prompts


def _batch_jobs(args: argparse.Namespace) -> tuple[list[tuple[int, str]], int | None, str | None]:
    """``(this process's (index, prompt) pairs, seed, device)`` for ``--batch-file``."""
    for flag, value in (("a prompt argument", args.prompt), ("--from", args.from_png), ("--batch", args.batch),
                        ("--control", args.control)):
        if value is not None:
            raise ValueError(f"--batch-file takes its prompts from the file; it cannot be combined with {flag}")
    if args.out is None or args.out.lower().endswith(".png"):
        raise ValueError(f"--batch-file needs --out DIR, a folder for 0000.png, 0001.png, ...; got {args.out!r}")
    prompts = read_batch_file(args.batch_file)
    seed = None if args.seed is None or args.seed < 0 else args.seed
    if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):  # torchrun / accelerate launch
        try:
            from kernel_distributed import process_device, shared_seed, split_prompts
        except ImportError:
            raise ValueError("--batch-file under torchrun / accelerate launch needs kernel-distributed "
                             "(pip install kernel-distributed)") from None
        device = args.device or str(process_device())
        return split_prompts(prompts), shared_seed(seed), device
    return list(enumerate(prompts)), seed, args.device


def run_generate(args: argparse.Namespace) -> int:
    given = {k for k, v in vars(args).items() if v is not None and k not in ("func", "_parser", "from_png")}
    jobs = None
    if args.batch_file is not None:
        jobs, args.seed, args.device = _batch_jobs(args)
        if not jobs:  # more processes than prompts: nothing for this one
            return 0
    if args.from_png:
        apply_infotext(args, given)
    media = args.frames is not None or args.fps is not None or args.seconds is not None or (
        args.out is not None and args.out.lower().endswith(VIDEO_SUFFIXES + AUDIO_SUFFIXES))
    if jobs is None and not args.prompt and not media:
        raise ValueError("a prompt is needed: kernel generate \"a red circle at the top left on a white background\"")
    steps = DEFAULT_STEPS if args.steps is None else args.steps
    guidance = DEFAULT_GUIDANCE if args.guidance is None else args.guidance
    batch = 1 if args.batch is None else args.batch
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if not math.isfinite(guidance):
        raise ValueError(f"--guidance must be a finite number, got {guidance}")
    if not 1 <= batch <= 64:
        raise ValueError(f"--batch must be in 1..64, got {batch}")
    seed = random.randrange(2**32) if args.seed is None or args.seed < 0 else args.seed
    size = parse_size(args.size) if args.size else None
    control.check_control_options(args.control, args.controlnet, args.control_scale)

    from PIL.PngImagePlugin import PngInfo

    if args.sampler:
        import kernel

        kernel.sampler(args.sampler)  # an unknown name fails here, before the model loads
    model_name, source = resolve_model(args.model)
    device, dtype, dtype_name = _device_and_dtype(args.device, args.dtype)
    pipe = _load_pipeline(model_name, source, dtype, device)
    kind = media_kind(pipe)
    if kind is not None:
        if jobs is not None or args.control is not None or batch != 1:
            flag = "--batch-file" if jobs is not None else "--control" if args.control is not None else "--batch"
            raise ValueError(f"{flag} is for picture models; --model {model_name!r} makes {kind}")
        return run_media(args, pipe, kind, model_name=model_name, dtype_name=dtype_name, steps=steps, seed=seed,
                         guidance=guidance, size=size, given=given)
    if not args.prompt and jobs is None:
        raise ValueError("a prompt is needed: kernel generate \"a red circle at the top left on a white background\"")
    for flag, value in (("--frames", args.frames), ("--fps", args.fps), ("--seconds", args.seconds)):
        if value is not None:
            raise ValueError(f"{flag} is for video/audio models; --model {model_name!r} makes pictures")
    factor = _vae_factor(pipe)
    width, height = size or _native_size(pipe)
    if width % factor or height % factor or width <= 0 or height <= 0:
        raise ValueError(f"--size {width}x{height}: width and height must be positive multiples of {factor} "
                         f"(this model's VAE factor)")
    sampler_name = args.sampler or type(pipe.scheduler).__name__
    if args.sampler:
        import kernel

        pipe.scheduler = kernel.sampler(args.sampler, pipe.scheduler.config)
    call: dict[str, Any] = {}
    if args.control is not None:
        pipe = control.controlled_pipeline(pipe, args.controlnet, dtype, device)
        call = control.control_call(pipe, control.control_image(args.control, width, height), args.control_scale)
    pipe.set_progress_bar_config(disable=args.no_progress)

    if jobs is not None:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        work = [(folder / f"{i:04d}.png", prompt, seed + i) for i, prompt in jobs]
        grid_path = None
    else:
        paths, grid_path = _out_paths(args.out, batch)
        work = [(path, args.prompt, seed + i) for i, path in enumerate(paths)]
    images = []
    for path, prompt, image_seed in work:
        image = render(pipe, prompt, args.negative, steps=steps, guidance=guidance, seed=image_seed,
                       width=width, height=height, **call)
        params = infotext_params(steps=steps, sampler=sampler_name, guidance=guidance, seed=image_seed,
                                 width=width, height=height, model=model_name, dtype=dtype_name,
                                 control=args.control, controlnet=args.controlnet, control_scale=args.control_scale)
        info = PngInfo()
        info.add_text("parameters", format_infotext(prompt, args.negative or "", params))
        image.save(path, pnginfo=info)
        images.append((image, info))
        print(path)
    if grid_path is not None:
        grid(images=[im for im, _ in images]).save(grid_path, pnginfo=images[0][1])
        print(grid_path)
    return 0


# ---------------------------------------------------------------------------- video and audio
def _call_params(pipe) -> set[str]:
    import inspect

    return set(inspect.signature(pipe.__call__).parameters)


def _call_default(pipe, name: str) -> Any:
    import inspect

    param = inspect.signature(pipe.__call__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def media_kind(pipe) -> str | None:
    """``"video"``, ``"audio"`` or None (pictures), from the arguments the pipeline's call takes."""
    params = _call_params(pipe)
    if "num_frames" in params:
        return "video"
    if "audio_length_in_s" in params or "audio_end_in_s" in params:
        return "audio"
    return None


def sampling_rate(pipe) -> int:
    """Samples per second of an audio pipeline's waveform: the vocoder's, the VAE's or the UNet's config."""
    for name, key in (("vocoder", "sampling_rate"), ("vae", "sampling_rate"), ("unet", "sample_rate")):
        config = getattr(getattr(pipe, name, None), "config", None)
        rate = getattr(config, key, None) if config is not None else None
        if rate is None and isinstance(config, dict):
            rate = config.get(key)
        if rate:
            return int(rate)
    raise ValueError(f"{type(pipe).__name__}: no sampling rate found (vocoder/vae sampling_rate, unet sample_rate)")


def _media_out(out: str | None, kind: str) -> Path:
    suffixes = VIDEO_SUFFIXES if kind == "video" else AUDIO_SUFFIXES
    path = Path(out or f"output{suffixes[0]}")
    if path.is_dir() or (out or "").endswith(("/", "\\")):
        path = path / f"output{suffixes[0]}"
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"--out must name a {' or '.join(suffixes)} file or a folder for this {kind} model; "
                         f"got {out!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def media_call(pipe, kind: str, args: argparse.Namespace, *, steps: int, guidance: float,
               size: tuple[int, int] | None, given: set[str]) -> dict[str, Any]:
    """The pipeline call's keyword arguments for a video/audio model; an option it does not take is an error."""
    params = _call_params(pipe)
    seconds_key = "audio_end_in_s" if "audio_length_in_s" not in params and "audio_end_in_s" in params \
        else "audio_length_in_s"  # Stable Audio names the length audio_end_in_s
    wanted = {"prompt": ("a prompt", args.prompt or None), "negative_prompt": ("--negative", args.negative or None),
              "guidance_scale": ("--guidance", guidance if "guidance" in given else None),
              "num_frames": ("--frames", args.frames), seconds_key: ("--seconds", args.seconds)}
    if "prompt" in params and not args.prompt:
        raise ValueError(f"a prompt is needed: {type(pipe).__name__} makes {kind} from a prompt")
    if size is not None:
        wanted["width"], wanted["height"] = ("--size", size[0]), ("--size", size[1])
    call: dict[str, Any] = {"num_inference_steps": steps}
    for key, (flag, value) in wanted.items():
        if value is None:
            continue
        if key not in params:
            raise ValueError(f"{flag} is not taken by {type(pipe).__name__} (--model makes {kind}; "
                             f"it takes: {', '.join(sorted(p for p in params if p != 'kwargs'))})")
        call[key] = value
    if args.fps is not None and kind != "video":
        raise ValueError(f"--fps is for video models; --model makes {kind}")
    if args.sampler and getattr(pipe, "scheduler", None) is None:
        raise ValueError(f"--sampler: {type(pipe).__name__} has no scheduler to replace")
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise ValueError(f"--seconds must be a positive number, got {args.seconds}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError(f"--fps must be a positive number, got {args.fps}")
    return call


def render_media(pipe, kind: str, call: dict[str, Any], seed: int):
    """The first video (list of PIL frames) or waveform (``(C, T)`` array) of the call, seeded on the CPU."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.inference_mode():
        out = pipe(generator=generator, **call)
    if kind == "video":
        return out.frames[0]
    return out.audios[0]


def _gif_comment(path: Path, text: str) -> None:
    """Insert a GIF comment extension (0x21 0xFE) after the header and global colour table."""
    data = path.read_bytes()
    flags = data[10]
    start = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    raw = text.encode("utf-8")
    blocks = b"".join(bytes([len(raw[i:i + 255])]) + raw[i:i + 255] for i in range(0, len(raw), 255))
    path.write_bytes(data[:start] + b"\x21\xfe" + blocks + b"\x00" + data[start:])


def _mp4_comment(path: Path, text: str) -> None:
    """Copy the video's packets into a new MP4 whose ``comment`` tag is ``text`` (no re-encoding)."""
    import av

    tmp = path.with_name(f".{path.stem}.tagging.mp4")
    try:
        with av.open(str(path)) as src, av.open(str(tmp), "w", format="mp4") as dst:
            dst.metadata["comment"] = text
            stream = src.streams.video[0]
            copy = dst.add_stream_from_template(stream)
            for packet in src.demux(stream):
                if packet.dts is None:
                    continue
                packet.stream = copy
                dst.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_media(kind: str, result, path: Path, text: str, *, fps: float, rate: int | None) -> None:
    """Write a video (``.mp4`` / ``.gif``) or waveform (``.wav``) with the parameters ``text`` in its metadata."""
    if kind == "video":
        import kernel_video

        if path.suffix.lower() == ".gif":
            kernel_video.export_to_gif(result, str(path), fps=fps)
            _gif_comment(path, text)
        else:
            kernel_video.export_to_video(result, str(path), fps=fps)
            _mp4_comment(path, text)
        return
    import kernel_audio
    import soundfile

    kernel_audio.export_to_wav(result, str(path), sampling_rate=rate)
    with soundfile.SoundFile(str(path), "r+") as f:
        f.comment = text


def _need(module: str, package: str, kind: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise ValueError(f"writing {kind} needs {package} (pip install kernel-generate[{kind}])") from None


def run_media(args: argparse.Namespace, pipe, kind: str, *, model_name: str, dtype_name: str, steps: int,
              seed: int, guidance: float, size: tuple[int, int] | None, given: set[str]) -> int:
    """``kernel generate`` for a video or audio model: one file, its parameters in its metadata."""
    if args.from_png:
        raise ValueError("--from reads PNG parameters; it is for picture models")
    _need("kernel_video" if kind == "video" else "kernel_audio", f"kernel-{kind}", kind)
    path = _media_out(args.out, kind)
    call = media_call(pipe, kind, args, steps=steps, guidance=guidance, size=size, given=given)
    sampler_name = None
    if getattr(pipe, "scheduler", None) is not None:
        sampler_name = args.sampler or type(pipe.scheduler).__name__
        if args.sampler:
            import kernel

            pipe.scheduler = kernel.sampler(args.sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=args.no_progress)
    result = render_media(pipe, kind, call, seed)
    fps = DEFAULT_FPS if args.fps is None else args.fps
    rate = sampling_rate(pipe) if kind == "audio" else None
    cfg = call.get("guidance_scale", _call_default(pipe, "guidance_scale"))
    params: dict[str, Any] = {KEY_STEPS: steps, KEY_SAMPLER: sampler_name, KEY_CFG: cfg, KEY_SEED: seed}
    if kind == "video":
        width, height = result[0].size
        params.update({KEY_SIZE: f"{width}x{height}", KEY_FRAMES: len(result), KEY_FPS: fps})
    else:
        samples = result.shape[-1]
        params.update({KEY_SECONDS: round(samples / rate, 6), KEY_RATE: rate})
    params.update({KEY_MODEL: model_name, KEY_DTYPE: dtype_name, "Version": "kernel"})
    write_media(kind, result, path, format_infotext(args.prompt or "", args.negative or "", params), fps=fps,
                rate=rate)
    print(path)
    return 0
