"""export_to_wav and AudioPipelineOutput."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from kernel_audio import AudioPipelineOutput, export_to_wav


def _wave(shape, seed=0):
    return (np.random.default_rng(seed).uniform(-0.9, 0.9, shape)).astype(np.float32)


def test_mono_round_trip_is_exact(tmp_path):
    audio = _wave((1000,))
    path = export_to_wav(audio, tmp_path / "a.wav", 16000)
    data, rate = soundfile.read(path, dtype="float32")
    assert rate == 16000 and data.shape == (1000,)
    np.testing.assert_array_equal(data, audio)


def test_stereo_tensor_round_trip_channels_first(tmp_path):
    audio = torch.from_numpy(_wave((2, 500), seed=1))
    export_to_wav(audio, tmp_path / "s.wav", 44100)
    data, rate = soundfile.read(tmp_path / "s.wav", dtype="float32")
    assert rate == 44100 and data.shape == (500, 2)  # soundfile reads (frames, channels)
    np.testing.assert_array_equal(data.T, audio.numpy())


def test_pcm16_quantises_within_one_level(tmp_path):
    audio = _wave((300,), seed=2)
    export_to_wav(audio, tmp_path / "p.wav", 8000, subtype="PCM_16")
    data, _ = soundfile.read(tmp_path / "p.wav", dtype="float32")
    assert soundfile.info(str(tmp_path / "p.wav")).subtype == "PCM_16"
    assert np.abs(data - audio).max() <= 1 / 32768 + 1e-7


def test_overwrite_is_atomic_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "x.wav"
    export_to_wav(_wave((100,)), target, 16000)
    before = target.read_bytes()
    with pytest.raises(ValueError):
        export_to_wav(np.full(100, np.nan, dtype=np.float32), target, 16000)
    assert target.read_bytes() == before
    export_to_wav(_wave((200,), seed=3), target, 16000)
    assert soundfile.info(str(target)).frames == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(soundfile, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        export_to_wav(_wave((100,)), tmp_path / "y.wav", 16000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("audio, match", [
    (np.zeros((2, 3, 4), dtype=np.float32), "mono or"),
    (np.zeros((0,), dtype=np.float32), "mono or"),
    (np.zeros((100, 2), dtype=np.float32), r"\(T, C\)"),
])
def test_bad_shapes(tmp_path, audio, match):
    with pytest.raises(ValueError, match=match):
        export_to_wav(audio, tmp_path / "b.wav", 16000)


@pytest.mark.parametrize("rate", [0, -1, 16000.5, "16000", True])
def test_bad_sampling_rate(tmp_path, rate):
    with pytest.raises(ValueError, match="sampling_rate"):
        export_to_wav(_wave((10,)), tmp_path / "r.wav", rate)


def test_bad_types_and_subtype(tmp_path):
    with pytest.raises(TypeError, match="NumPy array or a torch.Tensor"):
        export_to_wav([0.1, 0.2], tmp_path / "t.wav", 16000)
    with pytest.raises(TypeError, match="floating-point"):
        export_to_wav(np.zeros(10, dtype=np.int16), tmp_path / "t.wav", 16000)
    with pytest.raises(ValueError, match="subtype"):
        export_to_wav(_wave((10,)), tmp_path / "t.wav", 16000, subtype="MP3")


def test_audio_pipeline_output_access():
    audios = np.zeros((2, 3, 16), dtype=np.float32)
    out = AudioPipelineOutput(audios=audios)
    assert out.audios is audios and out["audios"] is audios and out[0] is audios
    assert out.to_tuple() == (audios,)
