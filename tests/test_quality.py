"""The bundled tiny models are measurably good at their job, on held-out data (thresholds set from measurement)."""

import pytest
import torch

import zoo
from tokenizers_audio.wavtokenizer.evaluate import evaluate
from tokenizers_img.flextok.evaluate import reference_table, vae_table
from zoo import data

# Measured with `zoo eval wavtokenizer-tiny-75tps` (see the model card): STOI 0.739,
# mel distance 1.72, 532 distinct codes on the first 8 held-out clips; the untrained model scores STOI 0.47 and a
# mel-VQ + Griffin-Lim codec at the same bitrate 0.63. The thresholds leave a margin for platform noise.
WAVTOKENIZER_TINY_75 = {"stoi": 0.72, "mel_distance": 1.85, "min_codes_used": 400}


@pytest.fixture(scope="module")
def heldout_speech():
    return data.speech("test")


def test_wavtokenizer_tiny_75tps_quality(heldout_speech):
    model = zoo.load("wavtokenizer-tiny-75tps")
    scores = evaluate(model, heldout_speech)
    assert scores["stoi"] >= WAVTOKENIZER_TINY_75["stoi"], scores
    assert scores["mel_distance"] <= WAVTOKENIZER_TINY_75["mel_distance"], scores
    # and it uses its codebook: held-out speech touches a good share of the codes
    tokens = model.encode(heldout_speech[:8], sample_rate=data.SPEECH_SAMPLE_RATE)
    used = torch.cat([tokens.codes[i, 0, : int(n)] for i, n in enumerate(tokens.lengths)]).unique().numel()
    assert used >= WAVTOKENIZER_TINY_75["min_codes_used"]


# Measured by `scripts/train_flextok.py --stage vae --vae-export` (see the model card): 25.55 dB / SSIM 0.797 on the
# 15 held-out images, against 22.79 dB for a bicubic thumbnail on its 16 x 16 latent grid.
FLEXTOK_VAE_TINY = {"psnr": 25.0, "ssim": 0.78, "psnr_over_grid_thumbnail": 2.0}


def test_flextok_vae_tiny_quality():
    table = vae_table(zoo.load("flextok-vae-tiny-64px"))
    (_, _, psnr, ssim), (_, _, grid_psnr, _) = table["rows"][:2]
    assert psnr >= FLEXTOK_VAE_TINY["psnr"] and ssim >= FLEXTOK_VAE_TINY["ssim"], table["rows"]
    assert psnr >= grid_psnr + FLEXTOK_VAE_TINY["psnr_over_grid_thumbnail"], table["rows"]


# Measured with `zoo eval flextok-tiny-64px` (see the model card): 12.82 / 13.75 / 15.34 / 19.35 dB at
# 1 / 4 / 16 / 64 tokens on the 15 test images (25 Euler steps, fixed noise); the thumbnails of the nearest bit
# budget (1x1, 2x2, 3x3, 7x7) give 14.61 / 15.51 / 16.08 / 18.74 dB. Thresholds leave a margin for platform noise.
FLEXTOK_TINY_PSNR = {1: 12.3, 4: 13.2, 16: 14.8, 64: 19.0}


def test_flextok_tiny_quality():
    table = reference_table(zoo.load("flextok-tiny-64px"))
    psnr, thumbnail = table["psnr_by_k"], table["thumbnail_psnr_by_k"]
    assert all(psnr[k] >= low for k, low in FLEXTOK_TINY_PSNR.items()), table["rows"]
    assert psnr[64] >= psnr[1] + 3.0, psnr  # quality rises with k
    # against the thumbnail of the nearest bit budget at every k: above it with all 64 tokens, below it with 1-16
    # (what the card and the model's limitations say)
    assert psnr[64] > thumbnail[64] and all(psnr[k] < thumbnail[k] for k in (1, 4, 16)), table["rows"]


def test_baseline_is_the_thumbnail_of_the_nearest_bits():
    from tokenizers_img.flextok.evaluate import thumbnail_side

    # 8-bit RGB thumbnails store 24 side^2 bits: 24, 96, 216, 384, ..., 864, 1176
    assert [thumbnail_side(b) for b in (16, 64, 255, 1022, 1100)] == [1, 2, 3, 7, 7]
    assert thumbnail_side(1021) == 7 and thumbnail_side(1020) == 6  # |1176 - b| vs |864 - b|; a tie takes the smaller
