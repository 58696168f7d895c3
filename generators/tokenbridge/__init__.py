"""TokenBridge's generator (MAR backbone + dimension-wise AR head) over post-training-quantized VAE latents."""

from .convert import checkpoint_filter_fn, config_from_official
from .model import KL16_CHANNEL_ORDER, TokenBridgeConfig, TokenBridgeGenerator, masked_after_step

__all__ = ["KL16_CHANNEL_ORDER", "TokenBridgeConfig", "TokenBridgeGenerator", "checkpoint_filter_fn",
           "config_from_official", "masked_after_step"]

from zoo.registry import HubFile, ModelSpec, register_model  # noqa: E402

from tokenizers_img.tokenbridge import CITATION  # noqa: E402

# TokenBridge's README: "Download pre-trained TokenBridge models from huggingface (Epiphqny/TokenBridge), and save
# the corresponding folder as pretrained_models"; its commands then read pretrained_models/tokenbridge/
# tokenbridge_{large,huge}/checkpoint-last.pth. The Hub repo's file list and commits were not available offline:
# the paths below follow that layout and the revision is the main branch (unpinned, unverified).
REPO = "Epiphqny/TokenBridge"
REVISION = "main"
_SIZES = {  # name -> (official factory sizes, README FID-50K, eval cfg, temperature, params)
    "l": (dict(encoder_dim=1024, encoder_depth=16, encoder_heads=16, decoder_dim=1024, decoder_depth=16,
               decoder_heads=16, channel_dim=1024, channel_depth=4, channel_heads=8), 1.76, 3.1, 0.96, "486M",
          "large"),
    "h": (dict(encoder_dim=1280, encoder_depth=20, encoder_heads=16, decoder_dim=1280, decoder_depth=20,
               decoder_heads=16, channel_dim=1024, channel_depth=6, channel_heads=8), 1.55, 3.45, 0.91, "910M",
          "huge"),
}
for _size, (_arch, _fid, _cfg, _temp, _params, _long) in _SIZES.items():
    register_model(ModelSpec(
        name=f"tokenbridge-{_size}", family="tokenbridge_generator", kind="generator", modality="image",
        architecture="tokenbridge", tokenizer="tokenbridge-kl16-6bit",
        config=dict(_arch, grid_size=(16, 16), channels=16, levels=64, num_classes=1000, buffer_size=64,
                    num_iter=256, cfg_scale=_cfg, cfg_schedule="linear", temperature=_temp),
        hub_file=HubFile(REPO, f"tokenbridge/tokenbridge_{_long}/checkpoint-last.pth", REVISION),
        filter_fn=checkpoint_filter_fn, license="mit", paper="https://arxiv.org/abs/2503.16430", citation=CITATION,
        origin_url="https://github.com/YuqingWang1029/TokenBridge", codebook_size=64, num_codebooks=16,
        tokens_per_item="256 positions x 16 channels / image", datasets=("imagenet-1k",),
        tags=("image-generator", "masked-autoregressive", "class-conditional", "tokenbridge"),
        description=f"TokenBridge-{_size.upper()} ({_params} parameters): class-conditional ImageNet 256 x 256 "
                    "generator over the 6-bit per-channel codes of tokenbridge-kl16-6bit: a MAR encoder-decoder "
                    "(random-order masked prediction, 256 steps) and a causal head that emits the 16 channel codes "
                    f"of each position. README FID-50K {_fid} (cfg {_cfg}, linear, temperature {_temp}: the defaults "
                    "here); not measured here.",
        notes=f"Official checkpoint `tokenbridge/tokenbridge_{_long}/checkpoint-last.pth` of the Hub repo {REPO}: "
              "the path follows the README's `pretrained_models` layout and the revision is the main branch, since "
              "the repo's file list and commits were not available offline (not pinned, no sha256). A pickle with "
              "'model', 'model_ema', 'optimizer', 'epoch', 'scaler' and 'args' (an argparse.Namespace, allowed by "
              "the loader); the EMA parameters are loaded, as the official evaluation does.",
    ))

# The tiny generator trained here (scripts/train_ar.py --name tokenbridge-tiny-fashion) over the 8 x 8 x 8 codes of
# tokenbridge-kl-tiny-fashion: MAR encoder / decoder 128 wide, 3 blocks each, a 64-wide 2-block channel head.
FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
TINY_FASHION = dict(grid_size=(8, 8), channels=8, levels=64, encoder_dim=128, encoder_depth=3, encoder_heads=4,
                    decoder_dim=128, decoder_depth=3, decoder_heads=4, channel_dim=64, channel_depth=2,
                    channel_heads=4, num_classes=10, buffer_size=16, attn_dropout=0.0, proj_dropout=0.0,
                    num_iter=16, cfg_scale=4.0, cfg_schedule="linear", temperature=0.7, label_names=FASHION_LABELS)
register_model(ModelSpec(
    name="tokenbridge-tiny-fashion", family="tokenbridge_generator", kind="generator", modality="image",
    architecture="tokenbridge", tokenizer="tokenbridge-kl-tiny-fashion", config=TINY_FASHION,
    bundled="tokenbridge-tiny-fashion", sha256="0c97f9f3321bad61d57ec4f1333eb25777405cc0345ff896e25b4e46c60bfacc", license="mit",
    paper="https://arxiv.org/abs/2503.16430", citation=CITATION, origin_url="https://github.com/YuqingWang1029/TokenBridge",
    codebook_size=64, num_codebooks=8, tokens_per_item="64 positions x 8 channels / image",
    datasets=("fashion-mnist",), tags=("image-generator", "masked-autoregressive", "class-conditional", "tiny",
                                       "tokenbridge"),
    description="A tiny TokenBridge generator trained here on Fashion-MNIST over the 6-bit per-channel codes of "
                "tokenbridge-kl-tiny-fashion (8 x 8 positions x 8 channels), 10 classes.",
    notes="Trained here with `python scripts/train_ar.py --name tokenbridge-tiny-fashion --out runs/tb-fashion "
          "--steps 2500 --batch-size 64 --lr 1e-3 --warmup-steps 200 --weight-decay 0.02 --max-grad-norm 3.0 "
          "--ema-decay 0.999` (generators/trainer.py: codes pre-tokenized once from the posterior mode, the official "
          "masked per-channel cross-entropy with label dropout 0.1, AdamW (0.9, 0.95), TokenBridge's weight decay and "
          "clipping; the EMA weights are exported; 27 min on 2 CPU cores; final training loss 2.38 nats per code). "
          "Dropout is off (the official 0.1 attention / projection dropout doubled the step time on CPU). Defaults: 16 "
          "steps (4 positions each), CFG 4.0 linear, temperature 0.7.",
    splits={"train": "Fashion-MNIST train split (55,000 images, zoo.data.fashion_mnist), pre-tokenized once",
            "validation": "the 5,000 validation images: the CFG scale and temperature were chosen on them (100 "
                          "samples per class, 16 steps, linear schedule; temperature 1.0 at CFG 1 / 2 / 3 / 4: "
                          "accuracy 75.6 / 81.1 / 85.1 / 87.8 %, Fréchet distance 2.333 / 1.833 / 1.645 / 1.451; "
                          "CFG 4 at temperature 0.7 / 0.85: 92.7 / 90.3 %, 0.930 / 1.206; CFG 6: 93.3 / 89.5 %, "
                          "1.081 / 1.305; CFG 4.0 at 0.7 is the closest to real validation images, 91.82 %)",
            "test": "the 10,000 test images: the reference of the generation table, reported once"},
))
