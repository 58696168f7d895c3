"""The bundled tiny models are measurably good at their job, on held-out data (thresholds set from measurement)."""

import pytest
import torch

import zoo
from tokenizers_audio.wavtokenizer.evaluate import evaluate
from tokenizers_img.flextok.evaluate import vae_table
from zoo import data

# Measured with `python scripts/eval_wavtokenizer.py wavtokenizer-tiny-75tps` (see the model card): STOI 0.739,
# mel distance 1.72, 532 distinct codes on the first 8 held-out clips; the untrained model scores STOI 0.47 and a
# mel-VQ + Griffin-Lim codec at the same bitrate 0.63. The thresholds leave a margin for platform noise.
WAVTOKENIZER_TINY_75 = {"stoi": 0.72, "mel_distance": 1.85, "min_codes_used": 400}


@pytest.fixture(scope="module")
def heldout_speech():
    return data.speech("heldout")


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

