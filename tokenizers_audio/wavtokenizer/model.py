"""WavTokenizer (Ji et al., ICLR 2025): one 4096-code VQ over a SEANet encoder, decoded by a Vocos backbone.

Paper: https://arxiv.org/abs/2408.16532 - official code: https://github.com/jishengpeng/WavTokenizer

What this implementation adds to the official inference code:
* any input of the zoo's audio contract: `(T)`, one `(C, T)` clip, a `(B, C, T)` batch or a list of clips of
  different lengths, at any sample rate (channels averaged, resampled to 24 kHz, and back on decode);
* true batching: per-item lengths are carried through every layer (see `modules`), so each item's codes equal the
  codes of that clip encoded alone;
* long audio in linear time and memory: the encoder's conv stack runs in cache-sized tiles with exact halos (codes
  as for the whole clip), and above `config.chunk_seconds` decoding runs in overlapping, cross-faded chunks (the
  decoder's attention is quadratic in length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import pad_sequence

from zoo import io as zio
from zoo.api import AudioTokenizer, Tokens, audio_clips, check_codes
from zoo.registry import register_architecture

from .modules import ISTFTHead, SEANetEncoder, VocosBackbone, length_mask


@dataclass
class WavTokenizerConfig:
    """Hyperparameters. Field names follow the official yaml where one exists (``dowmsamples`` -> `downsamples`).

    Attributes:
        downsamples: the yaml's ``dowmsamples``; the encoder applies them in reverse order. Their product is the hop.
        n_filters, dimension, lstm_layers: SEANet encoder width, latent/codebook dimension, LSTM depth.
        codebook_size: entries of the single VQ codebook.
        backbone_dim, intermediate_dim, num_layers, num_bandwidths, layer_scale_init: the Vocos backbone.
        n_fft, hop_length: the ISTFT head (win = n_fft, "same" padding).
        chunk_seconds, context_seconds: clips longer than `chunk_seconds` are decoded in chunks of that length
            with `context_seconds` of overlap on each side (the decoder's attention is quadratic in length).
        encode_tile_seconds: the encoder's conv stack runs over tiles of this length with exact halos
            (an inference-speed setting: the result does not depend on it beyond float rounding).
        commitment_weight, kmeans_iters, ema_decay, dead_code_threshold: training of the VQ (official settings).
    """

    # settings that do not change what the codes mean (left out of `config_hash`)
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "chunk_seconds", "context_seconds", "encode_tile_seconds", "commitment_weight", "kmeans_iters", "ema_decay",
        "dead_code_threshold"})

    architecture: str = "wavtokenizer"
    sample_rate: int = 24000
    downsamples: Sequence[int] = (8, 5, 4, 2)
    n_filters: int = 32
    dimension: int = 512
    lstm_layers: int = 2
    codebook_size: int = 4096
    backbone_dim: int = 768
    intermediate_dim: int = 2304
    num_layers: int = 12
    num_bandwidths: int = 4
    layer_scale_init: float | None = None
    n_fft: int = 1280
    hop_length: int = 320
    chunk_seconds: float = 30.0
    context_seconds: float = 1.0
    encode_tile_seconds: float = 1.0
    commitment_weight: float = 1000.0
    kmeans_iters: int = 200
    ema_decay: float = 0.99
    dead_code_threshold: int = 2

    def __post_init__(self):
        self.downsamples = tuple(int(d) for d in self.downsamples)
        if math.prod(self.downsamples) != self.hop_length:
            raise ValueError(f"hop_length {self.hop_length} must equal the product of downsamples {self.downsamples}")
        if self.context_seconds * self.sample_rate < self.hop_length:
            raise ValueError(f"context_seconds must cover at least one frame ({self.hop_length / self.sample_rate} s)")
        if self.chunk_seconds < 4 * self.context_seconds:
            raise ValueError("chunk_seconds must be at least four times context_seconds (the core of a window "
                             "must be longer than its overlap with the neighbours)")


@register_architecture("wavtokenizer")
class WavTokenizer(AudioTokenizer):
    """Audio in, one stream of codes out: codes ``(B, 1, ceil(T_24k / hop))``, 40 or 75 tokens per second."""

    config_class = WavTokenizerConfig

    def __init__(self, config: WavTokenizerConfig):
        super().__init__(config)
        c = config
        self.sample_rate, self.hop_length = c.sample_rate, c.hop_length
        self.encoder = SEANetEncoder(list(reversed(c.downsamples)), c.n_filters, c.dimension, c.lstm_layers)
        # The codebook (EMA, k-means init, dead-code restart, commitment loss) is vector-quantize-pytorch's
        # (imported when a model is built: it is slow to import and `zoo list` does not need it).
        from vector_quantize_pytorch import VectorQuantize

        self.quantizer = VectorQuantize(
            dim=c.dimension, codebook_size=c.codebook_size, decay=c.ema_decay, eps=1e-5, kmeans_init=True,
            kmeans_iters=c.kmeans_iters, threshold_ema_dead_code=c.dead_code_threshold,
            commitment_weight=c.commitment_weight, rotation_trick=False, sync_codebook=False,
        )
        self.backbone = VocosBackbone(c.dimension, c.backbone_dim, c.intermediate_dim, c.num_layers,
                                      c.num_bandwidths, c.layer_scale_init)
        self.head = ISTFTHead(c.backbone_dim, c.n_fft, c.hop_length)

    # --- facts ---------------------------------------------------------------------------------------------------
    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        return (self.config.codebook_size,)

    @property
    def codebook(self) -> torch.Tensor:
        """``(K, D)`` codebook vectors."""
        return self.quantizer._codebook.embed[0]

    def cast(self, device=None, dtype=None) -> "WavTokenizer":
        """Move; with a float `dtype` the encoder and decoder are cast but the codebook stays float32."""
        self.to(device=device)
        if dtype is not None:
            for module in (self.encoder, self.backbone, self.head):
                module.to(dtype=dtype)
            self.head.window.data = self.head.window.data.float()
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.head.out.weight.dtype

    # --- official-equivalent building blocks (batched; `lengths` in samples or frames, None = all full) -----------
    def encode_latent(self, wav: torch.Tensor, lengths: torch.Tensor | None = None, tiled: bool = True):
        """``(B, T)`` 24 kHz waveform -> continuous latent ``(B, D, F)`` and per-item frame counts (or None).

        `lengths` (B,) are valid samples per item (None: all full). With `tiled` the conv stack runs in tiles
        (`_tiled_frontend`: same result up to float rounding, linear time); the LSTM always sees the whole clip.
        """
        x = wav[:, None].to(self.compute_dtype)
        frames = None if lengths is None else -(-lengths // self.hop_length)
        with parametrize.cached():  # weight norm computed once per call, not once per use
            if tiled:
                full = torch.full((wav.shape[0],), wav.shape[-1], device=wav.device)
                h = self._tiled_frontend(x, full if lengths is None else lengths)
            else:
                h, _ = self.encoder.frontend(x, lengths)
            return self.encoder.backend(h, frames)

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        """Nearest codeword per frame: ``(B, D, F)`` -> codes ``(B, F)``.

        The squared distance is expanded exactly as in the official code, ``-(|x|^2 - 2 x.E^T + |E|^2)`` in float32,
        so that near-ties resolve identically (vector-quantize-pytorch orders the terms differently and takes a
        square root; its codebook buffers are used, its distance is not, at inference).
        """
        batch, dim, frames = latent.shape
        x = latent.transpose(1, 2).reshape(-1, dim).float()
        embed = self.codebook.float()
        embed_sq = embed.pow(2).sum(1)[None]
        rows = max(1, (1 << 20) // embed.shape[0])  # frames per block: a (rows, K) distance block of ~4 MiB
        codes = [(-(part.pow(2).sum(1, keepdim=True) - 2 * part @ embed.t() + embed_sq)).max(dim=-1).indices
                 for part in x.split(rows)]
        return torch.cat(codes).view(batch, frames)

    def codes_to_features(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, F)`` -> codebook vectors ``(B, D, F)`` (the decoder input)."""
        return F.embedding(codes, self.codebook).transpose(1, 2)

    def decode_features(self, features: torch.Tensor, frame_lengths: torch.Tensor | None = None,
                        bandwidth_id: int = 0) -> torch.Tensor:
        """Features ``(B, D, F)`` -> waveform ``(B, F * hop)`` at 24 kHz (not trimmed, as in the official code)."""
        mask = None if frame_lengths is None else length_mask(frame_lengths, features.shape[-1]).to(self.compute_dtype)
        bw = torch.tensor([bandwidth_id], device=features.device)
        hidden = self.backbone(features.to(self.compute_dtype), bw, mask)
        return self.head(hidden, mask)

    # --- training --------------------------------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor, bandwidth_id: int = 0):
        """Training pass on equal-length 24 kHz crops ``(B, T)``: returns (reconstruction, codes, commitment loss).

        In training mode the codebook follows the official recipe: k-means init on the first batch, EMA updates,
        dead-code restart, straight-through gradients, commitment MSE weighted by `commitment_weight`.
        """
        latent, _ = self.encoder(wav[:, None])  # (B, D, F)
        quantized, codes, commit_loss = self.quantizer(latent.transpose(1, 2))  # (B, F, D), (B, F), ()
        bw = torch.tensor([bandwidth_id], device=wav.device)
        audio = self.head(self.backbone(quantized.transpose(1, 2), bw))
        return audio, codes, commit_loss

    # --- public API ------------------------------------------------------------------------------------------------
    def _prepare(self, audio, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Any accepted input -> zero-padded mono 24 kHz batch ``(B, T)``, per-item lengths, original lengths."""
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive int (the input's rate in Hz), got {sample_rate!r}")
        items = audio_clips(audio)  # validated (C, T) clips
        device = self.codebook.device
        original = [item.shape[-1] for item in items]
        mono = [zio.resample(zio.to_mono(item[None].to(device).float()), sample_rate, self.sample_rate)[0]
                for item in items]
        lengths = torch.tensor([m.shape[-1] for m in mono], device=device)
        wav = pad_sequence(mono, batch_first=True)
        return wav, lengths, original

    @torch.inference_mode()
    def encode(self, audio, *, sample_rate: int) -> Tokens:
        """Waveform(s) -> `Tokens` (layout "audio") with codes ``(B, 1, F)``, per-item frame `lengths`, and
        ``meta`` ``sample_rate`` / ``num_samples`` of the input.

        Any length is encoded exactly as the official model encodes the whole clip, in time and memory linear in
        the length (see `encode_latent`).

        Args:
            audio: float in [-1, 1]: ``(T)`` mono, ``(C, T)`` one clip, ``(B, C, T)`` a batch, or a list of
                ``(T)`` / ``(C, T)`` clips of any lengths.
            sample_rate: the input's sample rate (resampled to 24 kHz; channels are averaged).
        """
        wav, lengths, original = self._prepare(audio, sample_rate)
        latent, _ = self.encode_latent(wav, lengths)
        frames = -(-lengths // self.hop_length)
        codes = self.quantize(latent) * length_mask(frames, latent.shape[-1])[:, 0].long()  # zeros past each end
        return self.make_tokens(codes[:, None], frames, sample_rate=sample_rate, num_samples=original)

    def _groups(self, sizes: list[int], seconds: float) -> list[slice]:
        """Consecutive sub-batches whose padded size stays within `seconds` of audio per forward pass."""
        budget = seconds * self.sample_rate
        groups, start, longest = [], 0, 0
        for i, size in enumerate(sizes):
            longest = max(longest, size)
            if i > start and longest * (i - start + 1) > budget:
                groups.append(slice(start, i))
                start, longest = i, size
        groups.append(slice(start, len(sizes)))
        return groups

    def _budget_seconds(self, stage: str) -> float:
        """Audio per forward pass. On CPU the conv stacks turn memory-bound (slower than linear) once activations
        outgrow the cache, so CPU passes stay small (the encoder's 24 kHz layers most of all: 4 s per pass was
        fastest in a sweep of 0.5-64 s); each item's result does not depend on its batch-mates."""
        if self.codebook.device.type != "cpu":
            return 600.0
        return 4.0 if stage == "encode" else 20.0

    def _tiled_frontend(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The SEANet conv stack over tiles of ``config.encode_tile_seconds`` with exact halos.

        Every item is cut into windows of whole frames: a core of tile frames plus a halo covering the stack's
        receptive field on each side (the halo frames are computed and dropped). The windows of all items run as
        one batch of independent clips, so each kept frame equals the untiled output up to float rounding, and a
        clip of any length costs its number of tiles times one cache-sized pass.
        """
        hop = self.hop_length
        halo = -(-max(self.encoder.frontend_context()) // hop)
        core = max(1, round(self.config.encode_tile_seconds * self.sample_rate / hop))
        windows, places = [], []  # places: (item, window start frame, core start, core end)
        for b, n in enumerate(lengths.tolist()):
            frames = -(-n // hop)
            for start in range(0, frames, core):
                ws, we = max(0, start - halo), min(frames, start + core + halo)
                windows.append(x[b, 0, ws * hop: min(we * hop, n)])
                places.append((b, ws, start, min(start + core, frames)))
        out = None
        order = sorted(range(len(windows)), key=lambda i: windows[i].shape[-1], reverse=True)
        sizes = [windows[i].shape[-1] for i in order]
        for g in self._groups(sizes, self._budget_seconds("encode")):
            ids = order[g]
            win_lengths = torch.tensor(sizes[g], device=x.device)
            batch = pad_sequence([windows[i] for i in ids], batch_first=True)[:, None]
            uniform = bool((win_lengths == batch.shape[-1]).all())
            h, _ = self.encoder.frontend(batch, None if uniform else win_lengths)  # (W, C, frames)
            if out is None:
                out = h.new_zeros(x.shape[0], h.shape[1], int(-(-lengths.max() // hop)))
            for row, i in enumerate(ids):
                b, ws, cs, ce = places[i]
                out[b, :, cs:ce] = h[row, :, cs - ws: ce - ws]
        return out

    def _chunk_plan(self, total_frames: int) -> list[tuple[int, int, int, int]]:
        """(window start, window end, core start, core end) in frames, covering [0, total_frames)."""
        rate = self.sample_rate / self.hop_length
        core = max(1, int(self.config.chunk_seconds * rate) - 2 * int(self.config.context_seconds * rate))
        context = int(self.config.context_seconds * rate)
        plan = []
        for start in range(0, total_frames, core):
            end = min(start + core, total_frames)
            plan.append((max(0, start - context), min(total_frames, end + context), start, end))
        return plan

    @torch.inference_mode()
    def decode(self, tokens: Tokens | torch.Tensor, *, seed=None, generator=None, sample_rate: int | None = None,
               bandwidth_id: int = 0, chunked: bool | None = None) -> torch.Tensor:
        """`Tokens` (or codes ``(B, 1, F)`` / ``(B, F)``) -> waveform ``(B, T)``, zero-padded past each item's end.

        With `Tokens` from `encode`, the audio comes back at the input's sample rate and length. With raw codes it
        is 24 kHz and ``F * hop`` samples long (or `sample_rate` if given). `decode_list` gives unpadded clips.
        Decoding is deterministic: `seed` / `generator` are accepted (the contract's signature) and unused.
        """
        codes, frames, out_rate, num_samples = self._unpack(tokens, sample_rate)
        if chunked is None:
            chunked = codes.shape[-1] * self.hop_length > self.config.chunk_seconds * self.sample_rate
        audio = self._decode_chunked(codes, frames, bandwidth_id) if chunked else self._decode(codes, frames, bandwidth_id)
        # zero past each item's end (the masked ISTFT leaves junk there) so resampling cannot smear it inward
        audio = audio.float() * length_mask(frames * self.hop_length, audio.shape[-1])[:, 0]
        if out_rate != self.sample_rate:
            audio = zio.resample(audio, self.sample_rate, out_rate)
        if num_samples is None:
            num_samples = [zio.resampled_length(int(f) * self.hop_length, self.sample_rate, out_rate) for f in frames]
        out = torch.zeros(audio.shape[0], max(num_samples), device=audio.device)
        for i, n in enumerate(num_samples):
            n = min(n, audio.shape[-1])
            out[i, :n] = audio[i, :n]
        return out

    def decode_list(self, tokens: Tokens | torch.Tensor, **kwargs) -> list[torch.Tensor]:
        """Like `decode`, but one unpadded ``(T_i)`` waveform per item."""
        audio = self.decode(tokens, **kwargs)
        _, frames, out_rate, num_samples = self._unpack(tokens, kwargs.get("sample_rate"))
        if num_samples is None:
            num_samples = [zio.resampled_length(int(f) * self.hop_length, self.sample_rate, out_rate) for f in frames]
        return [audio[i, :n] for i, n in enumerate(num_samples)]

    def _unpack(self, tokens: Tokens | torch.Tensor, sample_rate: int | None):
        if isinstance(tokens, Tokens):
            codes, frames, meta = self.check_tokens(tokens).codes, tokens.lengths, tokens.meta
        else:
            codes, frames, meta = tokens, None, {}
        if isinstance(codes, torch.Tensor) and codes.ndim == 2:
            codes = codes[:, None]
        codes = check_codes(codes, self.codebook_size, ndim=3, what="codes (B, 1, T)")
        if codes.shape[1] != 1:
            raise ValueError(f"codes: WavTokenizer has one codebook, expected (B, 1, T), got {tuple(codes.shape)}")
        codes = codes[:, 0].to(self.codebook.device)
        if frames is None:
            frames = torch.full((codes.shape[0],), codes.shape[-1], device=codes.device)
        frames = frames.to(codes.device).long()
        if frames.shape != (codes.shape[0],) or int(frames.min()) < 1 or int(frames.max()) > codes.shape[-1]:
            raise ValueError(f"lengths: expected (B,) values in [1, {codes.shape[-1]}], got {frames.tolist()}")
        out_rate = sample_rate or meta.get("sample_rate") or self.sample_rate
        num_samples = meta.get("num_samples") if sample_rate in (None, meta.get("sample_rate")) else None
        if num_samples is not None and len(num_samples) != codes.shape[0]:
            raise ValueError(f"tokens.meta['num_samples'] has {len(num_samples)} entries for {codes.shape[0]} items")
        return codes, frames, out_rate, num_samples

    def _decode(self, codes: torch.Tensor, frames: torch.Tensor, bandwidth_id: int) -> torch.Tensor:
        """Codes ``(B, F)`` -> waveform ``(B, F * hop)``, in sub-batches (see `_groups`)."""
        hop = self.hop_length
        audio = None
        for g in self._groups((frames * hop).tolist(), self._budget_seconds("decode")):
            n = int(frames[g].max())
            part = self._decode_batch(codes[g, :n], frames[g], bandwidth_id)
            if audio is None:
                audio = part.new_zeros(codes.shape[0], codes.shape[-1] * hop)
            audio[g, : part.shape[-1]] = part
        return audio

    def _decode_batch(self, codes: torch.Tensor, frames: torch.Tensor, bandwidth_id: int) -> torch.Tensor:
        uniform = bool((frames == codes.shape[-1]).all())
        return self.decode_features(self.codes_to_features(codes), None if uniform else frames, bandwidth_id)

    def _decode_chunked(self, codes: torch.Tensor, frames: torch.Tensor, bandwidth_id: int,
                        group: int = 8) -> torch.Tensor:
        """Overlapping windows decoded in batches (`_decode` sub-divides them further on CPU); neighbours
        cross-fade linearly over the middle of the overlap."""
        hop = self.hop_length
        audio = torch.zeros(codes.shape[0], codes.shape[-1] * hop, device=codes.device)
        total_weight = torch.zeros_like(audio)
        ramp = max(1, int(self.config.context_seconds * self.sample_rate / hop) * hop // 2)
        for b in range(codes.shape[0]):
            plan = self._chunk_plan(int(frames[b]))
            for g in range(0, len(plan), group):
                part = plan[g: g + group]
                lengths = torch.tensor([we - ws for ws, we, _, _ in part], device=codes.device)
                batch = pad_sequence([codes[b, ws:we] for ws, we, _, _ in part], batch_first=True)
                decoded = self._decode(batch, lengths, bandwidth_id).float()
                for i, (ws, we, cs, ce) in enumerate(part):
                    t = torch.arange(ws * hop, we * hop, device=codes.device, dtype=torch.float32)
                    weight = torch.ones_like(t)
                    if cs > 0:  # fade in around the core start
                        weight = weight * ((t - (cs * hop - ramp)) / (2 * ramp)).clamp(0, 1)
                    if ce < int(frames[b]):  # fade out around the core end
                        weight = weight * (((ce * hop + ramp) - t) / (2 * ramp)).clamp(0, 1)
                    audio[b, ws * hop: we * hop] += weight * decoded[i, : (we - ws) * hop]
                    total_weight[b, ws * hop: we * hop] += weight
        return audio / total_weight.clamp_min(1e-6)  # the ramps already sum to 1; this guards the edges

    def codes_to_embeddings(self, tokens: Tokens | torch.Tensor) -> torch.Tensor:
        """Codes ``(B, 1, F)`` (or `Tokens`) -> codebook vectors ``(B, F, D)`` in time order."""
        codes = self._unpack(tokens, None)[0]
        return self.codes_to_features(codes).transpose(1, 2).float()

    def evaluate(self, split: str = "test") -> dict:
        """Held-out speech: this model, the same model untrained and a mel-VQ + Griffin-Lim codec at the same
        bitrate (`zoo eval`; .evaluate.reference_table)."""
        from .evaluate import reference_table

        return reference_table(self, split=split)
