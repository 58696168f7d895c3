"""MAR's KL-16 VAE (``kl16.ckpt``): the continuous image autoencoder that MAR (LTH14/mar) generates in, that
TokenBridge (YuqingWang1029/TokenBridge) quantizes post-training, and that xAR uses unchanged.

Implementation decision: **diffusers' ``AutoencoderKL`` holds this architecture exactly**, so it is used as is and
only the key names are converted (in `checkpoint_filter_fn`, the way diffusers converts LDM checkpoints):

* The official ``models/vae.py`` is LDM's ``AutoencoderKL``: ``Encoder``/``Decoder`` with ``ch`` x ``ch_mult`` widths,
  ``num_res_blocks`` ResNet blocks per level (``num_res_blocks + 1`` in the decoder), GroupNorm(32, eps 1e-6) + swish,
  single-head attention blocks with 1x1-conv q / k / v / proj_out and a residual, a mid block (ResNet, attention,
  ResNet) on both sides, ``quant_conv`` 2z -> 2 x embed_dim and ``post_quant_conv`` z -> z, ``double_z``, the
  posterior's log-variance clamped to [-30, 20].
* diffusers builds the same graph: ``DownEncoderBlock2D`` / ``AttnDownEncoderBlock2D`` per level (the encoder's
  attention sits after every ResNet block of a level whose resolution is in ``attn_resolutions``: level 4 at
  resolution 256, exactly ``AttnDownEncoderBlock2D``'s order), ``downsample_padding=0``, which is LDM's asymmetric
  (0, 1, 0, 1) zero pad before a stride-2 3x3 conv; ``attention_head_dim`` = the channel count (one head, scale
  ``C ** -0.5``); ``UpDecoderBlock2D`` with nearest x2 upsampling and no attention (the official decoder has none);
  ``UNetMidBlock2D`` with one attention; GroupNorm 32 / eps 1e-6 everywhere; ``DiagonalGaussianDistribution`` with the
  same clamp. The attention projections become ``nn.Linear`` (a 1x1 conv with its two trailing unit axes dropped).
* What diffusers cannot express and this module therefore does not offer: ``use_variational=False`` (MAR's KL-16 is
  variational) and decoder attention (the official class never builds it). Neither is used by any released file.

Image range. The public API takes and returns images in [0, 1] like every zoo image model (`zoo.api`, FlexTok's VAE,
LlamaGen's VQ): `encode` maps them to [-1, 1] (``2 x - 1``) as the official data pipelines do, and `decode` maps the
decoder output back (``(y + 1) / 2``, clamped). The official semantics are kept underneath and exposed for
reimplementations: `encode_moments` takes [-1, 1] images, `decode_raw` returns the unclamped decoder output.

Latent scale. MAR, TokenBridge and xAR multiply the posterior latents by 0.2325 (``scaling_factor``; it brings their
std to about 1) and divide by it before decoding; `encode` returns scaled latents and `decode` / `decode_raw` take
them. The official training code (MAR ``engine_mar.py``, TokenBridge ``engine_tokenbridge.py``, ``reconstruction.py``)
draws ``posterior.sample()``; `encode` returns the posterior mode by default (deterministic) and draws on request
(``sample=True``), each item from its own generator.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from zoo import io as zio
from zoo.api import ZooModel, item_generators, randn_per_item
from zoo.registry import HubFile, ModelSpec, register_architecture, register_model

NORM_GROUPS = 32  # hard-coded in the official Normalize()
RGB = 3


@dataclass
class MARVAEConfig:
    """The official ``AutoencoderKL(embed_dim, ch_mult)`` with its ``Encoder`` / ``Decoder`` defaults.

    Attributes:
        embed_dim: latent channels (``z_channels`` = ``embed_dim`` in the official class).
        ch, ch_mult, num_res_blocks: widths ``ch * ch_mult[i]`` per level, ResNet blocks per encoder level.
        attn_resolutions: encoder levels whose resolution (``resolution / 2**level``) is listed get attention after
            each ResNet block; the decoder has none (as the official ``AutoencoderKL`` builds it).
        resolution: the official constructor's nominal image size: it places the attention levels, and is the
            default input size here. Any size divisible by ``2**(len(ch_mult) - 1)`` encodes.
        scaling_factor: what MAR / TokenBridge / xAR multiply the posterior latents by; `encode` applies it and
            `decode` undoes it.
    """

    architecture: str = "mar-kl16-vae"
    embed_dim: int = 16
    ch: int = 128
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    resolution: int = 256
    scaling_factor: float = 0.2325

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"ch_mult: expected positive multipliers, got {self.ch_mult}")
        if self.ch % NORM_GROUPS or self.embed_dim < 1 or self.num_res_blocks < 1:
            raise ValueError(f"ch must be a multiple of {NORM_GROUPS} and embed_dim, num_res_blocks positive; got "
                             f"ch={self.ch}, embed_dim={self.embed_dim}, num_res_blocks={self.num_res_blocks}")
        if not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0):
            raise ValueError(f"scaling_factor must be a finite number > 0 (it maps the posterior to unit variance), "
                             f"got {self.scaling_factor}")

    @property
    def attention_levels(self) -> tuple[int, ...]:
        """Encoder levels with attention blocks (official rule: ``resolution // 2**level in attn_resolutions``)."""
        return tuple(i for i in range(len(self.ch_mult)) if self.resolution // 2 ** i in self.attn_resolutions)


def build_autoencoder(c: MARVAEConfig):
    """The diffusers ``AutoencoderKL`` of `c` (diffusers is imported here, when a model is built: it is slow to
    import and `zoo list` does not need it)."""
    from diffusers import AutoencoderKL

    n = len(c.ch_mult)
    down = tuple("AttnDownEncoderBlock2D" if i in c.attention_levels else "DownEncoderBlock2D" for i in range(n))
    return AutoencoderKL(
        in_channels=RGB, out_channels=RGB, down_block_types=down, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(c.ch * m for m in c.ch_mult), layers_per_block=c.num_res_blocks, act_fn="silu",
        latent_channels=c.embed_dim, norm_num_groups=NORM_GROUPS, sample_size=c.resolution,
        scaling_factor=c.scaling_factor, force_upcast=False, use_quant_conv=True, use_post_quant_conv=True,
        mid_block_add_attention=True,
    )


@register_architecture("mar-kl16-vae")
class MARVAE(ZooModel):
    """Images ``(B, 3, H, W)`` in [0, 1] <-> scaled latents ``(B, embed_dim, H/f, W/f)``, ``f = 2**(levels - 1)``
    (16 for ``kl16.ckpt``)."""

    config_class = MARVAEConfig
    kind = "autoencoder"
    modality = "image"

    def __init__(self, config: MARVAEConfig):
        super().__init__(config)
        self.downsample = 2 ** (len(config.ch_mult) - 1)
        self.vae = build_autoencoder(config)

    # --- input checks ------------------------------------------------------------------------------------------
    def _check_images(self, x, what: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{what}: expected float images, got dtype {x.dtype}")
        if x.ndim != 4 or x.shape[1] != RGB:
            raise ValueError(f"{what}: expected shape (B, 3, H, W), got {tuple(x.shape)}")
        f = self.downsample
        if x.shape[-2] % f or x.shape[-1] % f or 0 in x.shape:
            raise ValueError(f"{what}: height and width must be positive multiples of {f}, got "
                             f"{tuple(x.shape[-2:])}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{what}: contains NaN or infinite values")
        return x

    def _check_latents(self, z) -> torch.Tensor:
        c = self.config.embed_dim
        if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.ndim != 4 or z.shape[1] != c \
                or 0 in z.shape:
            raise ValueError(f"latents: expected a float (B, {c}, h, w) tensor, got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}"
                             f"{'' if not isinstance(z, torch.Tensor) else f' of dtype {z.dtype}'}")
        if not torch.isfinite(z).all():
            raise ValueError("latents: contain NaN or infinite values")
        return z

    # --- official semantics ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, 3, H, W)`` in **[-1, 1]** (what the official code feeds) -> the posterior's ``(mean,
        logvar)``, each ``(B, embed_dim, H/f, W/f)``, unscaled; logvar clamped to [-30, 20] as officially."""
        x = self._check_images(x, "images")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1 - 1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"images: encode_moments takes values in [-1, 1], got range [{lo:.3g}, {hi:.3g}] "
                             "(use encode() for images in [0, 1])")
        vae = self.vae
        dist = vae.encode(x.to(vae.device, vae.dtype)).latent_dist  # chunk(2, dim=1), logvar clamped [-30, 20]
        return dist.mean.float(), dist.logvar.float()

    @torch.no_grad()
    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> the official ``vae.decode(latents / scaling_factor)``: images nominally in [-1, 1],
        unclamped."""
        z = self._check_latents(latents)
        vae = self.vae
        z = z.to(vae.device, vae.dtype) / self.config.scaling_factor
        return vae.decode(z).sample.float()

    # --- the zoo contract --------------------------------------------------------------------------------------
    def example_input(self, batch_size: int = 1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        size = self.config.resolution
        return torch.rand(batch_size, RGB, size, size, generator=g), {}

    @torch.no_grad()
    def encode(self, x, *, resize: str = "center_crop", sample: bool = False, seed: int | Sequence[int] | None = None,
               generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Images in [0, 1] (tensor, PIL, path or a list; ``resize="center_crop"`` brings them to ``resolution``,
        ``"none"`` keeps their size) -> scaled latents ``(B, embed_dim, H/f, W/f)``.

        Args:
            sample: False: ``mean * scaling_factor`` (the posterior mode, deterministic). True: ``(mean + std * eps)
                * scaling_factor``, what the official training and ``reconstruction.py`` use; item ``i`` draws eps
                from its own generator (`zoo.api.item_generators`: ``seed`` = an int or one per item, or
                ``generator`` = one per item; a single generator is shared in batch order, which reproduces the
                official ``torch.randn(mean.shape)`` after ``torch.manual_seed``).
        """
        if not sample and (seed is not None or generator is not None):
            raise ValueError("seed / generator apply to sample=True only")
        images = self._check_images(zio.image_batch(x, self.config.resolution, resize), "images")
        mean, logvar = self.encode_moments(images * 2 - 1)
        if sample:
            gens = item_generators(len(mean), seed=seed, generator=generator, device=mean.device)
            eps = randn_per_item(mean.shape[1:], gens, device=mean.device, dtype=mean.dtype)
            mean = mean + torch.exp(0.5 * logvar) * eps
        return mean * self.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, embed_dim, h, w)`` -> images ``(B, 3, f h, f w)`` in [0, 1]."""
        return ((self.decode_raw(latents) + 1) / 2).clamp(0, 1)

    def reconstruct(self, x, **encode_kwargs) -> torch.Tensor:
        """`decode` of `encode`: images in [0, 1] -> reconstructions ``(B, 3, H, W)`` in [0, 1]."""
        return self.decode(self.encode(x, **encode_kwargs))

    def capabilities(self) -> dict[str, Any]:
        c = self.config
        return {**super().capabilities(), "latent_channels": c.embed_dim, "downsample": self.downsample,
                "scaling_factor": c.scaling_factor}

    def card_facts(self) -> dict[str, Any]:
        c = self.config
        return {**super().card_facts(), "latent": f"{c.embed_dim} channels, f{self.downsample}",
                "latent scale": f"x {c.scaling_factor:g} (applied by encode, undone by decode)"}

    def card_usage(self) -> str:
        f = self.downsample
        return (f"latents = model.encode(img)                # img in [0, 1] -> (B, {self.config.embed_dim}, H/{f}, "
                f"W/{f}), posterior mode x {self.config.scaling_factor:g}\n"
                "noisy = model.encode(img, sample=True, seed=0)  # a posterior draw, as in official training\n"
                "img = model.decode(latents)                 # [0, 1]")


# ----------------------------------------------------------------------------------------------------------------
# official checkpoints

WRAPPERS = ("model", "state_dict")  # kl16.ckpt holds {"model": AutoencoderKL.state_dict()}
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_RESNET = {"conv_shortcut": "nin_shortcut"}  # norm1 / conv1 / norm2 / conv2 keep their names


def unwrap(obj: dict) -> dict[str, torch.Tensor]:
    """The weights of an official checkpoint: ``model`` (kl16.ckpt), else ``state_dict``, else the dict itself."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict of tensors (or a checkpoint holding one), got {type(obj).__name__}")
    for key in WRAPPERS:
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _sub(name: str, table: dict[str, str]) -> str:
    """``module.param`` with the module renamed by `table` (e.g. ``to_out.0.weight`` -> ``proj_out.weight``)."""
    module, _, param = name.rpartition(".")
    if module not in table:
        raise KeyError(name)
    return f"{table[module]}.{param}"


def official_key(key: str, num_levels: int) -> str:
    """This module's key (``vae.*``, diffusers names) -> the official LDM / MAR key."""
    if not key.startswith("vae."):
        raise KeyError(key)
    k = key[len("vae."):]
    if k.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return k
    part, _, rest = k.partition(".")

    def resnet(name: str) -> str:
        return name if name.rpartition(".")[0] in ("norm1", "conv1", "norm2", "conv2") else _sub(name, _RESNET)

    if re.fullmatch(r"(conv_in|conv_out)\.\w+", rest):
        return k
    if m := re.fullmatch(r"conv_norm_out\.(\w+)", rest):
        return f"{part}.norm_out.{m[1]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", rest):
        return f"{part}.mid.block_{int(m[1]) + 1}.{resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{part}.mid.attn_1.{_sub(m[1], _ATTN)}"
    if part == "encoder":
        if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            return f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", rest):
            return f"encoder.down.{m[1]}.attn.{m[2]}.{_sub(m[3], _ATTN)}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", rest):
            return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if part == "decoder":  # diffusers lists the up blocks from the lowest resolution, LDM from the highest
        if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            return f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", rest):
            return f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    raise KeyError(key)


def _is_attention_projection(key: str) -> bool:
    return bool(re.search(r"\.attentions\.\d+\.to_(q|k|v|out\.0)\.weight$", key))


def config_from_official(state_dict: dict) -> dict[str, Any]:
    """Config fields read off an official state dict's shapes (``kl16.ckpt`` or a reduced fixture): embed_dim, ch,
    ch_mult, num_res_blocks and the attention levels (given as resolutions at ``resolution=256``)."""
    sd = unwrap(state_dict)
    try:
        ch = sd["encoder.conv_in.weight"].shape[0]
        embed_dim = sd["post_quant_conv.weight"].shape[0]
        levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
        ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
        num_res_blocks = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
    except (KeyError, IndexError) as err:
        raise ValueError(f"not an official MAR / LDM AutoencoderKL state dict (no {err})") from None
    if levels != list(range(len(levels))):
        raise ValueError(f"encoder levels are not 0..n-1: {levels}")
    attn = sorted({int(k.split(".")[2]) for k in sd if re.match(r"encoder\.down\.\d+\.attn\.", k)})
    resolution = MARVAEConfig.resolution
    return dict(embed_dim=embed_dim, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                attn_resolutions=tuple(resolution // 2 ** i for i in attn), resolution=resolution)


def checkpoint_filter_fn(state_dict: dict, model: MARVAE | None = None) -> dict[str, torch.Tensor]:
    """Official ``AutoencoderKL`` keys (``kl16.ckpt["model"]``, or the bare state dict) -> this module's keys; the
    attention q / k / v / proj_out 1x1-conv weights ``(C, C, 1, 1)`` become linear weights ``(C, C)``.

    Every checkpoint key must map to a key of `model` (built from `config_from_official` when not given) with the
    matching shape, and every model key must be present; all problems are reported together.
    """
    weights = unwrap(state_dict)
    if model is None:
        with torch.device("meta"):
            model = MARVAE(MARVAEConfig(**config_from_official(weights)))
    expected = model.state_dict()
    n = len(model.config.ch_mult)
    to_zoo = {official_key(key, n): key for key in expected}
    out, problems = {}, []
    for key, value in weights.items():
        target = to_zoo.get(key)
        if target is None:
            problems.append(f"unexpected {key}")
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key}: expected a tensor, got {type(value).__name__}")
            continue
        want = tuple(expected[target].shape)
        if _is_attention_projection(target) and value.ndim == 4 and tuple(value.shape[2:]) == (1, 1):
            value = value[:, :, 0, 0]  # 1x1 conv -> linear
        if tuple(value.shape) != want:
            problems.append(f"{key}: shape {tuple(value.shape)}, expected {want}")
            continue
        out[target] = value
    problems += [f"missing {to_official}" for to_official, target in to_zoo.items() if target not in out
                 and not any(p.startswith(f"{to_official}:") for p in problems)]
    if problems:
        raise ValueError("not a MAR KL VAE checkpoint of this config: " + "; ".join(problems[:8])
                         + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""))
    return out


def to_official(state_dict: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """This module's state dict -> official key names and shapes (the inverse of `checkpoint_filter_fn`)."""
    return {official_key(k, num_levels): (v[:, :, None, None] if _is_attention_projection(k) else v)
            for k, v in state_dict.items()}


# ----------------------------------------------------------------------------------------------------------------
# the released file

CITATION = """@article{li2024autoregressive,
  title   = {Autoregressive Image Generation without Vector Quantization},
  author  = {Li, Tianhong and Tian, Yonglong and Li, He and Deng, Mingyang and He, Kaiming},
  journal = {arXiv preprint arXiv:2406.11838},
  year    = {2024}
}"""

# MAR distributes kl16.ckpt from Dropbox (util/download.py in LTH14/mar and in TokenBridge); TokenBridge's README
# points to the Hub repo Epiphqny/TokenBridge (folder "pretrained_models"), whose file list and commits were not
# available here. The Hub copy pinned below is jadechoghari/mar ("add initial files", 72fd365); its blob page at this
# commit gives the LFS sha256. The file was later removed from that repo's main branch, so only a commit pin works.
KL16_REPO = "jadechoghari/mar"
KL16_REVISION = "7ec067d48f28d22e6d8eb53d6aa4ef3c6d9d34b4"
KL16_SHA256 = "34ce001bcfffb7af67ec8af1e683a30d7bd45760855ddc7deedc1330f2cfd38f"

register_model(ModelSpec(
    name="mar-kl16-vae", family="tokenbridge", kind="autoencoder", modality="image", architecture="mar-kl16-vae",
    config={}, hub_file=HubFile(KL16_REPO, "kl16.ckpt", KL16_REVISION, KL16_SHA256),
    filter_fn=checkpoint_filter_fn, license="mit", paper="https://arxiv.org/abs/2406.11838", citation=CITATION,
    origin_url="https://github.com/LTH14/mar", input_size=256, datasets=("imagenet-1k",),
    tags=("image-autoencoder", "vae", "kl", "f16", "mar", "tokenbridge", "xar"),
    description="MAR's KL-16 VAE (66.5 M parameters, ImageNet): LDM's AutoencoderKL with 16 latent channels at "
                "stride 16 (a 16 x 16 x 16 latent per 256 x 256 image), encoder attention at 16 x 16. The continuous "
                "tokenizer of MAR and xAR, and the VAE that TokenBridge quantizes post-training. Latents are scaled "
                "by 0.2325 as in those codebases.",
    notes=(f"Weights: kl16.ckpt (a tensors-only pickle, {{'model': state_dict}}, 312 keys) from the Hub repo "
           f"{KL16_REPO}, a community mirror of the file MAR distributes from Dropbox, pinned to commit "
           f"{KL16_REVISION} (the file is gone from that repo's main branch) and checked against the sha256 of its "
           "LFS page; that it is byte-identical to the Dropbox original was not verified here. TokenBridge's own Hub "
           "repo (Epiphqny/TokenBridge) also ships the VAE according to its README, but its file list and revision "
           "were not available, so it is not used. Converted at load time to diffusers' AutoencoderKL layout. "
           "`encode` returns the posterior mode x 0.2325 (the official training code draws a posterior sample: "
           "`encode(..., sample=True, seed=...)`)."),
    limitations="Trained on ImageNet at 256 x 256 only; other sizes encode (multiples of 16) but were not "
                "evaluated. Reconstruction quality was not measured here.",
))
