"""tokzoo: pretrained discrete image and audio tokenizers, their generators, and ViT token reduction.

    import zoo
    zoo.list_models("wavtokenizer*")
    tok = zoo.load("wavtokenizer-tiny-75tps")
    tokens = tok.encode(wav, sample_rate=16000)
    audio = tok.decode(tokens)
"""

from .api import AudioTokenizer, Generator, ImageTokenizer, Latents, Tokenizer, Tokens, ZooModel
from .checkpoints import CheckpointError
from .hub import WeightsUnavailableError, load
from .registry import (HubFile, ModelSpec, UnknownModelError, list_models, model_info, register_architecture,
                       register_model)
from .version import __version__

__all__ = [
    "AudioTokenizer", "CheckpointError", "Generator", "HubFile", "ImageTokenizer", "Latents", "ModelSpec",
    "Tokenizer", "Tokens", "ZooModel",
    "UnknownModelError", "WeightsUnavailableError", "__version__", "list_models", "load", "model_info",
    "register_architecture", "register_model",
]
