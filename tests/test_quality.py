"""The bundled tiny models are measurably good at their job, on held-out data (thresholds set from measurement)."""

import pytest
import torch

import zoo
from tokenizers_audio.wavtokenizer.evaluate import evaluate
from tokenizers_img.flextok.evaluate import reference_table, vae_table
from zoo import data

# Measured with `zoo eval wavtokenizer-tiny-75tps` (see the model card): STOI 0.719,
# mel distance 1.73, 495 distinct codes on the first 8 held-out clips (before the spoken-digit fine-tuning: 0.739,
# 1.72, 532); the untrained model scores STOI 0.47 and a mel-VQ + Griffin-Lim codec at the same bitrate 0.63. The
# thresholds leave a margin for platform noise.
WAVTOKENIZER_TINY_75 = {"stoi": 0.70, "mel_distance": 1.85, "min_codes_used": 400}


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


# Measured with `zoo eval llamagen-vq-tiny-fashion` (see the model card), all 10,000 Fashion-MNIST test images:
# 25.17 dB / SSIM 0.869 (an 8 x 8 grey thumbnail of about the same bits: 16.43 dB), 512 of 512 codes used, the
# classifier reads the reconstructions at 87.13 % (real images 91.70 %), Fréchet distance 0.399. On the first 2,000
# (what this test runs, for time): 25.22 dB / 0.869, 509 codes, 87.5 %, 0.448. Thresholds leave a margin.
VQ_TINY_FASHION = {"psnr": 24.7, "ssim": 0.85, "accuracy": 85.0, "frechet": 0.65, "codes_used": 480}


def test_llamagen_vq_tiny_fashion_quality():
    from tokenizers_img.vq.evaluate import fashion_table

    table = fashion_table(zoo.load("llamagen-vq-tiny-fashion"), limit=2000)
    (_, _, psnr, ssim, accuracy, frechet), (_, _, thumb_psnr, _, _, _) = table["rows"][:2]
    limits = VQ_TINY_FASHION
    assert psnr >= limits["psnr"] and ssim >= limits["ssim"] and psnr > thumb_psnr + 5, table["rows"]
    assert accuracy >= limits["accuracy"] and frechet <= limits["frechet"], table["rows"]
    assert table["codes_used"] >= limits["codes_used"], table["description"]


# Measured with `zoo eval tokenbridge-kl-tiny-fashion` (see the model card), all 10,000 test images: continuous VAE
# 29.42 dB / SSIM 0.928, 6 bits 29.32 dB / 0.927 (near-lossless), 4 bits 28.22 dB, 2 bits 22.62 dB; the classifier
# reads the 6-bit reconstructions at 89.82 %, Fréchet distance 0.088. This test runs the first 2,000 images.
TOKENBRIDGE_TINY_FASHION = {"psnr": 28.8, "ssim": 0.91, "loss_6bit_db": 0.3, "gain_over_2bit_db": 4.0,
                            "accuracy": 87.0, "frechet": 0.2}


def test_tokenbridge_tiny_fashion_post_training_quantization():
    from tokenizers_img.tokenbridge.evaluate import fashion_table

    table = fashion_table(zoo.load("tokenbridge-kl-tiny-fashion"), limit=2000, fewer_bits=(2,))
    (_, _, psnr_c, _, _, _), (_, _, psnr, ssim, accuracy, frechet), (_, _, psnr_2, _, _, _) = table["rows"][:3]
    limits = TOKENBRIDGE_TINY_FASHION
    assert psnr >= limits["psnr"] and ssim >= limits["ssim"], table["rows"]
    assert psnr_c - psnr <= limits["loss_6bit_db"] and psnr - psnr_2 >= limits["gain_over_2bit_db"], table["rows"]
    assert accuracy >= limits["accuracy"] and frechet <= limits["frechet"], table["rows"]


# Measured with `python scripts/generation_table.py llamagen-gpt-tiny-fashion token-shuffle-gpt-tiny-fashion`
# (1,000 samples per class, test split, at the settings chosen on the validation split; see README). This test draws
# 30 per class (the same first seeds): plain GPT (CFG 5.0 half-linear) 90.67 %, 0.534, without CFG 69.67 %, 0.820;
# Token-Shuffle s = 2 (CFG 3.0 half-linear) 91.33 %, 0.610, without CFG 74.67 %, 1.062. Thresholds leave a margin
# for 300 samples.
# TokenBridge (CFG 4.0 linear, temperature 0.7, 16 steps; test split, 1,000 per class: 91.71 %, 0.998, without CFG
# 81.71 %, 1.578): 30 per class gave 91.33 %, without CFG 84.0 %.
# xAR (40 steps per cell, CFG 4.0 linear): 30 per class gave 91.33 %, 0.355, without CFG 79.33 %, 0.906 (the README
# table has 300 per class).
GPT_TINY_FASHION = {"llamagen-gpt-tiny-fashion": {"accuracy": 86.0, "frechet": 0.8, "cfg_gain": 10.0},
                    "token-shuffle-gpt-tiny-fashion": {"accuracy": 86.0, "frechet": 0.85, "cfg_gain": 10.0},
                    "tokenbridge-tiny-fashion": {"accuracy": 85.0, "frechet": 1.5, "cfg_gain": 4.0},
                    "xar-tiny-fashion": {"accuracy": 86.0, "frechet": 0.6, "cfg_gain": 6.0}}


@pytest.mark.parametrize("name", sorted(GPT_TINY_FASHION))
def test_tiny_fashion_generation_quality(name):
    from generators.quality import protocol

    limits = GPT_TINY_FASHION[name]
    (_, _, n, accuracy, frechet, _), (_, _, _, plain_accuracy, _, _) = protocol.generator_rows(
        zoo.load(name), per_class=30, speed=False, split="test")
    assert n == 300 and accuracy >= limits["accuracy"] and frechet <= limits["frechet"]
    assert accuracy >= plain_accuracy + limits["cfg_gain"]  # guidance makes samples class-specific
