"""The generation benchmarks: a Fashion-MNIST classifier trained here, and the protocol every image generator is
scored with (`protocol`): the share of samples classified as their conditioning class, and the Fréchet distance
between sample and real-test features of that classifier, beside reference rows. For audio, the same with a
spoken-digit classifier (`audio_protocol`, on `zoo.data.spoken_digits`), plus nearest-neighbour memorisation
statistics against the train clips."""

from zoo.registry import ModelSpec, register_model

from .audio_classifier import DigitClassifier, DigitClassifierConfig
from .classifier import FashionClassifier, FashionClassifierConfig

__all__ = ["DigitClassifier", "DigitClassifierConfig", "FashionClassifier", "FashionClassifierConfig"]

CLASSIFIER_SPLITS = {
    "train": "zoo.data.fashion_mnist('train'): the official train file but its last 5,000 images (55,000)",
    "validation": "zoo.data.fashion_mnist('validation'): the last 5,000 images of the official train file",
    "test": "zoo.data.fashion_mnist('test'): the official test file (10,000)",
}
register_model(ModelSpec(
    name="fashion-mnist-classifier", family="quality", kind="classifier", modality="image", architecture="fashion-cnn",
    config=dict(channels=(16, 32, 64), features=128), bundled="fashion-mnist-classifier",
    origin_url="https://github.com/zalandoresearch/fashion-mnist", paper="https://arxiv.org/abs/1708.07747",
    sha256="083b84701fc998c14ec4be8969127e18b22dcaf1956e7c088afede006f9b6c54",
    license="mit", datasets=("fashion-mnist",), splits=CLASSIFIER_SPLITS, input_size=28,
    tags=("image-classification", "fashion-mnist", "evaluation"),
    description="The judge of the zoo's generation table: a small CNN trained here on Fashion-MNIST. Its accuracy "
                "on samples (on their conditioning class) and the Fréchet distance in its penultimate features "
                "score every image generator the same way (generators.quality.protocol).",
    notes="Trained here with `python scripts/train_fashion_classifier.py --out runs/fashion-classifier` (the "
          "defaults of generators/quality/train.py: 3,000 steps of batch 128, AdamW lr 2e-3, 200 warm-up steps then "
          "cosine, label smoothing 0.1, random shifts of up to 2 px and horizontal flips; 24 min on 2 shared CPU "
          "cores). Validation accuracy 91.82 % (`zoo eval fashion-mnist-classifier --split validation`), test "
          "91.70 %; no setting was chosen on either.",
))

DIGIT_CLASSIFIER_SPLITS = {
    "train": "zoo.data.spoken_digits('train'): 25 espeak-ng voice names (24 distinct voices) x 10 digits x 8 "
             "(speed, pitch) draws (2,000 one-second clips)",
    "validation": "zoo.data.spoken_digits('validation'): 3 other voices (240 clips)",
    "test": "zoo.data.spoken_digits('test'): 4 other voices (320 clips)",
}
register_model(ModelSpec(
    name="spoken-digit-classifier", family="quality", kind="classifier", modality="audio", architecture="digit-cnn",
    config=dict(channels=(16, 32, 64), features=64, f_max=8000.0, band_norm=True), bundled="spoken-digit-classifier",
    origin_url="https://github.com/espeak-ng/espeak-ng",
    sha256="f1def6d9e0e415714429927b299769bd857cb275660029c106bc45ce0744f43e",
    license="mit", datasets=("espeak-ng synthetic spoken digits (tokzoo zoo.data.spoken_digits)",),
    splits=DIGIT_CLASSIFIER_SPLITS, sample_rate=24000,
    tags=("audio-classification", "spoken-digits", "evaluation"),
    description="The judge of the zoo's audio generation protocol: a small log-mel CNN trained here on the words "
                "zero..nine spoken by espeak-ng. Its accuracy on samples (on their conditioning digit), the Fréchet "
                "distance in its penultimate features and nearest-neighbour distances to the train clips score every "
                "audio generator the same way (generators.quality.audio_protocol).",
    notes="Trained here with `python scripts/train_digit_classifier.py --out runs/digit-classifier-v2 --threads 1 "
          "--export weights/spoken-digit-classifier` (the defaults of generators/quality/audio_train.py: 1,500 steps "
          "of batch 32, AdamW lr 2e-3, 100 warm-up steps then cosine, label smoothing 0.1; 4 min 4 s on 1 CPU thread "
          "of a shared 2-core machine). Trained on real speech of the train voices only, with generic augmentations "
          "so that it reads decoded audio through a codec's artefacts without training on any tokenizer's outputs: "
          "speed perturbation 0.9..1.1, time shifts of -0.04..+0.12 s, small-room reverb, STFT phase noise (a "
          "vocoder's smearing), an envelope-following harmonic buzz, random low-pass at 3..10 kHz, spectral tilts, "
          "white noise and gains, then SpecAugment (two band and two frame masks); the front end stops at 8 kHz and "
          "removes each mel band's mean. Chosen on validation only, among 4 runs (reconstructions of the validation "
          "clips read at 82.1 % with the waveform augmentations and SpecAugment, 80.8 % with SpecAugment, noise up "
          "to -20 dB and the new front end, 80.8 % with both, 83.3 % with both and speed perturbation; the earlier "
          "judge, with shifts, tilts, noise and gains only: 73.75 %). Validation accuracy 99.58 % (`zoo eval "
          "spoken-digit-classifier --split validation`), test 100.00 %; no setting was chosen on test. On "
          "wavtokenizer-tiny-75tps reconstructions it read 83.33 % (validation) and 81.88 % (test), Fréchet "
          "distance 5.34 to the real test clips (real train clips: 0.24), before that tokenizer's spoken-digit "
          "fine-tuning; 95.0 % and 97.5 %, Fréchet distance 2.28, after it. The rest was the tiny codec's artefacts, "
          "not lost content (the earlier network trained on reconstructions of the train clips read reconstructed "
          "validation clips at 99.2 %).",
))
