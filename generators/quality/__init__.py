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
    config={}, license="mit", datasets=("fashion-mnist",), splits=CLASSIFIER_SPLITS, input_size=28,
    tags=("image-classification", "fashion-mnist", "evaluation"),
    description="The judge of the zoo's generation table: a small CNN trained here on Fashion-MNIST. Its accuracy "
                "on samples (on their conditioning class) and the Fréchet distance in its penultimate features "
                "score every image generator the same way (generators.quality.protocol).",
))
