"""The one generation benchmark: a Fashion-MNIST classifier trained here, and the protocol every image generator is
scored with (`protocol`): the share of samples classified as their conditioning class, and the Fréchet distance
between sample and real-test features of that classifier, beside reference rows."""

from zoo.registry import ModelSpec, register_model

from .classifier import FashionClassifier, FashionClassifierConfig

__all__ = ["FashionClassifier", "FashionClassifierConfig"]

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
