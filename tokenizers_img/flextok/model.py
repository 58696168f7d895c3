"""FlexTok (Bachmann et al., 2025): 1-256 nested tokens per image, decoded by a rectified-flow transformer.

Paper: https://arxiv.org/abs/2502.13967 - official code: https://github.com/apple/ml-flextok

Pipeline: image in [-1, 1] -> VAE (diffusers ``AutoencoderKL``, posterior mode, times the scaling factor) -> encoder
(2x2 latent patches + 256 learned registers, prefix-LM attention) -> FSQ (levels 8,8,8,5,5,5 = 64,000 codes) ->
token ids. Decoding: ids -> FSQ values -> rectified-flow decoder (registers beyond `keep_k` replaced by a mask token)
sampled with Euler steps, classifier-free guidance and APG -> VAE decoder.

Differences from the official implementation (none changes the numbers beyond float rounding):
* a real batch dimension instead of one packed sequence per batch, fixed boolean masks, plain
  `scaled_dot_product_attention` (runs on CPU, CUDA and MPS; no flex_attention / torch.compile);
* per-image `keep_k` and the CFG null condition are per-row tensor selections, so mixed lengths decode in one batch;
* the conditional and the unconditional CFG passes run as one batch;
* the sampler computes the condition (register tokens, position table) once, not at every step, and the last
  transformer block of each trunk updates only the tokens its head reads (keys and values still cover all tokens);
* no data-dict plumbing, no deep copies per sampling step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from zoo import io as zio
from zoo.api import ImageTokenizer, Tokens, check_codes, item_generators, randn_per_item
from zoo.registry import register_architecture

from .modules import APG, FlexTokDecoder, FlexTokEncoder, classifier_free_guidance


@dataclass
class FlexTokConfig:
    """Hyperparameters; the official Hydra names are given where they differ.

    Attributes:
        image_size: default decode size in pixels (tokens made by `encode` remember their own size).
        vae_latent_channels, vae_block_out_channels, vae_layers_per_block, vae_norm_num_groups, vae_act_fn,
            vae_mid_block_add_attention: the diffusers ``AutoencoderKL`` (official ``VAE_BASE_CFG``).
        vae_scaling_factor: latents are ``mode * vae_scaling_factor`` (None = unknown: encode/decode refuse to run).
        sample_posterior: False (default) = deterministic tokens from the posterior mode; True = draw from the
            posterior as the official default does.
        patch_size: latent patch size (``patch_sizes``), the same in the encoder and decoder.
        posemb_grid: size of the sin-cos tables in patches (``max_sizes``), the largest patch grid accepted.
        encoder_dim, encoder_depth, encoder_head_dim, decoder_dim, decoder_depth, decoder_head_dim, mlp_ratio:
            the two transformers (SwiGLU, QK-norm, no biases).
        num_registers: register tokens = tokens per image (``n_max``).
        fsq_levels: FSQ levels; the codebook size is their product.
        adaLN_expansion: 2 = separate modulation for patches and registers (``per_subseq_embs``), 1 = shared.
        max_timestep: the time embedder's ``max_timestep`` (None = unknown: decoding refuses to run).
        time_frequency_size: sinusoid size of the time embedder (``frequency_embedding_size``).
        null_cond: CFG null condition, "learned" (``LearnedNullCond``) or "zero" (``ZeroNullCond``).
        head_adaLN: whether the decoder head (``dec_to_patches``) has adaLN.
        default_steps, default_guidance_scale, default_apg: `decode` defaults (official pipeline: 25 steps; README:
            guidance 7.5 with APG).
    """

    architecture: str = "flextok"
    image_size: int = 256
    vae_latent_channels: int = 16
    vae_block_out_channels: Sequence[int] = (128, 256, 512, 512)
    vae_layers_per_block: int = 2
    vae_norm_num_groups: int = 32
    vae_act_fn: str = "silu"
    vae_mid_block_add_attention: bool = True
    vae_scaling_factor: float | None = None
    sample_posterior: bool = False
    patch_size: int = 2
    posemb_grid: Sequence[int] = (16, 16)
    encoder_dim: int = 1152
    encoder_depth: int = 18
    encoder_head_dim: int = 64
    decoder_dim: int = 1152
    decoder_depth: int = 18
    decoder_head_dim: int = 64
    mlp_ratio: float = 4.0
    num_registers: int = 256
    fsq_levels: Sequence[int] = (8, 8, 8, 5, 5, 5)
    adaLN_expansion: int = 2
    max_timestep: float | None = None
    time_frequency_size: int = 256
    null_cond: str = "learned"
    head_adaLN: bool = True
    default_steps: int = 25
    default_guidance_scale: float = 7.5
    default_apg: bool = True

    # settings that do not change what the codes mean (left out of `config_hash`)
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "image_size", "sample_posterior", "default_steps", "default_guidance_scale", "default_apg"})

    def __post_init__(self):
        self.vae_block_out_channels = tuple(int(c) for c in self.vae_block_out_channels)
        self.posemb_grid = tuple(int(g) for g in self.posemb_grid)
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        if len(self.posemb_grid) != 2:
            raise ValueError(f"posemb_grid must be (rows, cols), got {self.posemb_grid}")
        if self.null_cond not in ("learned", "zero"):
            raise ValueError(f"null_cond must be 'learned' or 'zero', got {self.null_cond!r}")
        if self.adaLN_expansion not in (1, 2):
            raise ValueError(f"adaLN_expansion must be 1 or 2, got {self.adaLN_expansion}")
        if self.default_steps < 1:
            raise ValueError(f"default_steps must be >= 1, got {self.default_steps}")
        factor = 2 ** (len(self.vae_block_out_channels) - 1) * self.patch_size
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be a multiple of {factor} (VAE factor x patch size)")

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)


def build_vae(c: FlexTokConfig):
    """The diffusers ``AutoencoderKL`` of `c` (diffusers is imported here, when a model is built: it is slow to
    import and `zoo list` does not need it)."""
    from diffusers import AutoencoderKL

    n = len(c.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=c.vae_block_out_channels,
        layers_per_block=c.vae_layers_per_block, act_fn=c.vae_act_fn, latent_channels=c.vae_latent_channels,
        norm_num_groups=c.vae_norm_num_groups, mid_block_add_attention=c.vae_mid_block_add_attention,
    )


def _as_int_list(value, what: str) -> list[int]:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.ndim > 1:
            raise ValueError(f"{what}: expected integers, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise ValueError(f"{what}: expected an int, a list of ints or an integer tensor, got {value!r}")


@register_architecture("flextok")
class FlexTok(ImageTokenizer):
    """Images ``(B, 3, H, W)`` in [0, 1] -> codes ``(B, 256)``; any prefix of 1..256 tokens decodes to an image.

    Decoding samples noise (rectified flow): ``seed=`` gives every item its own noise (per-item determinism)."""

    config_class = FlexTokConfig
    token_layout = "sequence"
    prefix_decodable = True
    stochastic_decode = True

    def __init__(self, config: FlexTokConfig):
        super().__init__(config)
        c = config
        self.vae = build_vae(c)
        self.encoder = FlexTokEncoder(c.vae_latent_channels, c.patch_size, c.encoder_dim, c.encoder_depth,
                                      c.encoder_head_dim, c.mlp_ratio, c.num_registers, c.posemb_grid,
                                      len(c.fsq_levels))
        # vector-quantize-pytorch's FSQ reproduces the official one bit for bit (same bound with eps 1e-3, same
        # straight-through rounding, same index basis; checked against the parity fixture and on random inputs in
        # tests/test_flextok.py). It has no state-dict entries, like the official module.
        from vector_quantize_pytorch import FSQ  # imported when a model is built (slow to import)

        with torch.device("cpu"):  # FSQ computes its implicit codebook at init; it has no parameters (meta-safe)
            self.regularizer = FSQ(list(c.fsq_levels))
        self.decoder = FlexTokDecoder(c.vae_latent_channels, c.patch_size, c.decoder_dim, c.decoder_depth,
                                      c.decoder_head_dim, c.mlp_ratio, c.num_registers, c.posemb_grid,
                                      len(c.fsq_levels), c.adaLN_expansion, c.max_timestep, c.time_frequency_size,
                                      c.null_cond, c.head_adaLN)
        self.init_weights()

    def init_weights(self) -> None:
        """The official initialisation: xavier-uniform linears with zero bias, zero adaLN and output heads,
        truncated-normal (std 0.02) registers, register position embeddings, mask and null tokens."""
        for part in (self.encoder, self.decoder):
            for name, m in part.named_modules():
                if isinstance(m, nn.Linear):
                    if "adaLN_modulation" in name or name.endswith("head.proj"):
                        nn.init.zeros_(m.weight)
                    else:
                        nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for p in (self.encoder.registers, self.decoder.register_posemb, self.decoder.mask_token,
                  getattr(self.decoder, "null_cond", None)):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    # --- facts ---------------------------------------------------------------------------------------------------
    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        return (math.prod(self.config.fsq_levels),)

    @property
    def input_size(self) -> int:
        return self.config.image_size

    def default_decode_kwargs(self) -> dict[str, Any]:
        c = self.config
        return {"steps": c.default_steps, "guidance_scale": c.default_guidance_scale, "apg": c.default_apg}

    def codes_to_embeddings(self, tokens) -> torch.Tensor:
        """Codes ``(B, N)`` (or `Tokens`) -> FSQ values ``(B, N, len(fsq_levels))`` in [-1, 1]."""
        codes = self.check_tokens(tokens).codes if isinstance(tokens, Tokens) else tokens
        return self.codes_to_quants(check_codes(codes, self.codebook_size, ndim=2).to(self.device))

    @property
    def num_tokens(self) -> int:
        return self.config.num_registers

    @property
    def device(self) -> torch.device:
        return self.decoder.mask_token.device

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.config.num_registers,)

    def cast(self, device=None, dtype=None) -> "FlexTok":
        """Move; with a float `dtype` the two transformers are cast, the VAE stays float32 (official
        ``dtype_override fp32``) and FSQ always runs in float32."""
        self.to(device=device)
        if dtype is not None:
            self.encoder.to(dtype=dtype)
            self.decoder.to(dtype=dtype)
        return self

    # --- VAE -------------------------------------------------------------------------------------------------------
    def _scaling(self) -> float:
        if self.config.vae_scaling_factor is None:
            raise ValueError(
                "vae_scaling_factor is not set in this FlexTok config (not known offline for the released "
                "checkpoints); build the model from the checkpoint's own config with "
                "tokenizers_img.flextok.FlexTok.from_official(...) or set config.vae_scaling_factor"
            )
        return float(self.config.vae_scaling_factor)

    def vae_encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] ``(B, 3, H, W)`` -> scaled latents ``(B, C, H/f, W/f)`` (posterior mode unless
        `config.sample_posterior`)."""
        vae_dtype = self.vae.dtype
        dist = self.vae.encode(images.to(self.device, vae_dtype)).latent_dist
        latents = dist.sample(generator) if self.config.sample_posterior else dist.mode()
        return latents * self._scaling()

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (not clamped)."""
        return self.vae.decode(latents.to(self.vae.dtype) / self._scaling()).sample

    # --- encoder + FSQ ---------------------------------------------------------------------------------------------
    def encode_latents(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scaled VAE latents -> ``{"prequant": (B, N, d), "quants": (B, N, d), "tokens": (B, N) int64}``."""
        prequant = self.encoder(latents).float()
        quants, tokens = self.regularizer(prequant)
        return {"prequant": prequant, "quants": quants, "tokens": tokens.long()}

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``(B, 3, H, W)`` -> codes ``(B, N)`` (the official `tokenize`, as one tensor)."""
        self._check_size(images.shape[-2:])
        return self.encode_latents(self.vae_encode(images))["tokens"]

    def codes_to_quants(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, N)`` -> FSQ values ``(B, N, len(levels))`` in [-1, 1]."""
        return self.regularizer.indices_to_codes(codes.long())

    def _check_size(self, hw) -> tuple[int, int]:
        h, w = int(hw[0]), int(hw[1])
        f = self.config.vae_downsample * self.config.patch_size
        rows, cols = self.config.posemb_grid
        if h % f or w % f:
            raise ValueError(f"images: height and width must be multiples of {f}, got {h}x{w}")
        if h // f > rows or w // f > cols:
            raise ValueError(f"images: at most {rows * f}x{cols * f} pixels (the positional tables), got {h}x{w}")
        return h, w

    # --- decoder -----------------------------------------------------------------------------------------------------
    def prepare_codes(self, tokens, keep_k=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Any accepted token input -> (codes ``(B, N)`` zero-padded, keep_k ``(B,)`` int64 in 1..N).

        Accepts a `Tokens` (its ``lengths`` are the per-item keep_k), codes ``(B, k)`` with ``1 <= k <= N`` (a
        truncated prefix), or a list of ``(l,)`` / ``(1, l)`` code tensors of different lengths (the official
        ``token_ids_list``). An explicit `keep_k` (int, list or tensor) overrides, and must not exceed the number of
        codes given.
        """
        n = self.config.num_registers
        lengths = None
        if isinstance(tokens, Tokens):
            codes, lengths = self.check_tokens(tokens).codes, tokens.lengths
        elif isinstance(tokens, (list, tuple)):
            if not tokens:
                raise ValueError("tokens: got an empty list")
            items = []
            for i, t in enumerate(tokens):
                if isinstance(t, torch.Tensor) and t.ndim == 2 and t.shape[0] == 1:
                    t = t[0]
                items.append(check_codes(t, self.codebook_size, ndim=1, what=f"tokens[{i}]"))
            if max(len(t) for t in items) > n:
                raise ValueError(f"tokens: at most {n} codes per item, got {max(len(t) for t in items)}")
            lengths = torch.tensor([len(t) for t in items])
            codes = torch.zeros(len(items), n, dtype=torch.long)
            for i, t in enumerate(items):
                codes[i, : len(t)] = t.cpu()
        else:
            codes = tokens
        codes = check_codes(codes, self.codebook_size, ndim=2, what="codes (B, N)")
        b, k = codes.shape
        if k > n:
            raise ValueError(f"codes: at most {n} tokens per item, got {k}")
        if keep_k is not None:
            keep = _as_int_list(keep_k, "keep_k")
            if len(keep) == 1:
                keep = keep * b
        elif lengths is not None:
            keep = _as_int_list(lengths, "lengths")
        else:
            keep = [k] * b
        if len(keep) != b:
            raise ValueError(f"keep_k: expected one value per item ({b}), got {len(keep)}")
        if min(keep) < 1 or max(keep) > k:
            raise ValueError(f"keep_k: values must be in 1..{k} (tokens given per item), got {keep}")
        if k < n:
            codes = torch.cat([codes, codes.new_zeros(b, n - k)], dim=1)
        device = self.device
        return codes.to(device), torch.tensor(keep, dtype=torch.long, device=device)

    def velocity(self, tokens, noised_latents: torch.Tensor, timesteps, keep_k=None, uncond=False,
                 return_intermediates: bool = False):
        """One decoder forward (as the official sampler calls it): predicted velocity ``(B, C, h, w)``.

        Args:
            tokens: anything `prepare_codes` accepts (truncated prefixes, lists of different lengths, full codes
                with `keep_k`).
            noised_latents: ``x_t = t * noise + (1 - t) * latents``.
            timesteps: ``(B,)`` or a float, in (0, 1].
            uncond: True (all items) or a ``(B,)`` bool mask: run the CFG null condition.
        """
        codes, keep = self.prepare_codes(tokens, keep_k)
        b = codes.shape[0]
        t = torch.as_tensor(timesteps, dtype=torch.float32, device=self.device)
        t = t.expand(b) if t.ndim == 0 else t
        un = torch.as_tensor(uncond, dtype=torch.bool, device=self.device)
        un = un.expand(b) if un.ndim == 0 else un
        quants = self.codes_to_quants(codes)
        out = self.decoder(quants, noised_latents.to(self.device), t, keep, un, return_intermediates)
        if return_intermediates:
            return out[0].float(), out[1]
        return out.float()

    def sample_latents(self, tokens, keep_k=None, *, latent_size: int | tuple[int, int] | None = None,
                       noise: torch.Tensor | None = None, steps: int = 25,
                       guidance_scale: float | Callable[[float], float] = 1.0, apg: bool = False,
                       seed: int | Sequence[int] | None = None,
                       generator: torch.Generator | Sequence[torch.Generator] | None = None,
                       return_trajectory: bool = False):
        """Rectified-flow sampling (official ``MinRFPipeline``): Euler steps ``t_i = i / steps`` for i = steps..1,
        ``x <- x - (1 / steps) * v``; with guidance != 1 the null-condition pass runs in the same batch (its noised
        patches embedded once for both halves), combined by plain CFG or APG. The register tokens, the patch position
        table and the time embeddings of all steps are computed before the loop; the result is bit-identical to one
        full decoder call per step. Returns the final latents (and the per-step t, x, v_cond, v_uncond on request).

        Noise: `noise` if given, else one ``(C, h, w)`` draw per item from its own generator (`seed`: an int or one
        per item, see `zoo.api.item_generators`); a single `generator` is drawn from in batch order, exactly as the
        official pipeline draws it."""
        codes, keep = self.prepare_codes(tokens, keep_k)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        b = codes.shape[0]
        if noise is not None and (seed is not None or generator is not None):
            raise ValueError("give noise, or seed / generator to draw it, not both")
        if noise is None:
            if latent_size is None:
                latent_size = self.config.image_size // self.config.vae_downsample
            h, w = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
            self._check_size((h * self.config.vae_downsample, w * self.config.vae_downsample))
            generators = item_generators(b, seed=seed, generator=generator, device=self.device)
            noise = randn_per_item((self.config.vae_latent_channels, h, w), generators, device=self.device)
        x = noise.to(self.device, torch.float32)
        if x.shape[0] != b:
            raise ValueError(f"noise: expected {b} items, got {tuple(x.shape)}")
        dec = self.decoder
        quants = self.codes_to_quants(codes)
        do_cfg = callable(guidance_scale) or guidance_scale != 1.0
        # Computed once: the register tokens (conditional rows, then the null-condition rows for CFG) and the patch
        # position table; the time embeddings of all steps before the loop (their range check syncs a GPU).
        if do_cfg:
            uncond = torch.arange(2 * b, device=self.device) >= b
            cond = dec.prepare_condition(torch.cat([quants, quants]), torch.cat([keep, keep]), uncond, x.shape[2:])
        else:
            cond = dec.prepare_condition(quants, keep, None, x.shape[2:])
        times = [i / steps for i in range(steps, 0, -1)]
        rows = cond.registers.shape[0]
        # one (rows, D) embedding per step, exactly as a per-step call makes it (bitwise: GEMMs are not row-invariant)
        tembs = [dec.time_embed(t * torch.ones(rows, device=self.device)) for t in times]
        guide = APG() if (do_cfg and apg) else None
        dt = 1.0 / steps  # a Python float, as in the official sampler
        trajectory: dict[str, list[torch.Tensor]] = {"t": [], "x": [], "v_cond": [], "v_uncond": []}
        for t, temb in zip(times, tembs, strict=True):
            v = dec.step(cond, x, temb).float()
            if do_cfg:
                v_cond, v_uncond = v[:b], v[b:]
                scale = guidance_scale(t) if callable(guidance_scale) else guidance_scale
                v = guide(v_cond, v_uncond, scale) if guide is not None else classifier_free_guidance(
                    v_cond, v_uncond, scale)
            else:
                v_cond, v_uncond = v, None
            if return_trajectory:
                trajectory["t"].append(t * torch.ones(b, device=self.device))
                trajectory["x"].append(x)
                trajectory["v_cond"].append(v_cond)
                if v_uncond is not None:
                    trajectory["v_uncond"].append(v_uncond)
            x = x - dt * v
        if return_trajectory:
            return x, {k: torch.stack(v) for k, v in trajectory.items() if v}
        return x

    def detokenize(self, tokens, keep_k=None, **kwargs) -> torch.Tensor:
        """Codes -> images in [-1, 1], not clamped (the official `detokenize`); keyword arguments as in
        `sample_latents` (official defaults: guidance 1, no APG)."""
        return self.vae_decode(self.sample_latents(tokens, keep_k, **kwargs))

    # --- public API ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, x, *, resize: str = "center_crop", generator: torch.Generator | None = None) -> Tokens:
        """Images -> `Tokens` with codes ``(B, N)`` int64, ordered coarse to fine (any prefix decodes).

        Args:
            x: a tensor ``(3, H, W)`` / ``(B, 3, H, W)`` in [0, 1], a PIL image, a path, or a list of these.
            resize: ``"center_crop"`` (default): every image is brought to ``config.image_size`` square: shorter side
                resized to it (bicubic, antialiased), then the centre crop (`zoo.io.resize_center_crop`).
                ``"none"``: encoded at its own size, which must be a multiple of the VAE factor x patch size and fit
                the positional tables.
            generator: used only with ``config.sample_posterior``.
        """
        images = zio.image_batch(x, self.config.image_size, resize)
        h, w = self._check_size(images.shape[-2:])
        latents = self.vae_encode(images.to(self.device).float() * 2 - 1, generator)
        codes = self.encode_latents(latents)["tokens"]
        return self.make_tokens(codes, image_size=[h, w])

    @torch.inference_mode()
    def decode(self, tokens, *, seed: int | Sequence[int] | None = None,
               generator: torch.Generator | Sequence[torch.Generator] | None = None, keep_k=None,
               steps: int | None = None, guidance_scale: float | Callable[[float], float] | None = None,
               apg: bool | None = None, image_size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Tokens -> images ``(B, 3, H, W)`` in [0, 1].

        Args:
            tokens: `Tokens` (``lengths`` = per-item number of tokens to keep), codes ``(B, k)`` for any
                ``1 <= k <= N`` (a truncated prefix), or a list of code tensors of different lengths.
            keep_k: tokens to keep per item (int, list or ``(B,)`` tensor, each in 1..k); the rest is masked.
            steps: Euler steps (default ``config.default_steps``, 25).
            guidance_scale: CFG scale, or a function of t (default ``config.default_guidance_scale``); 1 = no CFG.
            apg: adaptive projected guidance instead of plain CFG (default ``config.default_apg``).
            seed: an int (every item draws its noise from a generator seeded with it, so the same tokens and seed
                give the same image wherever they sit in a batch), or one int per item.
            generator: one ``torch.Generator`` per item, or one shared in batch order (the official behaviour).
                Neither: torch's global RNG.
            image_size: output size (default: the size the tokens were made from, else ``config.image_size``).
        """
        c = self.config
        if image_size is None:
            meta_size = tokens.meta.get("image_size") if isinstance(tokens, Tokens) else None
            image_size = tuple(meta_size) if meta_size else c.image_size
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        h, w = self._check_size(hw)
        latents = self.sample_latents(
            tokens, keep_k, latent_size=(h // c.vae_downsample, w // c.vae_downsample),
            steps=c.default_steps if steps is None else steps,
            guidance_scale=c.default_guidance_scale if guidance_scale is None else guidance_scale,
            apg=c.default_apg if apg is None else apg, seed=seed, generator=generator,
        )
        return ((self.vae_decode(latents).float() + 1) / 2).clamp(0, 1)

    # --- official checkpoints --------------------------------------------------------------------------------------
    @classmethod
    def from_official(cls, source: str, *, vae_config: dict | None = None, **overrides: Any) -> "FlexTok":
        """Build from an official checkpoint's own Hydra config and load it strictly.

        `source`: a ``model.safetensors`` file (config read from its metadata), a folder with ``config.json`` +
        ``model.safetensors``, or a Hub repo id such as ``EPFL-VILAB/flextok_d18_d28_dfn``. The config is only
        interpreted through a fixed allow-list (see `convert.config_from_official`); nothing in it is imported.
        """
        from .convert import load_official

        return load_official(cls, source, vae_config=vae_config, **overrides)

    # --- card ---------------------------------------------------------------------------------------------------------
    def card_facts(self) -> dict[str, Any]:
        c = self.config
        return {
            **super().card_facts(),
            "token shape": f"(B, {c.num_registers}); any prefix of 1..{c.num_registers} tokens decodes",
            "quantizer": f"FSQ, levels {list(c.fsq_levels)}",
            "image size": f"{c.image_size} x {c.image_size}",
            "decoder": f"rectified flow, {c.default_steps} Euler steps, guidance {c.default_guidance_scale:g}"
                       + (" (APG)" if c.default_apg else ""),
        }

    def card_usage(self) -> str:
        n = self.config.num_registers
        return (
            "img = zoo.io.load_image(\"photo.png\")[None]     # (1, 3, H, W) in [0, 1]\n"
            f"tokens = tok.encode(img)                       # tokens.codes: (B, {n}) int64, coarse to fine\n"
            f"recon = tok.decode(tokens.codes[:, :{max(1, n // 8)}], seed=0)  # any prefix decodes"
        )

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Held-out photos: PSNR / SSIM at k = 1, 4, 16, ... tokens against bicubic thumbnails of about the same
        bits (`zoo eval`; .evaluate.reference_table)."""
        from .evaluate import reference_table

        return reference_table(self, split=split)
