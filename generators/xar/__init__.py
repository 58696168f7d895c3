"""xAR: next-X prediction with flow matching over continuous VAE latents (OliverRensu/xAR)."""

from .convert import checkpoint_filter_fn, config_from_official
from .model import ENTITIES, XARConfig, XARGenerator, entity_order

__all__ = ["ENTITIES", "XARConfig", "XARGenerator", "checkpoint_filter_fn", "config_from_official", "entity_order"]

from zoo.registry import HubFile, ModelSpec, register_model  # noqa: E402

CITATION = """@article{ren2025beyond,
  title   = {Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation},
  author  = {Ren, Sucheng and Yu, Qihang and He, Ju and Shen, Xiaohui and Yuille, Alan and Chen, Liang-Chieh},
  journal = {arXiv preprint arXiv:2502.20388},
  year    = {2025}
}"""

# The official README: "The pretrained weights are available at huggingface (OliverRen/xAR)"; its eval commands load
# xAR-{B,L,H}.pth (plain state dicts) and MAR's kl16.ckpt. The Hub repo's file list and commits were not available
# offline: the file names follow the README and the revision is the main branch (unpinned, unverified).
REPO = "OliverRen/xAR"
REVISION = "main"
_SIZES = {  # name -> (factory, width, depth per stack, heads, README steps and cfg, params, FID)
    "b": ("xar_base", 768, 8, 12, 40, 2.7, "172M", "1.72"),
    "l": ("xar_large", 1024, 16, 16, 50, 2.3, "608M", "1.28"),
    "h": ("xar_huge", 1280, 20, 16, 50, 2.2, "1.1B", "1.24"),
}
for _size, (_factory, _dim, _depth, _heads, _steps, _cfg, _params, _fid) in _SIZES.items():
    register_model(ModelSpec(
        name=f"xar-{_size}", family="xar", kind="generator", modality="image", architecture="xar",
        tokenizer="mar-kl16-vae",
        config=dict(grid_size=(16, 16), channels=16, entity="cell", entity_size=8, encoder_dim=_dim,
                    encoder_depth=_depth, encoder_heads=_heads, decoder_dim=_dim, decoder_depth=_depth,
                    decoder_heads=_heads, num_classes=1000, null_label=1000, num_steps=_steps, cfg_scale=_cfg,
                    cfg_schedule="linear"),
        hub_file=HubFile(REPO, f"xAR-{_size.upper()}.pth", REVISION), filter_fn=checkpoint_filter_fn,
        license="mit", paper="https://arxiv.org/abs/2502.20388", citation=CITATION,
        origin_url="https://github.com/OliverRensu/xAR", tokens_per_item="4 cells x 64 positions x 16 channels / image",
        datasets=("imagenet-1k",), tags=("image-generator", "next-x", "flow-matching", "class-conditional", "xar"),
        description=f"xAR-{_size.upper()} ({_params} parameters, `{_factory}`): class-conditional ImageNet 256 x 256 "
                    "generator of MAR KL-16 latents (mar-kl16-vae), next-cell prediction: 4 cells of 8 x 8 latent "
                    "positions, each denoised by flow matching inside the block-causal transformer. Defaults: the "
                    f"README's evaluation settings ({_steps} steps per cell, cfg {_cfg}, linear over cells). Reported "
                    f"FID-50K {_fid} (paper / README; not measured here).",
        notes=f"Official checkpoint `xAR-{_size.upper()}.pth` of the Hub repo {REPO}: the name follows the official "
              "README's eval commands and the revision is the main branch, since the repo's file list and commits "
              "were not available offline (not pinned, no sha256). A plain state dict (parameters plus the "
              "block-causal mask and RoPE buffers, which are recomputed here and checked against the file). The VAE "
              "is MAR's kl16.ckpt (mar-kl16-vae), not part of that repo.",
        limitations="Weights not available offline here: the architecture, the converter and the sampler are checked "
                    "against the official code's outputs at reduced width (../shared/parity/xar), not on these files.",
    ))

# The tiny model trained here (scripts/train_ar.py --name xar-tiny-fashion) on the continuous 8 x 8 x 8 latents of
# mar-kl-tiny-fashion: next-cell prediction with 4 cells of 4 x 4, two stacks of 3 blocks 128 wide.
FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
TINY_FASHION = dict(grid_size=(8, 8), channels=8, entity="cell", entity_size=4, encoder_dim=128, encoder_depth=3,
                    encoder_heads=4, decoder_dim=128, decoder_depth=3, decoder_heads=4, num_classes=10,
                    attn_dropout=0.0, proj_dropout=0.0, num_steps=40, cfg_scale=4.0, cfg_schedule="linear",
                    label_names=FASHION_LABELS)
register_model(ModelSpec(
    name="xar-tiny-fashion", family="xar", kind="generator", modality="image", architecture="xar",
    tokenizer="mar-kl-tiny-fashion", config=TINY_FASHION, bundled="xar-tiny-fashion", sha256="53f8bd015c0cf9b387aabaadc54fca4ddf069e02ac2042c6eeb5bb5fb1868c79",
    license="mit", paper="https://arxiv.org/abs/2502.20388", citation=CITATION,
    origin_url="https://github.com/OliverRensu/xAR", tokens_per_item="4 cells x 16 positions x 8 channels / image",
    datasets=("fashion-mnist",), tags=("image-generator", "next-x", "flow-matching", "class-conditional", "tiny",
                                       "xar"),
    description="A tiny xAR trained here on Fashion-MNIST: next-cell prediction (4 cells of 4 x 4 positions) of the "
                "continuous 8 x 8 x 8 latents of mar-kl-tiny-fashion, 10 classes.",
    splits={"train": "Fashion-MNIST train split (55,000 images, zoo.data.fashion_mnist), encoded once into "
                     "posterior-mode latents",
            "validation": "the 5,000 validation images: steps and CFG were chosen on them (100 samples per class, "
                          "linear schedule; accuracy % / Fréchet distance at 10 / 20 / 40 steps: CFG 1: 75.7 / 79.4 / "
                          "76.6, 1.177 / 1.018 / 0.848; CFG 2: 83.0 / 86.9 / 84.5, 0.747 / 0.627 / 0.528; CFG 3: "
                          "87.0 / 90.8 / 88.5, 0.555 / 0.447 / 0.374; CFG 4: 89.2 / 92.2 / 90.7, 0.462 / 0.399 / "
                          "0.322; CFG 5: 90.2 / 93.3 / 91.8, 0.464 / 0.406 / 0.336; CFG 4 with 40 steps is the "
                          "closest to the real validation images, which the classifier reads at 91.82 %)",
            "test": "the 10,000 test images: the reference of the generation table, reported once"},
    notes="Trained here with `python scripts/train_ar.py --name xar-tiny-fashion --out runs/xar-cell4 --steps 4000 "
          "--batch-size 64 --lr 1e-3 --warmup-steps 200 --weight-decay 0.02 --beta2 0.96 --max-grad-norm 1.0 "
          "--ema-decay 0.999 --threads 1` (generators/trainer.py: latents encoded once by mar-kl-tiny-fashion, the "
          "posterior mode, where the official training samples the posterior every step; the official noisy-context "
          "flow-matching loss with one logit-normal time per cell and label dropout 0.1; AdamW (0.9, 0.96) and "
          "weight decay 0.02 as xAR's recipe; the EMA weights are exported; 45 min on one CPU core beside another "
          "run; final training loss 0.41). Dropout is off. Defaults: 40 steps per cell, CFG 4.0 linear over the "
          "cells (the first cell unguided).",
    limitations="Fashion-MNIST only (28 x 28 grey pictures on a 32 x 32 black border, decoded by a tiny VAE). "
                "Sampling costs 4 cells x 40 steps of the transformer (x2 rows for CFG).",
))
