"""The generators' training recipe on `zoo.training.train_loop`: any zoo generator (the class its config's
``architecture`` names) over the codes of any zoo tokenizer, on any dataset of `DATASETS`: Fashion-MNIST classes (the
bundled GPTs over `llamagen-vq-tiny-fashion`, TokenBridge over `tokenbridge-kl-tiny-fashion`, xAR over the continuous
latents of the autoencoder `mar-kl-tiny-fashion`) or spoken digits
(`llamagen-gpt-tiny-spoken-digits` over `wavtokenizer-tiny-75tps`). Families add their checks and loss through two
hooks of the generator class: ``check_training_codes(config, tokens)`` (the config must fit the codes) and
``training_loss(output, codes)`` (the loss from what ``model(codes, labels)`` returned).

* **Pre-tokenized once**: the train split is encoded by the tokenizer in batches (`pretokenize`) and cached in the
  run folder (``RUN/tokens/<dataset>-<split>.safetensors``: codes ``(N, L)`` in reading order, or ``(N, L, K)`` for
  K codes per position, or an autoencoder's latents ``(N, C, h, w)`` float32, and labels). The file records the tokenizer that made it (name, ``config_hash`` and a
  digest of its weights): a resumed run reuses it, and a run folder is refused to a different tokenizer (other
  config or other weights) instead of mixing codes.
* **The objective** is the generator's own (LlamaGen ``train_c2i.py``: next-token cross-entropy; TokenBridge: masked
  positions' per-channel cross-entropy; xAR: per-entity flow matching with noisy context), with its label dropout
  in train mode (what CFG needs) and its dropouts; AdamW with betas (0.9, 0.95) and weight decay 0.05 on the matrices and embeddings only (LlamaGen's
  ``configure_optimizers``: parameters with fewer than 2 dimensions are not decayed), gradient clipping at 1.0, the
  loop's linear warmup + cosine schedule.
* **EMA** of the weights, ``ema <- ema + (1 - d) (model - ema)`` after every optimizer step with
  ``d = min(ema_decay, (1 + step) / (10 + step))`` (a short warm-up, so a short run's EMA is not its random
  init). The EMA copy is the loop's second model (never optimized, never run forward): it is saved in every
  checkpoint (``model_1.safetensors``) and restored on resume, so a resumed run ends bit-exactly where an
  uninterrupted one does (on CPU), EMA included. The EMA is what `train` returns, `export` writes and
  `model_from_checkpoint` (``zoo eval --checkpoint``) reads.
* The generator's config (with the tokenizer it was trained on) is written to ``RUN/generator.json``; a resumed run
  must use the same architecture.

``scripts/train_ar.py --name ENTRY`` is the command line. The defaults are LlamaGen's (weight decay 0.05, clipping
1.0, EMA 0.999 for short runs); TokenBridge's own recipe uses weight decay 0.02 and clipping 3.0 (its tiny model's
card gives the flags), and quantizes a fresh posterior draw every step where this recipe encodes the posterior mode
once; xAR's official training likewise draws a posterior sample of the cached VAE moments every step, where this
recipe trains on the posterior mode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator

import zoo
from zoo import data, hub, registry
from zoo.checkpoints import atomic_path, load_into, read_state_dict, save_state_dict
from zoo.training import LoopConfig, Parts, TrainStep, checkpoint_model_state, make_accelerator, train_loop


# ----------------------------------------------------------------------------------------------------------------
# data


def fashion_mnist_images(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST of `split` in the tokenizers' form (`zoo.data.fashion_mnist_rgb32`: ``(N, 3, 32, 32)`` in
    [0, 1]) and its labels (10 classes)."""
    images, labels = data.fashion_mnist(split)
    return data.fashion_mnist_rgb32(images), labels


def spoken_digit_clips(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The spoken digits of `split` (`zoo.data.spoken_digits`) as a batch of mono clips ``(N, 1, 24000)`` at 24 kHz
    (1.0 s each) and their digits (10 classes)."""
    clips, labels = data.spoken_digits(split)
    return clips[:, None], labels


# dataset name -> split -> (items (N, ...) as the tokenizer's `encode` takes a batch, labels (N,) int64)
DATASETS: dict[str, Callable[[str], tuple[torch.Tensor, torch.Tensor]]] = {
    "fashion-mnist": fashion_mnist_images,   # images (N, 3, 32, 32) in [0, 1]
    "spoken-digits": spoken_digit_clips,     # audio (N, 1, 24000) at 24 kHz
}
ENCODE_KWARGS: dict[str, dict[str, Any]] = {"spoken-digits": {"sample_rate": data.SPEECH_SAMPLE_RATE}}
MODALITY = {"fashion-mnist": "image", "spoken-digits": "audio"}
CACHE_KEY = "tokzoo.pretokenized"


def weights_digest(model: torch.nn.Module) -> str:
    """16 hex digits over a model's state dict (names, dtypes, shapes and bytes): two tokenizers with the same
    config but different weights (a retrained one, a random init) get different digests."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_key(tokenizer) -> dict[str, Any]:
    """What identifies the codes a tokenizer makes: its name (for messages), config hash and weights digest."""
    return {"tokenizer": tokenizer.name or f"<unnamed {tokenizer.architecture}>",
            "config_hash": tokenizer.config_hash, "weights": weights_digest(tokenizer)}


@torch.no_grad()
def encode_items(tokenizer, images: torch.Tensor, batch_size: int = 256,
                 **encode_kwargs) -> tuple[torch.Tensor, tuple | None]:
    """Encode a batch of items (images ``(N, 3, H, W)`` in [0, 1], clips ``(N, 1, T)``) in batches with any
    fixed-length tokenizer: codes int64 in the tokenizer's reading order (``tok.to_sequence(tok.encode(x))``) on CPU,
    ``(N, L)`` for one code per position, ``(N, L, K)`` for K, and the token grid ``(H, W)`` (grid and channel
    layouts) or None. An autoencoder gives its continuous latents ``(N, C, h, w)`` float32 and their grid."""
    out, grid = [], None
    for i in range(0, len(images), batch_size):
        tokens = tokenizer.encode(images[i: i + batch_size].to(tokenizer.device), **encode_kwargs)
        if tokenizer.kind == "autoencoder":
            out.append(tokens.float().cpu())
            grid = tuple(tokens.shape[2:])
            continue
        seq = tokenizer.to_sequence(tokens)
        if tokens.lengths is not None and bool((tokens.lengths != seq.shape[1]).any()):
            raise ValueError(f"{tokenizer.name or tokenizer.architecture}: variable-length tokens (lengths "
                             f"{sorted(set(tokens.lengths.tolist()))}) cannot be pre-tokenized into fixed sequences")
        if tokens.layout == "grid":
            grid = tuple(tokens.codes.shape[1:3])
        elif tokens.layout == "channels":
            grid = tuple(tokenizer.grid_size())
        out.append((seq[..., 0] if seq.shape[-1] == 1 else seq).cpu())
    return torch.cat(out), grid


@dataclass
class Pretokenized:
    """A dataset split as codes: ``codes (N, L)`` (or ``(N, L, K)``) int64 in reading order, or an autoencoder's
    latents ``(N, C, h, w)`` float32 (``vocab_size`` 0), ``labels (N,)``, the token grid (or None), the cache file,
    and whether it was reused (not encoded in this call)."""

    codes: torch.Tensor
    labels: torch.Tensor
    grid_size: tuple[int, int] | None
    vocab_size: int
    path: Path
    reused: bool
    meta: dict[str, Any] = field(default_factory=dict)


def cache_path(run_dir: str | Path, dataset: str, split: str) -> Path:
    return Path(run_dir) / "tokens" / f"{dataset}-{split}.safetensors"


def read_cache_meta(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(CACHE_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a pre-tokenized split (no {CACHE_KEY} metadata)")
    return json.loads(raw)


def pretokenize(run_dir: str | Path, tokenizer, *, dataset: str = "fashion-mnist", split: str = "train",
                items: int | None = None, batch_size: int = 256,
                accelerator: Accelerator | None = None) -> Pretokenized:
    """The codes of a dataset split under `tokenizer`, encoded once and cached in ``run_dir/tokens/``.

    A cache made by the same tokenizer (config hash and weights digest), for the same dataset, split and item count,
    is reused; one made by anything else raises `ValueError` (a run folder holds one tokenizer's codes: start a new
    run folder, or delete the file to re-encode). With an `accelerator`, the main process encodes and writes the
    file, and the other processes read it.

    Args:
        run_dir: the run folder.
        tokenizer: a loaded zoo tokenizer with a fixed number of positions.
        dataset: a key of `DATASETS`; split: ``"train"``, ``"validation"`` or ``"test"``.
        items: only the first `items` images of the split (None: all).
        batch_size: images per `encode` call.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    if tokenizer.modality != MODALITY[dataset]:
        fitting = sorted(k for k, v in MODALITY.items() if v == tokenizer.modality)
        raise ValueError(f"dataset {dataset!r} holds {MODALITY[dataset]} data, the tokenizer "
                         f"{tokenizer.name or tokenizer.architecture} reads {tokenizer.modality}: use one of {fitting} "
                         "(--dataset)")
    path = cache_path(run_dir, dataset, split)
    key = {**tokenizer_key(tokenizer), "dataset": dataset, "split": split}

    def load_or_encode() -> Pretokenized:
        if path.is_file():
            meta = read_cache_meta(path)
            wanted = {**key, "items": items}
            diff = {k: (meta.get(k), v) for k, v in wanted.items() if k != "tokenizer" and meta.get(k) != v}
            if diff:
                raise ValueError(
                    f"{path} was made by {meta.get('tokenizer')} (config {meta.get('config_hash')}, weights "
                    f"{meta.get('weights')}) for {meta.get('dataset')}/{meta.get('split')} "
                    f"({meta.get('items') or 'all'} items); this run asks for {key['tokenizer']} (config {key['config_hash']}, weights "
                    f"{key['weights']}), {dataset}/{split} ({items if items is not None else 'all'} items). "
                    f"Differs: {', '.join(sorted(diff))}. A run folder holds one tokenizer's codes: use a new run "
                    "folder (or delete the file to re-encode)")
            state = read_state_dict(path)
            grid = tuple(meta["grid_size"]) if meta.get("grid_size") else None
            codes = state["codes"] if state["codes"].is_floating_point() else state["codes"].long()
            return Pretokenized(codes, state["labels"].long(), grid, int(meta["vocab_size"]), path, True, meta)
        images, labels = DATASETS[dataset](split)
        if items is not None:
            images, labels = images[:items], labels[:items]
        codes, grid = encode_items(tokenizer, images, batch_size, **ENCODE_KWARGS.get(dataset, {}))
        vocab = int(tokenizer.codebook_size) if tokenizer.kind == "tokenizer" else 0
        meta = {**key, "items": items, "count": len(codes), "grid_size": list(grid) if grid else None,
                "vocab_size": vocab,
                "length": int(codes[0, 0].numel() if codes.is_floating_point() else codes.shape[1])}
        dtype = torch.float32 if codes.is_floating_point() else torch.int32 if vocab < 2 ** 31 else torch.int64
        if accelerator is None or accelerator.is_main_process:
            save_state_dict({"codes": codes.to(dtype), "labels": labels.long()}, path,
                            metadata={CACHE_KEY: json.dumps(meta)})
        return Pretokenized(codes, labels.long(), grid, vocab, path, False, meta)

    if accelerator is None:
        return load_or_encode()
    with accelerator.main_process_first():  # the main process writes the file, the others then read it
        return load_or_encode()


# ----------------------------------------------------------------------------------------------------------------
# the recipe


@dataclass
class GeneratorTrainConfig:
    steps: int = 10000
    batch_size: int = 128          # per process
    lr: float = 1e-3
    weight_decay: float = 0.05     # official
    beta1: float = 0.9             # official betas (0.9, 0.95)
    beta2: float = 0.95
    warmup_steps: int = 500
    max_grad_norm: float = 1.0     # official
    ema_decay: float = 0.999
    seed: int = 0
    save_every: int = 1000
    log_every: int = 100
    dataset: str = "fashion-mnist"
    train_items: int = 0           # only the first N images of the train split (0 = all)
    encode_batch_size: int = 256


class EMA(torch.nn.Module):
    """A copy of the model whose weights follow it (`update`); a module so that the loop saves it with the
    checkpoints (``model_1.safetensors``) and restores it on resume.

    It is never in an optimizer nor in a forward pass, so it never gets gradients; its parameters nevertheless keep
    ``requires_grad`` because Accelerate wraps every model of a multi-process CPU run in DDP, which refuses a module
    without trainable parameters."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = type(model)(model.config)
        self.model.load_state_dict(model.state_dict())
        self.model.eval()

    def train(self, mode: bool = True) -> "EMA":  # the copy stays in eval mode (the loop calls .train())
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def ema_factor(decay: float, step: int) -> float:
    """The EMA decay at optimizer step `step` (0-based): ``min(decay, (1 + step) / (10 + step))``."""
    return min(decay, (1 + step) / (10 + step))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The official grouping: weight decay on parameters with 2 or more dimensions (matrices, embeddings), none on
    the rest (norm weights, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


@dataclass
class GeneratorTrained:
    """What `train` returns: the EMA model and the trained model (eval mode, unwrapped), the pre-tokenized data, the
    per-step losses of the steps this process ran, and the loop's `Trained`."""

    ema: Any
    model: Any
    tokens: Pretokenized
    losses: list[float]
    trained: Any


def run_config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "generator.json"


def _record_config(run_dir: Path, config, accelerator: Accelerator, resume: bool) -> None:
    path = run_config_path(run_dir)
    runtime = set(getattr(type(config), "RUNTIME_FIELDS", ())) | {"tokenizer"}
    new = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as JSON lists, as the file holds them
    if resume and path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(new) if k not in runtime and old.get(k) != new.get(k))
        if diff:
            raise ValueError(f"{path}: this run was trained with another architecture ({', '.join(diff)} differ): "
                             "resume it with the same --name, or use a new run folder")
    if accelerator.is_main_process:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(new, indent=2, sort_keys=True))


def generator_class(config):
    """The generator class a config builds (the architecture its ``architecture`` field names)."""
    return registry.get_architecture(config.architecture)


def train(tc: GeneratorTrainConfig, config, tokenizer, output_dir: str | Path, resume: bool = False,
          accelerator: Accelerator | None = None) -> GeneratorTrained:
    """Train a class-conditional generator on the codes of `tokenizer` (`pretokenize`) with
    `zoo.training.train_loop` (checkpoints in ``output_dir/checkpoints``).

    Args:
        tc: the training settings.
        config: the generator's config (e.g. ``ARConfig(**zoo.hub.spec_config(zoo.model_info(name)))``); it must fit
            the tokenizer's codes (``check_training_codes``). Its ``tokenizer`` field becomes the tokenizer's name.
        tokenizer: a registry name, ``local-dir:`` / ``hf-hub:`` reference, or a loaded tokenizer.
        output_dir: the run folder.
        resume: continue from the newest complete checkpoint (and reuse the cached codes).
    """
    output_dir = Path(output_dir)
    accelerator = accelerator or make_accelerator(output_dir)
    if isinstance(tokenizer, str):
        tokenizer = zoo.load(tokenizer, device=accelerator.device)
    if tokenizer.kind not in ("tokenizer", "autoencoder"):
        raise ValueError(f"{tokenizer.name}: a {tokenizer.kind}, not a tokenizer or an autoencoder")
    tokens = pretokenize(output_dir, tokenizer, dataset=tc.dataset, split="train", items=tc.train_items or None,
                         batch_size=tc.encode_batch_size, accelerator=accelerator)
    if tokenizer.name:
        config = dataclasses.replace(config, tokenizer=tokenizer.name)
    model_cls = generator_class(config)
    missing = [hook for hook in ("check_training_codes", "training_loss") if not hasattr(model_cls, hook)]
    if missing:
        raise ValueError(f"{model_cls.__name__} cannot be trained by this recipe: it has no {' / '.join(missing)}")
    model_cls.check_training_codes(config, tokens)
    _record_config(output_dir, config, accelerator, resume)
    codes, labels = tokens.codes, tokens.labels
    losses: list[torch.Tensor] = []

    def build(accelerator: Accelerator) -> Parts:
        model = model_cls(config)
        ema = EMA(model)
        opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2))
        return Parts(models={"model": model, "ema": ema}, optimizers={"model": opt})

    def batches(step: int, rank: int, world: int):
        idx = torch.randint(0, len(codes), (tc.batch_size,))  # the loop seeds torch per (seed, step, rank)
        return codes[idx], labels[idx]

    def step(s: TrainStep) -> dict:
        x, y = s.batch
        out = s.models["model"](x, y)  # the prepared (maybe DDP) module: gradients are synchronised
        loss = model_cls.training_loss(out, x)
        s.update("model", loss, max_grad_norm=tc.max_grad_norm)
        ema = s.accelerator.unwrap_model(s.models["ema"])
        ema.update(s.accelerator.unwrap_model(s.models["model"]), ema_factor(tc.ema_decay, s.index))
        # a copy: the detached 0-d loss shares its storage with the step's logits, kept alive (~8 MB per step) by
        # the list otherwise; .item() would force a device sync every step
        losses.append(loss.detach().clone())
        return {"loss": loss}

    loop = LoopConfig(steps=tc.steps, warmup_steps=tc.warmup_steps, seed=tc.seed, save_every=tc.save_every,
                      log_every=tc.log_every, desc=config.architecture)
    trained = train_loop(loop, output_dir, build, batches, step, resume=resume, accelerator=accelerator)
    ema = trained.models["ema"].model.eval()
    return GeneratorTrained(ema, trained.models["model"].eval(), tokens, [float(v) for v in losses], trained)


def export(ema, spec, out: str | Path) -> Path:
    """Write the (EMA) generator in zoo layout (``config.json``, ``model.safetensors``, ``README.md`` with the card
    of registry entry `spec`)."""
    ema.card_info["spec"] = spec
    Path(out).mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(out)
    return Path(out)


def model_from_checkpoint(checkpoint: str | Path, spec, run: str | Path | None = None):
    """The EMA generator of a `train` checkpoint folder (``zoo eval --checkpoint``): the config the run recorded
    (``RUN/generator.json``; `run` defaults to the folder above ``checkpoints/``), else registry entry `spec`'s."""
    checkpoint = Path(checkpoint)
    run = Path(run) if run is not None else checkpoint.parent.parent
    recorded = run_config_path(run)
    fields = json.loads(recorded.read_text()) if recorded.is_file() else hub.spec_config(spec)
    model_cls = registry.get_architecture(fields.get("architecture", spec.architecture))
    model = model_cls(model_cls.config_class(**fields))
    load_into(model, checkpoint_model_state(checkpoint, index=1, prefix="model."),
              source=str(checkpoint / "model_1.safetensors"))
    model.card_info["spec"] = spec
    return model.eval()
