"""zoo.io, zoo.metrics and zoo.data."""

import pytest
import torch

from zoo import data, io as zio, metrics


def test_audio_roundtrip_resample_and_mono(tmp_path):
    wav = torch.sin(torch.linspace(0, 2000, 16000))[None].repeat(2, 1) * 0.5
    zio.save_audio(tmp_path / "a.wav", wav, 16000)
    back, sr = zio.load_audio(tmp_path / "a.wav")
    assert sr == 16000 and back.shape == (2, 16000)
    assert (back - wav).abs().max() < 1e-4  # 16-bit PCM
    up = zio.resample(back, 16000, 24000)
    assert up.shape == (2, 24000) and zio.resampled_length(16000, 16000, 24000) == 24000
    assert zio.to_mono(back[None]).shape == (1, 16000)
    (tmp_path / "bad.wav").write_bytes(b"RIFF1234")
    with pytest.raises(ValueError, match="cannot read audio"):
        zio.load_audio(tmp_path / "bad.wav")


def test_image_roundtrip_and_grid(tmp_path):
    img = torch.rand(3, 16, 20)
    zio.save_image(tmp_path / "x.png", img)
    back = zio.load_image(tmp_path / "x.png")
    assert back.shape == (3, 16, 20) and (back - img).abs().max() <= 1 / 255
    grid = zio.image_grid(torch.rand(5, 3, 8, 8), ncols=3, pad=2)
    assert grid.shape == (3, 2 * 10 + 2, 3 * 10 + 2)
    with pytest.raises(ValueError, match="cannot read image"):
        (tmp_path / "bad.png").write_bytes(b"nope")
        zio.load_image(tmp_path / "bad.png")


def test_image_metrics():
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2))
    assert (metrics.psnr(x, x) > 100).all()
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert (metrics.psnr(noisy, x) < 25).all() and (metrics.ssim(noisy, x) < 0.97).all()
    assert (metrics.ssim(noisy, x) < metrics.ssim((x + 0.02 * torch.randn_like(x)).clamp(0, 1), x)).all()
    # PSNR of a known MSE: uniform error 0.1 -> 20 dB
    assert torch.allclose(metrics.psnr((x * 0.5 + 0.1), x * 0.5), torch.full((2,), 20.0), atol=1e-3)


def test_audio_metrics_order_by_degradation():
    clean = data.speech("test", n=1)[0][None]
    light = clean + 0.003 * torch.randn_like(clean)
    heavy = clean + 0.05 * torch.randn_like(clean)
    m_light = metrics.audio_metrics(light, clean, 24000)
    m_heavy = metrics.audio_metrics(heavy, clean, 24000)
    assert m_light["mel_distance"] < m_heavy["mel_distance"]
    assert m_light["stft_distance"] < m_heavy["stft_distance"]
    assert m_light["si_sdr"] > m_heavy["si_sdr"] > 0
    assert m_light["stoi"] > m_heavy["stoi"] and m_light["stoi"] > 0.95
    assert m_light["pesq"] > m_heavy["pesq"]
    assert metrics.mel_distance(clean, clean).item() == 0


def test_speech_splits_are_disjoint():
    items = {split: data.speech_items(split) for split in data.SPLITS}
    for a, b in ((a, b) for i, a in enumerate(data.SPLITS) for b in data.SPLITS[i + 1:]):
        for field in (0, 1):  # voices, sentences
            shared = {item[field] for item in items[a]} & {item[field] for item in items[b]}
            assert not shared, (a, b, shared)
    assert [len(items[s]) for s in data.SPLITS] == [240, 12, 24]
    clips = data.speech("test")
    assert len(clips) == 24 and all(c.ndim == 1 and c.abs().max() <= 1 for c in clips)
    # the clips are the items: a clip spoken again from its item is the same audio
    voice, text, speed, pitch = items["test"][5]
    with zio.atomic_path(data.cache_dir() / "check.wav") as tmp:
        data._speak(text, voice, speed, pitch, tmp)
        wav, rate = zio.load_audio(tmp)
    assert torch.equal(zio.resample(wav.mean(0), rate, data.SPEECH_SAMPLE_RATE), clips[5])
    with pytest.raises(ValueError, match="split must be one of"):
        data.speech("heldout")


def _fingerprints(images) -> set[bytes]:
    """Content hashes of images brought to 16 x 16 (the same picture under another name is caught)."""
    out = set()
    for img in images:
        small = torch.nn.functional.interpolate(img[None].float(), size=(16, 16), mode="area")
        out.add((small * 32).round().to(torch.uint8).numpy().tobytes())
    return out


def test_photos_and_digits_splits_are_disjoint():
    photos = {split: data.photos(split) for split in data.SPLITS}
    assert set(photos["test"]) == set(data.HELD_OUT_PHOTOS)
    assert all(v.shape[0] == 3 and 0 <= v.min() and v.max() <= 1 for p in photos.values() for v in p.values())
    digits = {split: data.digits(split) for split in data.SPLITS}
    assert [len(digits[s][0]) for s in data.SPLITS] == [1300, 200, 297]
    assert set(digits["test"][1].tolist()) == set(range(10)) == set(digits["validation"][1].tolist())
    for a, b in ((a, b) for i, a in enumerate(data.SPLITS) for b in data.SPLITS[i + 1:]):
        assert not set(photos[a]) & set(photos[b]), (a, b)
        assert not _fingerprints(photos[a].values()) & _fingerprints(photos[b].values()), (a, b)
        da = {x.numpy().tobytes() for x in digits[a][0]}
        assert not da & {x.numpy().tobytes() for x in digits[b][0]}, (a, b)  # no identical digit in two splits
