"""Named presets: official timm DeiT weights with a token-reduction method applied at load (`zoo.load`, `zoo list`).

Each entry builds an `AcceleratedViT` ("vit-accel"): the timm architecture, the method and its arguments; the weights
are the untouched timm checkpoint from the Hub, mapped by `checkpoint_filter_fn`. No retraining: ToMe and GTP are
applied off the shelf, as in their papers' training-free rows.
"""

from __future__ import annotations

import torch

from zoo.registry import HubFile, ModelSpec, register_model

__all__ = ["checkpoint_filter_fn"]

DEIT_CITATION = """@inproceedings{touvron2021deit,
  title     = {Training data-efficient image transformers & distillation through attention},
  author    = {Touvron, Hugo and Cord, Matthieu and Douze, Matthijs and Massa, Francisco and Sablayrolles, Alexandre
               and J{\\'e}gou, Herv{\\'e}},
  booktitle = {International Conference on Machine Learning},
  pages     = {10347--10357},
  year      = {2021}
}"""
DEIT3_CITATION = """@inproceedings{touvron2022deit3,
  title     = {{DeiT III}: Revenge of the {ViT}},
  author    = {Touvron, Hugo and Cord, Matthieu and J{\\'e}gou, Herv{\\'e}},
  booktitle = {European Conference on Computer Vision},
  year      = {2022}
}"""
TOME_CITATION = """@inproceedings{bolya2023tome,
  title     = {Token Merging: Your {ViT} But Faster},
  author    = {Bolya, Daniel and Fu, Cheng-Yang and Dai, Xiaoliang and Zhang, Peizhao and Feichtenhofer, Christoph
               and Hoffman, Judy},
  booktitle = {International Conference on Learning Representations},
  year      = {2023}
}"""
GTP_CITATION = """@inproceedings{xu2024gtp,
  title     = {{GTP-ViT}: Efficient Vision Transformers via Graph-based Token Propagation},
  author    = {Xu, Xuwei and Wang, Sen and Chen, Yudong and Zheng, Yanping and Wei, Zhewei and Liu, Jiajun},
  booktitle = {IEEE/CVF Winter Conference on Applications of Computer Vision},
  pages     = {86--95},
  year      = {2024}
}"""

UNPINNED = ("The Hub revision is 'main': a commit sha of this timm repository was not available when the entry was "
            "registered (pin it once known); strict loading still checks every key and shape.")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """timm's layout (the Hub ``model.safetensors``) -> the wrapper's (``vit.`` prefix); the keys must match exactly."""
    expected = {key.removeprefix("vit.") for key in model.state_dict()}
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise KeyError(f"not a {model.config.timm_model} checkpoint in timm layout: {len(missing)} missing keys "
                       f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}")
    return {f"vit.{key}": value for key, value in state_dict.items()}


# (backbone name, timm architecture, Hub repo, citation, description)
BACKBONES = {
    "deit-small": ("deit_small_patch16_224", "timm/deit_small_patch16_224.fb_in1k", DEIT_CITATION,
                   "DeiT-S/16 at 224 px (ImageNet-1k, 79.9 % top-1, 4.6 GMACs), 197 tokens"),
    "deit3-small": ("deit3_small_patch16_224", "timm/deit3_small_patch16_224.fb_in1k", DEIT3_CITATION,
                    "DeiT-III-S/16 at 224 px (ImageNet-1k, LayerScale, 81.4 % top-1), 197 tokens"),
}
METHODS = {
    "tome": ("https://arxiv.org/abs/2210.09461", TOME_CITATION, "https://github.com/facebookresearch/ToMe"),
    "gtp": ("https://arxiv.org/abs/2311.03035", GTP_CITATION, "https://github.com/Ackesnal/GTP-ViT"),
}


def _register(name: str, backbone: str, method: str | None = None, tokens_out: int = 197, description: str = "",
              notes: str = "", **method_kwargs) -> None:
    timm_model, repo, backbone_citation, backbone_description = BACKBONES[backbone]
    paper, citation, origin = METHODS[method] if method else ("https://arxiv.org/abs/2012.12877", "", None)
    register_model(ModelSpec(
        name=name, family="vit_accel", kind="accelerator", modality="image", architecture="vit-accel",
        config=dict(timm_model=timm_model, timm_kwargs={}, method=method, method_kwargs=method_kwargs),
        hub_file=HubFile(repo, "model.safetensors", "main"), filter_fn=checkpoint_filter_fn,
        license="apache-2.0", paper=paper, citation="\n\n".join(c for c in (citation, backbone_citation) if c),
        origin_url=origin or f"https://huggingface.co/{repo}",
        description=f"{backbone_description}{description}.", input_size=224,
        tokens_per_item=f"197 -> {tokens_out} / image" if method else "197 / image", datasets=("imagenet-1k",),
        tags=("image-classification", "token-reduction", *((method,) if method else ())),
        notes=" ".join(n for n in (notes, UNPINNED) if n),
    ))


_register("deit-small", "deit-small", description=", unpatched (the baseline of the reduced presets)")
_register("deit-small-tome-r8", "deit-small", "tome", 101, r=8,
          description="; ToMe merges 8 tokens per block (3.42 GMACs), proportional attention")
_register("deit-small-tome-r13", "deit-small", "tome", 41, r=13,
          description="; ToMe merges 13 tokens per block (2.71 GMACs, the paper's DeiT-S setting)",
          notes="The paper's 79.4 % at r=13 is for a DeiT-S trained with ToMe; off the shelf it reports 78.8 %.")
_register("deit-small-gtp-p8", "deit-small", "gtp", 101, num_prop=8,
          description="; GTP propagates 8 tokens per block (3.42 GMACs): MixedAttnMax, Mixed graph, K=8, α=0.1",
          notes="Hyperparameters: the paper's method choices with main.py's defaults (θ=1, α=0.1, K=8); the README "
                "publishes tuned θ/α for DeiT-B only (θ=0.6, α=0.1 at P=8).")
_register("deit3-small", "deit3-small", description=", unpatched")
_register("deit3-small-tome-r8", "deit3-small", "tome", 101, r=8,
          description="; ToMe merges 8 tokens per block, LayerScale kept (the official ToMe patch drops it)")
