"""Autoregressive GPT generators: LlamaGen's class-conditional GPTs (FoundationVision/LlamaGen), registered with
their official checkpoints, and the same architecture for any single-codebook tokenizer (`ARGenerator`)."""

from zoo.registry import HubFile, ModelSpec, register_model

from .convert import checkpoint_filter_fn, config_from_official, to_official, to_official_config
from .model import ARConfig, ARGenerator, filter_logits

__all__ = ["ARConfig", "ARGenerator", "checkpoint_filter_fn", "config_from_official", "filter_logits", "to_official",
           "to_official_config"]

CITATION = """@article{sun2024autoregressive,
  title   = {Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation},
  author  = {Sun, Peize and Jiang, Yi and Chen, Shoufa and Zhang, Shilong and Peng, Bingyue and Luo, Ping and
             Yuan, Zehuan},
  journal = {arXiv preprint arXiv:2406.06525},
  year    = {2024}
}"""

REPO = "FoundationVision/LlamaGen"
# The newest commit of the Hub repo in the stored snapshot of its history ("Upload vq_ds16_c2i_training.pt"); the
# c2i files were last changed in dc1fec543f6ac82e0cb9bbed058d5eaa26a30e6e ("add c2i models") and are the same here.
REVISION = "81e41139272c038412e4fe8f1c52a51ebbf95b8b"
TOKENIZER = "llamagen-vq-ds16-c2i"

# (layers, heads, width) of the official GPT_* factories; eval CFG scales of GETTING_STARTED.md
SIZES = {"b": (12, 12, 768), "l": (24, 16, 1024), "xl": (36, 20, 1280), "xxl": (48, 24, 1536), "3b": (24, 32, 3200)}
CFG = {"b": 2.0, "l": 2.0, "xl": 1.75, "xxl": 1.75, "3b": 1.65}
PARAMS = {"b": "111M", "l": "343M", "xl": "775M", "xxl": "1.4B", "3b": "3.1B"}

# (size, image size) -> (file, README FID-50k at 256 px, training, sha256 where the Hub page of the file was stored)
CHECKPOINTS = {
    ("b", 256): ("c2i_B_256.pt", 5.46, "DDP", None),
    ("b", 384): ("c2i_B_384.pt", 6.09, "DDP", None),
    ("l", 256): ("c2i_L_256.pt", 3.80, "DDP", None),
    ("l", 384): ("c2i_L_384.pt", 3.07, "DDP", None),
    ("xl", 384): ("c2i_XL_384.pt", 2.62, "DDP", "736cb92bebdcb16737dbd35210a07ae4f7fd001cdfd55b26205d89182d1807ba"),
    ("xxl", 384): ("c2i_XXL_384.pt", 2.34, "FSDP", "cba5a780b9d2394386e7410c630bced3a70e109cf7107e1783c9a986e9e7754e"),
    ("3b", 384): ("c2i_3B_384.pt", 2.18, "FSDP", None),
}

_ARCH = dict(n_kv_head=None, multiple_of=256, ffn_dim_multiplier=None, rope_base=10000.0, norm_eps=1e-5,
             initializer_range=0.02, vocab_size=16384, num_classes=1000, cls_token_num=1, class_dropout_prob=0.1,
             token_dropout_p=0.1, attn_dropout_p=0.0, resid_dropout_p=0.1, ffn_dropout_p=0.1, drop_path_rate=0.0,
             modality="image", cfg_interval=-1, temperature=1.0, top_k=0, top_p=1.0)


def _register(size: str, image_size: int) -> None:
    file, fid, training, sha256 = CHECKPOINTS[(size, image_size)]
    n_layer, n_head, dim = SIZES[size]
    side = image_size // 16
    config = dict(_ARCH, dim=dim, n_layer=n_layer, n_head=n_head, block_size=side * side, grid_size=(side, side),
                  cfg_scale=CFG[size])
    notes = (
        f"Official {training} checkpoint `{file}` of the Hub repo {REPO}, pinned to commit {REVISION}"
        + (" (sha256 checked)" if sha256 else " (its sha256 was not in the stored Hub pages: not checked)")
        + f"; a pickle read with torch.load(weights_only=True) and converted at load time. It generates a "
        f"{side} x {side} grid of {TOKENIZER} codes ({image_size} x {image_size} px). The defaults are the "
        f"official FID settings (cfg {CFG[size]:g}, top-k 0, top-p 1.0, temperature 1.0); the official demo "
        "(`sample_c2i.py`) uses cfg 4.0 and top-k 2000. FID-50k from the official README: "
        f"{fid:.2f} on ImageNet 256 x 256" + (" (generated at 384 px, resized to 256)" if image_size == 384 else "")
        + "; not measured here."
    )
    register_model(ModelSpec(
        name=f"llamagen-gpt-{size}-c2i-{image_size}", family="ar", kind="generator", modality="image",
        architecture="llamagen-gpt", config=config, tokenizer=TOKENIZER,
        hub_file=HubFile(REPO, file, REVISION, sha256), filter_fn=checkpoint_filter_fn,
        license="mit", paper="https://arxiv.org/abs/2406.06525", citation=CITATION,
        origin_url="https://github.com/FoundationVision/LlamaGen",
        description=f"LlamaGen-{size.upper()} ({PARAMS[size]} parameters): class-conditional ImageNet generator, a "
                    f"Llama-style GPT over the {side} x {side} = {side * side} codes of the LlamaGen VQ tokenizer "
                    f"(ds16, 16,384 codes), 1,000 classes, classifier-free guidance.",
        codebook_size=16384, num_codebooks=1, tokens_per_item=f"{side * side} / image ({side} x {side})",
        datasets=("imagenet-1k",), tags=("image-generator", "autoregressive", "class-conditional", "llamagen"),
        notes=notes,
    ))


for _size, _image_size in CHECKPOINTS:
    _register(_size, _image_size)

# The tiny class-conditional GPT trained here on Fashion-MNIST (scripts/train_ar.py, generators/ar/train.py) over the
# 8 x 8 codes of llamagen-vq-tiny-fashion; cfg_scale 2.0 chosen on the validation split (see `splits`).
TINY_FASHION = dict(_ARCH, dim=128, n_layer=4, n_head=4, vocab_size=512, block_size=64, grid_size=(8, 8),
                    num_classes=10, class_dropout_prob=0.1, cfg_scale=5.0, cfg_schedule="half-linear",
                    label_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                 "Bag", "Ankle boot"))
register_model(ModelSpec(
    name="llamagen-gpt-tiny-fashion", family="ar", kind="generator", modality="image", architecture="llamagen-gpt",
    config=TINY_FASHION, tokenizer="llamagen-vq-tiny-fashion", bundled="llamagen-gpt-tiny-fashion",
    sha256="0984baf7fb3de5bacc8d6001784ffd8ddc67a8bd377550fb0904229d35a7bbf8",
    license="mit", paper="https://arxiv.org/abs/2406.06525",
    citation=CITATION, origin_url="https://github.com/FoundationVision/LlamaGen",
    description="A tiny LlamaGen GPT (4 layers, 4 heads, width 128) trained here on Fashion-MNIST: class-conditional "
                "(10 classes, classifier-free guidance) over the 8 x 8 = 64 codes (512-code vocabulary) of "
                "llamagen-vq-tiny-fashion, 32 x 32 images.",
    codebook_size=512, num_codebooks=1, tokens_per_item="64 / image (8 x 8)", datasets=("fashion-mnist",),
    tags=("image-generator", "autoregressive", "class-conditional", "llamagen", "tiny"),
    splits={"train": "Fashion-MNIST train split (55,000 images, zoo.data.fashion_mnist), pre-tokenized once",
            "validation": "the 5,000 validation images: the CFG scale and schedule were chosen on them (100 samples "
                          "per class; constant schedule at 1 / 1.5 / 2 / 3 / 4: accuracy 71.9 / 86.3 / 90.0 / 94.8 / "
                          "97.0 %, Fréchet distance 0.974 / 0.774 / 0.669 / 0.647 / 0.681; half-linear at 2 / 3 / 4 "
                          "/ 5: 82.0 / 87.5 / 90.8 / 91.9 %, 0.730 / 0.636 / 0.597 / 0.570; half-linear 5.0 gives "
                          "the accuracy closest to real validation images, 91.82 %)",
            "test": "the 10,000 test images: the reference of the generation table, reported once"},
    notes="Trained here with `python scripts/train_ar.py --out runs/ar-fashion --tokenizer llamagen-vq-tiny-fashion "
          "--steps 2500 --batch-size 64 --lr 1e-3 --warmup-steps 200` (generators/ar/train.py: the train split "
          "pre-tokenized once, AdamW (0.9, 0.95), weight decay 0.05, label dropout 0.1 for CFG, EMA 0.999 exported; "
          "18 min on 2 CPU cores), then `--resume --export`. Test split, 1,000 samples per class at CFG 5.0 with the "
          "half-linear schedule (`python scripts/generation_table.py llamagen-gpt-tiny-fashion`): the "
          "Fashion-MNIST classifier assigns 91.89 % to their conditioning class (real test images: 91.70 %), "
          "Fréchet distance 0.546 in its features (the tokenizer's own reconstructions: 0.399; without CFG: "
          "75.65 %, 0.834; at the earlier default, CFG 2.0 constant: 91.37 %, 0.587).",
    limitations="Trained on 28 x 28 grey Fashion-MNIST only (on a 32 x 32 black border): it draws those 10 "
                "classes and nothing else, at the quality of its tiny tokenizer.",
))

# Token-Shuffle (no official code or weights exist: generators/ar/token_shuffle.py is a from-scratch module after the
# paper): the tiny Fashion-MNIST GPT's width and depth with 2 x 2 windows, 4 tokens per step.
TOKEN_SHUFFLE_FASHION = dict(TINY_FASHION, shuffle_window=2, shuffle_mlp_blocks=2, cfg_scale=3.0,
                             cfg_schedule="half-linear")
register_model(ModelSpec(
    name="token-shuffle-gpt-tiny-fashion", family="ar", kind="generator", modality="image",
    architecture="llamagen-gpt", config=TOKEN_SHUFFLE_FASHION, tokenizer="llamagen-vq-tiny-fashion",
    bundled="token-shuffle-gpt-tiny-fashion",
    sha256="fcc78c7ff262766dbfe48d395b8936580ad5ce9779c8f5973995f61ad5944366",
    splits={"train": "Fashion-MNIST train split (55,000 images, zoo.data.fashion_mnist), pre-tokenized once",
            "validation": "the 5,000 validation images: the CFG scale and schedule were chosen on them",
            "test": "the 10,000 test images: the reference of the generation table, reported once"},
    license="mit", paper="https://arxiv.org/abs/2504.17789",
    origin_url="https://ma-xu.github.io/token-shuffle",
    description="Token-Shuffle (method only: no official code or weights exist; a from-scratch module after the "
                "paper) on the tiny Fashion-MNIST GPT: 2 x 2 windows of llamagen-vq-tiny-fashion codes merged into "
                "one transformer position, 16 positions instead of 64, 4 tokens per step.",
    codebook_size=512, num_codebooks=1, tokens_per_item="64 / image (8 x 8), 4 per step", datasets=("fashion-mnist",),
    tags=("image-generator", "autoregressive", "class-conditional", "token-shuffle", "tiny"),
    notes="No official Token-Shuffle code or weights exist: generators/ar/token_shuffle.py follows the paper "
          "(arXiv 2504.17789; MLP widths, activations and the window order are not stated there: its docstring says "
          "what was chosen). Trained here exactly as llamagen-gpt-tiny-fashion (same width and depth, data, "
          "recipe and steps): `python scripts/train_ar.py --name token-shuffle-gpt-tiny-fashion --out "
          "runs/ts-fashion --steps 2500 --batch-size 64 --lr 1e-3 --warmup-steps 200 --threads 1` (11 min on one "
          "thread of a shared 2-core machine), then `--resume --export`. CFG chosen on the validation split (100 "
          "per class; constant at 1 / 2 / 3 / 4: accuracy 76.9 / 92.8 / 97.0 / 98.2 %, Fréchet distance 0.804 / "
          "0.489 / 0.645 / 0.660; half-linear at 2 / 3 / 4: 87.5 / 92.1 / 94.9 %, 0.515 / 0.474 / 0.419; "
          "half-linear 3.0 gives the accuracy closest to real validation images, 91.82 %). Test split, 1,000 "
          "samples per class (`python scripts/generation_table.py llamagen-gpt-tiny-fashion "
          "token-shuffle-gpt-tiny-fashion`): 92.87 % classified as their class (real test images 91.70 %), Fréchet "
          "distance 0.351 (the plain GPT at its chosen settings: 91.89 %, 0.546; without CFG: 77.27 %, 0.632). "
          "Speed against the plain GPT (`python benchmarks/bench_token_shuffle.py`): see the README.",
    limitations="A from-scratch reading of the paper at toy scale (16 positions of 2 x 2 windows of an 8 x 8 grid); "
                "the paper's 2.7 B text-to-image model and its results are not reproduced. Trained on 28 x 28 "
                "grey Fashion-MNIST only.",
))

# The tiny class-conditional GPT over wavtokenizer-tiny-75tps codes of spoken digits (zoo.data.spoken_digits: 1.0 s
# clips, 75 tokens).
TINY_DIGITS = dict(_ARCH, dim=128, n_layer=4, n_head=4, vocab_size=1024, block_size=75, grid_size=None,
                   num_classes=10, modality="audio", cfg_scale=2.0, cfg_schedule="constant", temperature=0.8,
                   label_names=("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))
register_model(ModelSpec(
    name="llamagen-gpt-tiny-spoken-digits", family="ar", kind="generator", modality="audio",
    architecture="llamagen-gpt", config=TINY_DIGITS, tokenizer="wavtokenizer-tiny-75tps",
    bundled="llamagen-gpt-tiny-spoken-digits",
    sha256="462de329cbda7bb499e062ab55ae3d4bb0998ed11ee8b378ae4aa67c5e5c92e3",
    splits={"train": "zoo.data.spoken_digits('train'): 25 espeak-ng voice names x 10 digits x 8 (speed, pitch) "
                     "draws, 2,000 one-second clips, pre-tokenized once",
            "validation": "zoo.data.spoken_digits('validation'): 3 other voices (240 clips): the CFG scale, "
                          "schedule and temperature were chosen on them (30 samples per digit, see notes)",
            "test": "zoo.data.spoken_digits('test'): 4 other voices (320 clips): the reference of the audio "
                    "generation table, reported once"},
    license="mit", paper="https://arxiv.org/abs/2406.06525", citation=CITATION,
    origin_url="https://github.com/FoundationVision/LlamaGen",
    description="A tiny LlamaGen GPT (4 layers, 4 heads, width 128) trained here on spoken digits: class-conditional "
                "(the words zero..nine, classifier-free guidance) over the 75 codes (1,024-code vocabulary) of 1.0 s "
                "of wavtokenizer-tiny-75tps audio at 24 kHz.",
    codebook_size=1024, num_codebooks=1, tokens_per_item="75 / clip (1.0 s)", sample_rate=24000,
    datasets=("espeak-ng spoken digits (tokzoo zoo.data.spoken_digits)",),
    tags=("audio-generator", "autoregressive", "class-conditional", "llamagen", "tiny"),
    notes="Trained here with `python scripts/train_ar.py --name llamagen-gpt-tiny-spoken-digits --dataset "
          "spoken-digits --out runs/ar-digits --steps 3000 --batch-size 64 --lr 1e-3 --warmup-steps 200 --threads 2` "
          "(the recipe of llamagen-gpt-tiny-fashion: train clips pre-tokenized once by wavtokenizer-tiny-75tps after "
          "its spoken-digit fine-tuning, label dropout 0.1, EMA 0.999 exported; 20 min on 2 CPU cores; final loss "
          "0.205 nats per token), then `--resume --export`. Sampling settings chosen on the validation voices (30 "
          "per digit, `scripts/generation_table.py --split validation --per-class 30`; real validation clips: "
          "99.58 %): CFG 1 / 2 / 3 / 4 constant at temperature 1.0: 85.3 / 93.0 / 92.7 / 87.0 %; half-linear 2 / 3 "
          "/ 4: 86.7 / 89.3 / 92.0 %; temperature 0.8 / 0.9 at CFG 2.0: 98.3 / 95.3 %, CFG 2.5: 98.0 / 97.0 %, CFG "
          "3.0: 96.7 / 94.7 %. Chosen: CFG 2.0 constant, temperature 0.8 (the accuracy nearest the real clips'; "
          "CFG 2.5 at 0.8 is one clip behind with a higher Fréchet distance). Test voices, 100 samples per digit "
          "(`python scripts/generation_table.py --modality audio`): the spoken-digit classifier assigns 96.5 % to "
          "their conditioning digit (real test clips: 100 %; the tokenizer's own reconstructions of them: 97.5 %); "
          "without CFG 90.0 %; continuing the first 0.2 s (15 tokens) of each test clip under its own digit: "
          "83.75 %. It memorises: 61.5 % of the samples are near-copies of the tokenizer's reconstructions of train "
          "clips (nearer one than 95 % of its reconstructions of test clips are; in the judge's features; 64.8 % "
          "without CFG), while 0.2 % are near a real train clip (decoded audio carries the codec's artefacts). The "
          "first version (over the tokenizer before its fine-tuning; CFG 3.0 half-linear, temperature 1.0) reached "
          "79.5 % against 81.9 % for that tokenizer's reconstructions.",
    limitations="Says the ten words zero..nine in espeak-ng-like voices through a tiny codec (buzzy), and mostly "
                "re-says its training clips: 61.5 % of its samples are near-copies of (the codec's reconstructions "
                "of) training clips. Trained on 2,000 one-second clips of synthetic speech.",
))
