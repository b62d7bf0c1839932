"""The shapes dataset, its detector, tokenizer and recipe folder (no model needed)."""

import json

import numpy as np
import pytest
from PIL import Image

from kernel_shapes_model import data, detect, recipe, tokenizer


def test_held_out_combos_are_fixed_disjoint_and_cover_every_value():
    held, train = data.held_out_combos(), data.train_combos()
    assert len(held) == data.HELD_OUT_COUNT == 100
    assert held == data.held_out_combos()
    assert not set(held) & set(train)
    assert len(held) + len(train) == len(data.all_combos()) == 8 * 5 * 5 * 3
    for i, table in enumerate((data.COLOURS, data.SHAPES, data.POSITIONS, data.BACKGROUNDS)):
        assert {c[i] for c in train} == set(table)  # every value is seen in training


def test_training_split_never_shows_a_held_out_combination():
    held = set(data.held_out_combos())
    ds = data.ShapesDataset("train", length=400, seed=3)
    assert not any(ds.scene(i)[0].combo in held for i in range(len(ds)))


def test_items_are_deterministic_and_captioned():
    a, b = data.ShapesDataset("train", length=10, seed=5), data.ShapesDataset("train", length=10, seed=5)
    other = data.ShapesDataset("train", length=10, seed=6)
    for i in range(10):
        assert np.array_equal(np.asarray(a[i]["image"]), np.asarray(b[i]["image"]))
        assert a[i]["text"] == b[i]["text"]
    assert [a[i]["text"] for i in range(10)] != [other[i]["text"] for i in range(10)]
    item = a[0]
    assert item["image"].size == (64, 64) and item["image"].mode == "RGB"
    scene = item["scene"]
    assert item["text"] in (scene.caption(True), scene.caption(False))
    assert data.Scene("circle", "red", "top left", "small", "white").caption() == \
        "a small red circle at the top left on a white background"


def test_some_training_captions_leave_the_size_out():
    ds = data.ShapesDataset("train", length=200)
    with_size = sum(any(f" {s} " in ds[i]["text"] for s in data.SIZES) for i in range(len(ds)))
    assert 0.6 * len(ds) < with_size < 0.9 * len(ds)


@pytest.mark.parametrize("split", ["train", "held_out"])
def test_detector_reads_back_every_attribute_of_the_dataset(split):
    ds = data.ShapesDataset(split, length=250, seed=11)
    wrong = []
    for i in range(len(ds)):
        item = ds[i]
        ok = detect.detect(item["image"]).matches(item["scene"])
        wrong += [(item["text"], k) for k, v in ok.items() if not v]
    assert wrong == []


@pytest.mark.parametrize("shape", data.SHAPES)
def test_detector_shape_survives_blur_and_noise(shape):
    from PIL import ImageFilter

    scene = data.Scene(shape, "blue", "center", "large", "white")
    image = data.render(scene).filter(ImageFilter.GaussianBlur(0.8))
    arr = np.asarray(image).astype(np.float32) + np.random.default_rng(0).normal(0, 8, (64, 64, 3))
    found = detect.detect(np.clip(arr, 0, 255).astype(np.uint8))
    assert (found.shape, found.colour, found.position) == (shape, "blue", "center")


def test_detector_reports_nothing_on_an_empty_picture_and_accepts_arrays():
    blank = Image.new("RGB", (64, 64), (0, 0, 0))
    found = detect.detect(blank)
    assert (found.background, found.shape, found.colour) == ("black", None, None)
    scene = data.Scene("star", "yellow", "bottom right", "large", "gray")
    as_float = np.asarray(data.render(scene), dtype=np.float32) / 255.0
    assert all(detect.detect(as_float).matches(scene).values())
    with pytest.raises(ValueError, match="RGB"):
        detect.detect(np.zeros((64, 64)))


def test_bad_scene_values_are_named():
    with pytest.raises(ValueError, match="colour"):
        data.render(data.Scene("circle", "mauve", "center", "small", "white"))
    with pytest.raises(ValueError, match="shape"):
        data.render(data.Scene("hexagon", "red", "center", "small", "white"))
    with pytest.raises(ValueError, match="split"):
        data.ShapesDataset("test")
    with pytest.raises(ValueError, match="count"):
        data.held_out_scenes(101)


def test_tokenizer_has_one_token_per_caption_word(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer.build_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert tok.model_max_length == tokenizer.MODEL_MAX_LENGTH
    for word in data.vocabulary():
        assert tok.convert_ids_to_tokens(tok(word, add_special_tokens=False).input_ids) == [word + "</w>"]
    caption = "a small red circle at the top left on a white background"
    ids = tok(caption, padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == 16 and ids[0] == tok.bos_token_id and ids[13:] == [tok.eos_token_id] * 3
    assert tok.decode(ids, skip_special_tokens=True).strip() == caption
    assert len(tok("zebra", add_special_tokens=False).input_ids) > 1  # unknown words still tokenize


def test_recipe_writes_a_loadable_config_folder(tmp_path):
    folder = recipe.write_init_folder(tmp_path / "init")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for name in ("unet", "vae", "text_encoder"):
        assert (folder / name / "config.json").is_file()
    te = json.loads((folder / "text_encoder" / "config.json").read_text())
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert te["hidden_size"] == unet["cross_attention_dim"]
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1) == recipe.RESOLUTION
