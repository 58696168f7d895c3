"""The small ViTs trained here on scikit-learn digits (scripts/train_vit_digits.py), bundled under weights/.

Every accuracy measurement of the token-reduction methods (`zoo eval vit-tiny-digits`) uses `vit-tiny-digits`.
"""

from __future__ import annotations

from zoo.registry import ModelSpec, register_model

# timm ViT: 32x32 input, patch 4 -> 64 patch tokens + CLS, width 64, 6 blocks of 4 heads, MLP x4: 308 K parameters
DIGITS_VIT = dict(
    timm_model="vit_tiny_patch16_224",
    timm_kwargs=dict(img_size=32, patch_size=4, embed_dim=64, depth=6, num_heads=4, num_classes=10),
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
)
ROUTING_KWARGS = dict(target=0.5)
DATASET = "scikit-learn digits (tokzoo zoo.data.digits)"

DIGIT_SPLITS = {
    "train": "scikit-learn digits 0-1,499 (zoo.data.digits: 'train' is now 0-1,299; 1,300-1,499 became the "
             "validation split after these models were trained)",
    "validation": "digits 1,300-1,499: trained on (see train); no setting was chosen on any split (fixed recipe, "
                  "last step)",
    "test": "zoo.data.digits('test'): digits 1,500-1,796 (297 images)",
}

_COMMON = dict(family="vit_accel", kind="accelerator", modality="image", architecture="vit-accel", license="mit",
               input_size=32, tokens_per_item="64 + CLS", datasets=(DATASET,), splits=DIGIT_SPLITS)

register_model(ModelSpec(
    name="vit-tiny-digits", config=DIGITS_VIT, bundled="vit-tiny-digits",
    sha256="b47f22809dd2301d2a8cf9be408a40707b0ae1292ef8d4c62287338895e66c90",
    description="A 0.31 M-parameter timm ViT (32x32 input, patch 4, 6 blocks) trained here on 8x8 digits "
                "upsampled to 32x32: the model every token-reduction accuracy measurement of vit_accel uses.",
    tags=("image-classification", "vit"),
    paper="https://arxiv.org/abs/2010.11929", origin_url="https://github.com/huggingface/pytorch-image-models",
    notes="Trained here with `python scripts/train_vit_digits.py --export weights/vit-tiny-digits` (Accelerate): "
          "100 epochs over the 1,500 training digits (2,300 steps of batch 64), AdamW (lr 1e-3, weight decay 0.05), "
          "5 warmup epochs then cosine decay, label smoothing 0.1, random affine augmentation (rotation +-12 "
          "degrees, scale 0.9-1.1, shift +-3 px), seed 0; about 13 minutes on one shared CPU thread. Digits are "
          "upsampled bilinearly from 8x8 to 32x32 and repeated to 3 channels (vit_accel.evaluate.digits).",
    **_COMMON,
))
register_model(ModelSpec(
    name="vit-tiny-digits-routing", config={**DIGITS_VIT, "method": "routing", "method_kwargs": ROUTING_KWARGS},
    bundled="vit-tiny-digits-routing",
    sha256="494a230b47453350ca35e3fc73a55ce85fbbef280d13ed660b555a45a7a3735a",
    description="vit-tiny-digits fine-tuned with dynamic token routing (vit_accel.routing, DiT-inspired): a "
                "learned per-token router in every block sends each patch token through the block or lets it "
                "exit; trained to a budget of half the (token, block) pairs.",
    paper="https://arxiv.org/abs/2308.03409",
    origin_url="https://github.com/Maycbj/DiT",  # the paper's repository: a README and figures, no code
    tags=("image-classification", "vit", "token-routing"),
    notes="Fine-tuned here with `python scripts/train_vit_digits.py --method routing --init weights/vit-tiny-digits "
          "--epochs 30 --lr 5e-4 --warmup-epochs 2 --distill 1.0 --export weights/vit-tiny-digits-routing`: loss = "
          "cross-entropy (label smoothing 0.1) + 4 x routing.budget_loss (target 0.5) + 1 x KL to vit-tiny-digits; "
          "routers and backbone trained together; the routers' Gumbel noise falls from 1 to 0 over the first 70 % "
          "of the 690 steps; about 9 minutes on one shared CPU thread. Routers: LayerNorm + Linear(64, 1) per block; "
          "the cheap path is the identity and a token that skips a block exits (vit_accel.routing). DiT has no "
          "public code; this is a DiT-inspired routing-gated ViT, not a reproduction.",
    **_COMMON,
))
