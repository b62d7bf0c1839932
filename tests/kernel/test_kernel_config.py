"""Config: recorded from __init__, frozen, from_config swapping, files both ways with Diffusers."""

import json

import pytest

from kernel.config import ConfigMixin, FrozenConfig, register_to_config


class Alpha(ConfigMixin):
    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, clip_sample: bool = True):
        pass


class Beta(ConfigMixin):
    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, use_karras_sigmas: bool = False):
        pass


def test_config_records_defaults_and_is_frozen():
    a = Alpha(beta_start=0.5)
    assert a.config == {"num_train_timesteps": 1000, "beta_start": 0.5, "clip_sample": True}
    assert sorted(a.config.defaults_used) == ["clip_sample", "num_train_timesteps"]
    assert a.config.beta_start == 0.5
    with pytest.raises(TypeError):
        a.config["beta_start"] = 1
    with pytest.raises(TypeError):
        a.config.update({})
    assert isinstance(a.config, FrozenConfig)


def test_from_config_ignores_foreign_keys_and_applies_overrides():
    a = Alpha(num_train_timesteps=500, clip_sample=False)
    b = Beta.from_config(a.config, use_karras_sigmas=True)
    assert b.config.num_train_timesteps == 500 and b.config.use_karras_sigmas is True
    back = Alpha.from_config(b.config)  # Alpha's key survives the round trip, as in Diffusers
    assert back.config.clip_sample is False
    assert Beta.from_config(a).config.num_train_timesteps == 500  # an object with .config works too


@pytest.mark.parametrize("bad", [3, "text", [1, 2]])
def test_from_config_rejects_non_dict(bad):
    with pytest.raises(TypeError, match="from_config"):
        Alpha.from_config(bad)


def test_save_and_load_config(tmp_path):
    a = Alpha(num_train_timesteps=10)
    path = a.save_config(tmp_path)
    data = json.loads(path.read_text())
    assert data["_class_name"] == "Alpha" and data["num_train_timesteps"] == 10
    assert "_use_default_values" not in data
    assert Alpha.from_pretrained(tmp_path).config.num_train_timesteps == 10
    assert [p.name for p in tmp_path.iterdir()] == ["scheduler_config.json"]  # no temp files left


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        Alpha.from_pretrained(tmp_path)
    (tmp_path / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Alpha.from_pretrained(tmp_path)


def test_diffusers_config_files_both_ways(tmp_path):
    diffusers = pytest.importorskip("diffusers")

    class DDIMScheduler(ConfigMixin):  # a config-only stand-in with Diffusers' DDIM keys
        config_name = "scheduler_config.json"

        @register_to_config
        def __init__(self, num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                     trained_betas=None, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                     prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                     clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading",
                     rescale_betas_zero_snr=False):
            pass

    theirs = diffusers.DDIMScheduler(beta_schedule="scaled_linear", steps_offset=1, clip_sample=False)
    theirs.save_config(tmp_path / "a")
    ours = DDIMScheduler.from_pretrained(tmp_path / "a")
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(ours.config) == public(theirs.config)
    ours.save_config(tmp_path / "b")
    again = diffusers.DDIMScheduler.from_pretrained(tmp_path / "b")
    assert public(again.config) == public(ours.config)


def test_swap_uses_target_defaults_for_keys_left_at_default():
    """Keys the source left at its defaults take the target's defaults (Diffusers' _use_default_values)."""

    class Low(ConfigMixin):
        @register_to_config
        def __init__(self, beta_start: float = 0.0001, steps: int = 10):
            pass

    class High(ConfigMixin):
        @register_to_config
        def __init__(self, beta_start: float = 0.00085, steps: int = 20):
            pass

    assert High.from_config(Low().config).config.beta_start == 0.00085
    assert High.from_config(Low(beta_start=0.5).config).config.beta_start == 0.5
