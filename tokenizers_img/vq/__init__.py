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
