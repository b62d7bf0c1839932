"""The family aliases of issue 18: ``kernel.load("kandinsky-2-2", folder)`` (and 2-1, 3) resolve the combined
pipelines from folders Diffusers writes, and a folder of another Kandinsky generation is a clear error."""

from __future__ import annotations

import functools

import pytest

import kernel
from kernel.loading import CheckpointMismatchError

from kandinsky21_fixtures import combined21_pipes
from kandinsky_fixtures import combined_pipes, gen, max_diff

RUN = dict(height=32, width=32, num_inference_steps=2, prior_num_inference_steps=2, output_type="np")


@functools.lru_cache(maxsize=None)
def _folders(root: str) -> dict:
    """Diffusers' own 2.1 / 2.2 combined folders (and the 2.2 decoder alone) and the pipes that wrote them."""
    import pathlib

    import diffusers

    root = pathlib.Path(root)
    ref22, _ = combined_pipes()
    ref21, _ = combined21_pipes()
    ref22.save_pretrained(root / "k22")
    ref21.save_pretrained(root / "k21")
    decoder = diffusers.KandinskyV22Pipeline(unet=ref22.unet, scheduler=ref22.scheduler, movq=ref22.movq)
    decoder.save_pretrained(root / "k22-decoder")
    return {"k22": (root / "k22", ref22), "k21": (root / "k21", ref21), "k22-decoder": (root / "k22-decoder", None)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return _folders(str(tmp_path_factory.mktemp("kandinsky-aliases")))


@pytest.mark.parametrize("alias, cls", [
    ("kandinsky-2-2", "KandinskyV22CombinedPipeline"), ("kandinsky22", "KandinskyV22CombinedPipeline"),
    ("kandinsky-2-1", "KandinskyCombinedPipeline"), ("Kandinsky-2-1", "KandinskyCombinedPipeline"),
    ("kandinsky-3", "Kandinsky3Pipeline"), ("kandinsky22-prior", "KandinskyV22PriorPipeline"),
    ("kandinsky22-decoder", "KandinskyV22Pipeline"),
])
def test_alias_names_the_pipeline(alias, cls):
    assert kernel.component(alias).__name__ == cls


@pytest.mark.parametrize("alias, key", [("kandinsky-2-2", "k22"), ("kandinsky-2-1", "k21")])
def test_load_by_alias_matches_diffusers(folders, alias, key):
    path, ref = folders[key]
    mine = kernel.load(alias, str(path))
    assert type(mine) is kernel.component(alias) and type(mine).__name__ == type(ref).__name__
    mine.set_progress_bar_config(disable=True)
    a, b = ref("a red cat", **RUN, generator=gen(1)).images, mine("a red cat", **RUN, generator=gen(1)).images
    assert max_diff(a, b) < 1e-3 and float(b.std()) > 0.01


def test_kandinsky_3_alias_loads_a_diffusers_folder():
    from kandinsky3_fixtures import folder

    path, _ = folder()
    assert type(kernel.load("kandinsky-3", path)).__name__ == "Kandinsky3Pipeline"
    with pytest.raises(CheckpointMismatchError, match="kandinsky-2-2"):
        kernel.load("kandinsky-2-2", path)


def test_a_folder_of_the_other_generation_is_refused(folders):
    with pytest.raises(CheckpointMismatchError, match=r"KandinskyCombinedPipeline.*'kandinsky-2-2'"):
        kernel.load("kandinsky-2-2", str(folders["k21"][0]))
    with pytest.raises(CheckpointMismatchError, match=r"KandinskyV22CombinedPipeline.*'kandinsky-2-1'"):
        kernel.load("kandinsky-2-1", str(folders["k22"][0]))


def test_a_decoder_folder_alone_is_not_the_combined_pipeline(folders):
    # Diffusers' AutoPipeline fetches the prior named in a hub model card; a local decoder folder has no prior.
    with pytest.raises(CheckpointMismatchError, match="lacks prior_image_encoder, prior_image_processor, prior_prior"):
        kernel.load("kandinsky-2-2", str(folders["k22-decoder"][0]))
    assert type(kernel.load("kandinsky22-decoder", str(folders["k22-decoder"][0]))).__name__ == "KandinskyV22Pipeline"


@pytest.mark.parametrize("key", ["k21", "k22"])
def test_auto_pipelines_resolve_the_combined_pipelines_of_diffusers_folders(folders, key):
    from kernel_sd.auto import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    path, ref = folders[key]
    stem = type(ref).__name__[: -len("CombinedPipeline")]
    text = AutoPipelineForText2Image.from_pretrained(path)
    assert type(text).__name__ == f"{stem}CombinedPipeline" and type(text).__module__.startswith("kernel_kandinsky")
    assert type(AutoPipelineForImage2Image.from_pretrained(path)).__name__ == f"{stem}Img2ImgCombinedPipeline"
    inpaint = AutoPipelineForInpainting.from_pipe(text)
    assert type(inpaint).__name__ == f"{stem}InpaintCombinedPipeline" and inpaint.prior_prior is text.prior_prior
