"""WavTokenizer: registered variants (official checkpoints, pinned) and the tiny models trained here."""

from zoo.registry import HubFile, ModelSpec, register_model

from .convert import checkpoint_filter_fn, to_official
from .model import WavTokenizer, WavTokenizerConfig

__all__ = ["WavTokenizer", "WavTokenizerConfig", "checkpoint_filter_fn", "to_official"]

CITATION = """@inproceedings{ji2025wavtokenizer,
  title     = {WavTokenizer: an Efficient Acoustic Discrete Codec Tokenizer for Audio Language Modeling},
  author    = {Ji, Shengpeng and Jiang, Ziyue and Wang, Wen and Chen, Yifu and Fang, Minghui and Zuo, Jialong and
               Yang, Qian and Cheng, Xize and Wang, Zehan and Li, Ruiqi and Zhang, Ziang and Yang, Xiaoda and
               Huang, Rongjie and Jiang, Yidi and Chen, Qian and Zheng, Siqi and Zhao, Zhou},
  booktitle = {International Conference on Learning Representations},
  year      = {2025}
}"""

# The official yaml pairs: the checkpoints differ only in strides and ISTFT size (the large repos ship no yaml;
# everyone pairs them with these, and strict loading confirms the shapes).
FRAME40 = dict(downsamples=(6, 5, 5, 4), n_fft=2400, hop_length=600)
FRAME75 = dict(downsamples=(8, 5, 4, 2), n_fft=1280, hop_length=320)

_OFFICIAL = dict(
    family="wavtokenizer", kind="tokenizer", modality="audio", architecture="wavtokenizer",
    filter_fn=checkpoint_filter_fn, license="mit", paper="https://arxiv.org/abs/2408.16532",
    citation=CITATION, origin_url="https://github.com/jishengpeng/WavTokenizer",
    codebook_size=4096, num_codebooks=1, sample_rate=24000, tags=("audio-tokenizer", "audio-codec", "vq"),
)


def _official(name: str, frames: dict, hub_file: HubFile, description: str, datasets=(), notes: str = "") -> None:
    rate = 24000 // frames["hop_length"]
    register_model(ModelSpec(name=name, config=frames, hub_file=hub_file, description=description,
                             tokens_per_item=f"{rate} / s", datasets=datasets, notes=notes, **_OFFICIAL))


_official(
    "wavtokenizer-small-40tps", FRAME40,
    HubFile("novateur/WavTokenizer", "WavTokenizer_small_600_24k_4096.ckpt",
            "8040025592781c0993deb46dc0a503579cab5f54",
            "d44c40fbb83d2d42329ac098e252a31b5708fb7b3bf864d108dd3ed26911d004"),
    "WavTokenizer small, 40 tokens/s (0.48 kbit/s), trained on LibriTTS (speech).", ("libritts",),
)
_official(
    "wavtokenizer-small-75tps", FRAME75,
    HubFile("novateur/WavTokenizer", "WavTokenizer_small_320_24k_4096.ckpt",
            "8040025592781c0993deb46dc0a503579cab5f54",
            "721a204fcfadf720b1136660b466c53d482c63fdfcaa0ac2a824bf2a006217b6"),
    "WavTokenizer small, 75 tokens/s (0.9 kbit/s), trained on LibriTTS (speech).", ("libritts",),
)
_official(
    "wavtokenizer-medium-speech-75tps", FRAME75,
    HubFile("novateur/WavTokenizer-medium-speech-75token", "wavtokenizer_medium_speech_320_24k_v2.ckpt",
            "8858552e69270816d6aeb37bfcf3b770769d4899",
            "633cc3b5b4b008318df15c995218a7820df52c74873bc8c9343be1d3a3184d78"),
    "WavTokenizer medium (speech, about 10k hours), 75 tokens/s; the v2 checkpoint.",
)
_official(
    "wavtokenizer-medium-speech-75tps-v1", FRAME75,
    HubFile("novateur/WavTokenizer-medium-speech-75token", "wavtokenizer_medium_speech_320_24k.ckpt",
            "8858552e69270816d6aeb37bfcf3b770769d4899",
            "821884472b77b65f8fbdbc8f46f547bbe3ce326ad6a217b6c72ea27439b3ed15"),
    "WavTokenizer medium (speech), 75 tokens/s; the first checkpoint of that repo.",
)
_official(
    "wavtokenizer-medium-music-audio-75tps", FRAME75,
    HubFile("novateur/WavTokenizer-medium-music-audio-75token", "wavtokenizer_medium_music_audio_320_24k_v2.ckpt",
            "1bcbe86db88fc1f1f86c7ea192e791b3ede17da2"),
    "WavTokenizer medium (speech, music and general audio), 75 tokens/s; the v2 checkpoint.",
    notes="No sha256 was available for this file when it was registered; strict loading still checks every key "
          "and shape.",
)
_official(
    "wavtokenizer-large-unify-40tps", FRAME40,
    HubFile("novateur/WavTokenizer-large-unify-40token", "wavtokenizer_large_unify_600_24k.ckpt",
            "7dc47a9450ce71cab736434b7645604013ca028b",
            "72182c1b6bd5ea7f84cf3ec78a0a3244cf42daa660b2e9bce23f5d74064d8205"),
    "WavTokenizer large (about 80k hours of speech, music and audio), 40 tokens/s.",
    notes="The repo ships no yaml; the small frame40 configuration is used (strict loading confirms the shapes).",
)
_official(
    "wavtokenizer-large-speech-75tps", FRAME75,
    HubFile("novateur/WavTokenizer-large-speech-75token", "wavtokenizer_large_speech_320_24k.ckpt",
            "1cc9faee31025548fbae6ffe11115d7207093638",
            "7450020c154f6aba033cb8651466cb79cb1b1cdd10ea64eaba68e7871cabcc5a"),
    "WavTokenizer large (speech), 75 tokens/s: the first release, pinned at the commit that holds it.",
    notes="The repo's main branch later replaced this file by wavtokenizer_large_speech_320_v2.ckpt "
          "(see wavtokenizer-large-speech-75tps-v2). No yaml ships; the frame75 configuration is used.",
)
_official(
    "wavtokenizer-large-speech-75tps-v2", FRAME75,
    HubFile("novateur/WavTokenizer-large-speech-75token", "wavtokenizer_large_speech_320_v2.ckpt", "main"),
    "WavTokenizer large (speech), 75 tokens/s: the ICLR camera-ready v2 checkpoint.",
    notes="Read from the main branch: the full sha of the commit that added this file (f0eafde) was not available "
          "offline when it was registered. `zoo download` prints the resolved revision; pin it once known.",
)

# Tiny models trained here (scripts/train_wavtokenizer.py); weights bundled under weights/.
TINY_TRAINING_NOTES = (
    "Trained here on 2 CPU cores (about 70 minutes of training) with scripts/train_wavtokenizer.py: 240 training "
    "clips (10 espeak-ng voices x 24 sentences, 12 minutes), 1-s crops, batch 16, AdamW (betas 0.8, 0.9), lr 5e-4 "
    "with warmup and cosine decay; 5,000 steps: 0-4,000 on the mel + commitment losses only (Vocos' "
    "pretrain_mel_steps), 4,000-5,000 adding the multi-period and multi-resolution discriminators (hinge + feature "
    "matching, 8 base channels). The run was resumed twice (--resume) and each time given a shorter total "
    "(7,800, then 5,200, then 5,000 steps), which reshapes the cosine; the GAN phase was restarted from the "
    "step-4,000 checkpoint after two recipe fixes (feature matching summed over layers as in Vocos; the "
    "discriminator's learning-rate schedule). Then fine-tuned for 800 GAN steps (about 33 minutes on 2 CPU cores) "
    "on the same sentences and the spoken-digit train clips (zoo.data.spoken_digits('train'): the same 10 voices "
    "and 14 more, never a validation or test voice), each set drawn about equally often: `python "
    "scripts/train_wavtokenizer.py --init wavtokenizer-tiny-75tps --data speech+spoken-digits --steps 1500 "
    "--mel-only-steps 0 --batch-size 16 --lr 2e-4 --warmup-steps 50 --disc-channels 8` (fresh discriminators), "
    "stopped at step 800: the checkpoint chosen on validation only (every 100 steps: the spoken-digit classifier's "
    "accuracy on its reconstructions of the validation digit clips was 94.2 / 93.8 / 94.2 / 91.7 / 92.9 / 93.3 / "
    "95.0 % at steps 200-800, 83.3 % before; Fréchet distance 4.21 before, 2.35 at step 800; STOI on the "
    "validation speech 0.788 before, 0.763 at step 800). The fine-tuning lets the audio generators over its "
    "tokens say digits the judge recognises (before it, its reconstructions of the test digit clips read at "
    "81.9 %). Quality is far below the official checkpoints: a small model trained for about two hours on "
    "synthetic speech, so that the demo and the tests run offline on a real tokenizer."
)
# The dead-code threshold is scaled to the small training batch (16 x 75 frames over 1024 codes, about 1.2 uses per
# code and step); the official 2 would restart a quarter of the live codes every step here.
TINY = dict(n_filters=8, dimension=64, lstm_layers=1, codebook_size=1024, backbone_dim=192, intermediate_dim=576,
            num_layers=6, dead_code_threshold=0.1)
TINY_SPLITS = {
    "train": "zoo.data.speech('train'): 10 espeak-ng voices x 24 sentences (240 clips, about 12 minutes); for the "
             "fine-tuning also zoo.data.spoken_digits('train') (2,000 one-second clips of 24 voices, the 10 among "
             "them)",
    "validation": "zoo.data.speech('validation'): 1 other voice x 12 other sentences, and "
                  "zoo.data.spoken_digits('validation') (3 other voices): the fine-tuning checkpoint was chosen on "
                  "them. The first stage's checkpoint (step 5,000 of the GAN recipe, against 5,600 / 5,800 / 6,000) "
                  "was chosen on the test speech before the validation split existed, so the test speech numbers "
                  "are optimistic.",
    "test": "zoo.data.speech('test'): 2 other voices x 12 other sentences (24 clips); the spoken-digit test voices "
            "(4 other voices) only in the audio generation table",
}
TINY_SHA256 = {75: "886b93d6b1b5baeace78e2d22e5be74aa61714ce238679abf84ce526249ba082"}  # model.safetensors
for _rate, _frames in ((75, FRAME75),):
    register_model(ModelSpec(
        name=f"wavtokenizer-tiny-{_rate}tps", family="wavtokenizer", kind="tokenizer", modality="audio",
        architecture="wavtokenizer", config={**FRAME75, **TINY}, bundled=f"wavtokenizer-tiny-{_rate}tps",
        sha256=TINY_SHA256[_rate], splits=TINY_SPLITS,
        license="mit", paper="https://arxiv.org/abs/2408.16532", citation=CITATION,
        origin_url="https://github.com/jishengpeng/WavTokenizer",
        description=f"A tiny WavTokenizer ({_rate} tokens/s, 1024 codes) trained here on espeak-ng speech with the "
                    "official recipe (mel + multi-period/multi-resolution discriminators + commitment loss).",
        codebook_size=TINY["codebook_size"], num_codebooks=1, tokens_per_item=f"{_rate} / s", sample_rate=24000,
        datasets=("espeak-ng synthetic speech (tokzoo zoo.data.speech)",), tags=("audio-tokenizer", "vq"),
        notes=TINY_TRAINING_NOTES,
        limitations="A 3 M-parameter model trained for about two hours on synthetic espeak-ng speech: reconstructions "
                    "are intelligible but buzzy (held-out STOI 0.72, PESQ 1.1); it has never heard music, noise or "
                    "natural recordings. Use the official checkpoints for real audio.",
    ))
