"""TokenBridge (YuqingWang1029/TokenBridge): post-training dimension-wise quantization of a continuous VAE.

* `vae`: MAR's KL-16 VAE (``mar-kl16-vae``; shared with MAR and xAR);
* `quantizer`: the per-channel Gaussian quantizer (equal-probability bins, truncated-normal centroids);
* `tokenizer`: the two together as a zoo tokenizer (``tokenbridge-kl16-6bit``, and the tiny one trained here).
"""

from zoo.registry import HubFile, ModelSpec, register_model

from .quantizer import GaussianQuantizer, gaussian_levels
from .tokenizer import TokenBridgeTokenizer, TokenBridgeTokenizerConfig, checkpoint_filter_fn
from .vae import (CITATION as MAR_CITATION, KL16_REPO, KL16_REVISION, KL16_SHA256, MARVAE, MARVAEConfig,
                  checkpoint_filter_fn as vae_checkpoint_filter_fn, config_from_official)

__all__ = ["GaussianQuantizer", "MARVAE", "MARVAEConfig", "TokenBridgeTokenizer", "TokenBridgeTokenizerConfig",
           "checkpoint_filter_fn", "config_from_official", "gaussian_levels", "vae_checkpoint_filter_fn"]

CITATION = """@inproceedings{wang2025bridging,
  title     = {Bridging Continuous and Discrete Tokens for Autoregressive Visual Generation},
  author    = {Wang, Yuqing and Lin, Zhijie and Teng, Yao and Zhu, Yuanzhi and Ren, Shuhuai and Feng, Jiashi and
               Liu, Xihui},
  booktitle = {ICCV},
  year      = {2025}
}"""

register_model(ModelSpec(
    name="tokenbridge-kl16-6bit", family="tokenbridge", kind="tokenizer", modality="image",
    architecture="tokenbridge-tokenizer", config=dict(bits=6),
    hub_file=HubFile(KL16_REPO, "kl16.ckpt", KL16_REVISION, KL16_SHA256), filter_fn=checkpoint_filter_fn,
    license="mit", paper="https://arxiv.org/abs/2503.16430", citation=CITATION + "\n\n" + MAR_CITATION,
    origin_url="https://github.com/YuqingWang1029/TokenBridge", input_size=256, codebook_size=64,
    num_codebooks=16, tokens_per_item="256 positions x 16 channels / image", datasets=("imagenet-1k",),
    tags=("image-tokenizer", "post-training-quantization", "dimension-wise", "kl16", "tokenbridge"),
    description="TokenBridge's tokenizer: MAR's KL-16 VAE (16 x 16 x 16 latents per 256 x 256 image, scaled by "
                "0.2325) quantized after training, every channel of every position on its own into 64 "
                "equal-probability levels of N(0, 1) (6 bits, range [-5, 5], 3 sigma). Reported (official README): "
                "near-lossless, rFID ~0.53 on ImageNet val at 6 bits.",
    notes="The VAE weights are MAR's kl16.ckpt (see mar-kl16-vae for where they come from); the quantizer has no "
          "weights: its levels are computed exactly as the official code computes them (float32), which the parity "
          "fixture checks bit for bit. Encoding uses the posterior mode (the official training code quantizes a "
          "posterior draw: encode(..., sample=True, seed=...)).",
    limitations="ImageNet 256 x 256; reconstruction quality was not measured here (no ImageNet offline).",
))

# The tiny tokenizer trained here (scripts/train_kl_vae.py): a KL VAE of MAR's architecture at a small width on
# 32 x 32 Fashion-MNIST (an 8 x 8 x 8 latent, stride 4, attention at 8 x 8 as KL-16 has it at 16 x 16), quantized
# post-training at 6 bits.
TINY_FASHION = dict(embed_dim=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=32,
                    bits=6)
register_model(ModelSpec(
    name="tokenbridge-kl-tiny-fashion", family="tokenbridge", kind="tokenizer", modality="image",
    architecture="tokenbridge-tokenizer", config=TINY_FASHION, bundled="tokenbridge-kl-tiny-fashion",
    sha256="1e4d67e7cc1695f57a40299eb634c031635bcee7dfa6ab94589534490f38f598", license="mit",
    paper="https://arxiv.org/abs/2503.16430", citation=CITATION, origin_url="https://github.com/YuqingWang1029/TokenBridge",
    input_size=32, codebook_size=64, num_codebooks=8, tokens_per_item="64 positions x 8 channels / image",
    datasets=("fashion-mnist",), tags=("image-tokenizer", "post-training-quantization", "tiny", "tokenbridge"),
    description="A tiny KL VAE of MAR's architecture trained here on Fashion-MNIST (32 x 32 -> 8 x 8 x 8 latents), "
                "quantized after training by TokenBridge's per-channel Gaussian quantizer at 6 bits.",
    splits={"train": "Fashion-MNIST train split (55,000 images, zoo.data.fashion_mnist), as 32 x 32 RGB",
            "validation": "the 5,000 validation images: not used (no setting was chosen; the quantizer has none)",
            "test": "the 10,000 test images: the reconstruction table, reported once"},
    notes="Trained here with `python scripts/train_kl_vae.py --out runs/kl-vae-fashion --kl-weight 1e-3` "
          "(tokenizers_img/tokenbridge/train.py: 3,000 steps of batch 64, AdamW lr 1e-3 (betas 0.9, 0.95), 100 "
          "warm-up steps then cosine, L1 + MSE reconstruction of a posterior draw plus 1e-3 x the KL divergence per "
          "latent element; 29 min on 2 CPU cores); scaling factor 1.0658 = 1 / std of the posterior means of 10,000 "
          "training images. The quantizer was not trained or tuned. Test split: continuous VAE 29.42 dB / SSIM 0.928, "
          "6 bits 29.32 dB / 0.927 (near-lossless: -0.1 dB), 4 bits 28.22 dB, 2 bits 22.62 dB; the Fashion-MNIST "
          "classifier reads the 6-bit reconstructions at 89.82 % (real images 91.70 %), Fréchet distance 0.088.",
    limitations="Fashion-MNIST only (28 x 28 grey pictures on a 32 x 32 black border). No perceptual or adversarial "
                "loss, so fine texture is smoothed. Its latents are only roughly Gaussian (per-channel std 0.49 .. "
                "1.33 after the one global scale), so the equal-probability bins are not exactly equiprobable (code "
                "entropy 5.70 of 6 bits).",
))

# The same VAE alone, as an autoencoder (continuous latents, no quantizer): what xAR's tiny model generates.
register_model(ModelSpec(
    name="mar-kl-tiny-fashion", family="tokenbridge", kind="autoencoder", modality="image",
    architecture="mar-kl16-vae", config={k: v for k, v in TINY_FASHION.items() if k != "bits"},
    bundled="mar-kl-tiny-fashion", sha256="208383f3d15208e516a8b8809bd918cba1196ab75059b7be4e2f5af3d65c2f3e", license="mit", paper="https://arxiv.org/abs/2406.11838",
    citation=MAR_CITATION, origin_url="https://github.com/LTH14/mar", input_size=32, datasets=("fashion-mnist",),
    tags=("image-autoencoder", "vae", "kl", "tiny", "xar"),
    description="The VAE of tokenbridge-kl-tiny-fashion alone (the same weights, no quantizer): a tiny KL VAE of "
                "MAR's architecture trained here on Fashion-MNIST, 32 x 32 -> 8 x 8 x 8 continuous latents scaled by "
                "1.0658. The autoencoder of xar-tiny-fashion.",
    splits={"train": "Fashion-MNIST train split (55,000 images, zoo.data.fashion_mnist), as 32 x 32 RGB",
            "validation": "the 5,000 validation images: not used",
            "test": "the 10,000 test images: the reconstruction table, reported once"},
    notes="Exported with `python scripts/train_kl_vae.py --vae-of tokenbridge-kl-tiny-fashion --export-vae "
          "weights/mar-kl-tiny-fashion` (training: see tokenbridge-kl-tiny-fashion). Test split (posterior mode): "
          "29.42 dB PSNR / SSIM 0.928.",
    limitations="Fashion-MNIST only; no perceptual or adversarial loss, so fine texture is smoothed.",
))
