"""LlamaGen's VQ image tokenizers: the two official class-conditional (ImageNet) checkpoints, weights on the Hub."""

from zoo.registry import HubFile, ModelSpec, register_model

from .convert import checkpoint_filter_fn, to_official, unwrap
from .model import LlamaGenVQ, VQConfig, adm_center_crop

__all__ = ["LlamaGenVQ", "VQConfig", "adm_center_crop", "checkpoint_filter_fn", "to_official", "unwrap"]

CITATION = """@article{sun2024autoregressive,
  title   = {Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation},
  author  = {Sun, Peize and Jiang, Yi and Chen, Shoufa and Zhang, Shilong and Peng, Bingyue and Luo, Ping and
             Yuan, Zehuan},
  journal = {arXiv preprint arXiv:2406.06525},
  year    = {2024}
}"""

REPO = "FoundationVision/LlamaGen"
# The head of the Hub repo's main branch ("Upload vq_ds16_c2i_training.pt", 2024-06-14), as given by the Hub's own
# file pages; both tokenizer files were added before it (e467ee8 "add vq_ds16_c2i", dc1fec5 "add c2i models").
REVISION = "81e41139272c038412e4fe8f1c52a51ebbf95b8b"

_BASE = dict(ch=128, z_channels=256, num_res_blocks=2, codebook_size=16384, codebook_embed_dim=8,
             codebook_l2_norm=True, image_size=256)

_COMMON = dict(
    family="llamagen_vq", kind="tokenizer", modality="image", architecture="llamagen-vq",
    filter_fn=checkpoint_filter_fn, license="mit", paper="https://arxiv.org/abs/2406.06525", citation=CITATION,
    origin_url="https://github.com/FoundationVision/LlamaGen", codebook_size=16384, num_codebooks=1, input_size=256,
    datasets=("imagenet-1k",),
)

_NOTES = (
    "Weights: {file} of the Hub repo FoundationVision/LlamaGen, pinned to commit 81e41139 (the main branch's head); "
    "{sha_note}. Converted at load time: the official key names are kept and the training-only "
    "`quantize.codebook_used` buffer is dropped. The official preprocessing is ADM's centre crop "
    "(`encode(..., resize=\"adm\")`); the default `resize=\"center_crop\"` is the zoo's torch bicubic rule, which "
    "differs from it by a few 8-bit levels. Any size whose sides are multiples of {factor} encodes with "
    "`resize=\"none\"`."
)

register_model(ModelSpec(
    name="llamagen-vq-ds16-c2i",
    config=dict(_BASE, ch_mult=(1, 1, 2, 2, 4)),
    hub_file=HubFile(REPO, "vq_ds16_c2i.pt", REVISION),
    tokens_per_item="256 / image",
    tags=("image-tokenizer", "vq", "vqgan", "l2-normalized-codebook", "f16"),
    description="LlamaGen's VQ tokenizer with downsampling 16 (VQ-16, 72 M parameters, ImageNet): 16,384 "
                "l2-normalised 8-dim codes, a 16 x 16 grid per 256 x 256 image (24 x 24 at 384 px, the size of the "
                "c2i *_384 generators). Reported rFID on ImageNet val: 2.19 at 256 px, 0.94 at 384 px, 0.70 at 512 px.",
    notes=_NOTES.format(file="vq_ds16_c2i.pt", factor=16,
                        sha_note="its sha256 was not available offline, so the download is not hash-checked"),
    **_COMMON,
))

register_model(ModelSpec(
    name="llamagen-vq-ds8-c2i",
    config=dict(_BASE, ch_mult=(1, 2, 2, 4)),
    hub_file=HubFile(REPO, "vq_ds8_c2i.pt", REVISION,
                     sha256="c70d2966ec012f378793214ff0755087e7c5fe6f035b469995143325dca4a4e3"),
    tokens_per_item="1024 / image",
    tags=("image-tokenizer", "vq", "vqgan", "l2-normalized-codebook", "f8"),
    description="LlamaGen's VQ tokenizer with downsampling 8 (VQ-8, 70 M parameters, ImageNet): 16,384 "
                "l2-normalised 8-dim codes, a 32 x 32 grid per 256 x 256 image. Reported rFID on ImageNet val: 0.59 "
                "at 256 px.",
    notes=_NOTES.format(file="vq_ds8_c2i.pt", factor=8,
                        sha_note="the sha256 given by the Hub's LFS page is checked after download"),
    **_COMMON,
))

# The tiny tokenizer trained here on Fashion-MNIST (scripts/train_vq.py): 32 x 32 images (28 x 28 on a black border)
# -> an 8 x 8 grid of 512 codes, the LlamaGen architecture at a small width.
TINY_FASHION = dict(image_size=32, ch=32, ch_mult=(1, 2, 2), z_channels=32, num_res_blocks=1, codebook_size=512,
                    codebook_embed_dim=8, codebook_l2_norm=True, norm_groups=8)
register_model(ModelSpec(
    name="llamagen-vq-tiny-fashion", family="llamagen_vq", kind="tokenizer", modality="image", architecture="llamagen-vq",
    config=TINY_FASHION, bundled="llamagen-vq-tiny-fashion",
    sha256="943654ea6edbe1810f971d23aa035a6899414d4900892917250573f0e0b63484",
    splits={"train": "zoo.data.fashion_mnist('train'): 55,000 images (the official train file but its last 5,000)",
            "validation": "the last 5,000 images of the official train file: checked at step 500 (22.2 dB); no "
                          "setting was chosen on it",
            "test": "the official test file (10,000 images), reported once"},
    license="mit", paper="https://arxiv.org/abs/2406.06525",
    origin_url="https://github.com/FoundationVision/LlamaGen", codebook_size=512, num_codebooks=1,
    tokens_per_item="64 / image (8 x 8)", input_size=32, datasets=("fashion-mnist",),
    tags=("image-tokenizer", "vq", "llamagen", "tiny"),
    description="A tiny LlamaGen VQ tokenizer trained here on Fashion-MNIST: 32 x 32 images (the 28 x 28 pictures on "
                "a black border, zoo.data.fashion_mnist_rgb32) to 8 x 8 grids of 512 l2-normalised codes.",
    notes="Trained here with `python scripts/train_vq.py --out runs/vq-fashion` (tokenizers_img/vq/train.py: 2,000 "
          "steps of batch 64, AdamW lr 1e-3 (betas 0.9, 0.95), 100 warm-up steps then cosine, L1 + MSE "
          "reconstruction, the official codebook and 0.25 commitment losses, codebook started on encoder latents "
          "and unused codes restarted every 100 steps; 22 min on 2 CPU cores), exported with `zoo eval --checkpoint "
          "runs/vq-fashion/checkpoints/checkpoint_3 --name llamagen-vq-tiny-fashion --export ...`. Test split: "
          "25.17 dB / SSIM 0.869 on the 28 x 28 pictures (an 8 x 8 grey thumbnail of about the same bits: 16.43 dB), "
          "all 512 codes used; the Fashion-MNIST classifier reads its reconstructions at 87.13 % (real images: "
          "91.70 %).",
    limitations="Fashion-MNIST only (28 x 28 grey pictures on a 32 x 32 black border): other images are "
                "reconstructed as clothing-like blurs. No perceptual or adversarial loss was used, so fine texture "
                "is smoothed.",
))
