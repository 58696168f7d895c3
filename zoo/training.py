"""The one training loop of the zoo, on Accelerate: every family's recipe runs through `train_loop`.

The loop owns what every recipe shares: the `Accelerator`, seeding, the learning-rate schedule (linear warmup, then
cosine decay), resuming from the newest *complete* checkpoint, periodic complete checkpoints, logging and a tqdm
progress bar. A family contributes only what differs:

* ``build(accelerator) -> Parts``: its models and optimizers by name (and, optionally, a learning-rate factor per
  optimizer, e.g. a GAN discriminator whose schedule starts later);
* ``batches(step, rank, world) -> batch``: its data, as a pure function of the global step and the process;
* ``step(TrainStep) -> logs``: one training step, which may take several backward passes and optimizer steps.

Resuming is exact (bit-exact on CPU): before each step the loop seeds Python, NumPy and torch from ``(seed, step,
rank)``, and the batch is a function of ``(step, rank, world)``, so nothing depends on how many steps ran in this
process; the weights, optimizer and scheduler states and the step counter come back through
``accelerator.load_state``. A run interrupted at step k and resumed ends with the same weights, optimizer and
scheduler states as an uninterrupted run (``tests/test_training.py``).

    def build(accelerator):
        model = Net()
        return Parts(models={"model": model}, optimizers={"model": torch.optim.AdamW(model.parameters(), lr=1e-3)})

    def step(s: TrainStep):
        loss = F.mse_loss(s.models["model"](s.batch[0]), s.batch[1])
        s.update("model", loss, max_grad_norm=1.0)
        return {"loss": loss}

    trained = train_loop(LoopConfig(steps=1000, warmup_steps=100), "runs/net", build,
                         indexed_batches(dataset, batch_size=32), step, resume=True)
    net = trained.models["model"]

Checkpoints (``save_state``) go to ``OUTPUT_DIR/checkpoints/checkpoint_<i>`` in Accelerate's layout: models in the
order of `Parts.models` (``model.safetensors``, ``model_1.safetensors``, ...), then optimizers and schedulers in
the order of `Parts.optimizers`, and the step counter (``custom_checkpoint_0.pkl``); a ``complete`` marker file is
written last, and only marked folders are resumed from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, send_to_device, set_seed
from torch import nn
from tqdm.auto import tqdm

COMPLETE = "complete"  # marker file: the checkpoint folder was written to the end


# ----------------------------------------------------------------------------------------------------------------
# building blocks


class StepCounter:
    """The global step, saved and restored with the Accelerate state (``register_for_checkpointing``)."""

    def __init__(self):
        self.value = 0

    def state_dict(self) -> dict:
        return {"step": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = int(state["step"])


def cosine_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one (run seed, global step, process) triple: a 32-bit hash, so that nearby triples do not
    share seeds."""
    digest = hashlib.blake2b(f"{seed}/{step}/{rank}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def save_complete_state(accelerator: Accelerator, step: int) -> None:
    """``save_state`` on every process, then (main process) the marker that says the folder is complete."""
    accelerator.wait_for_everyone()
    saved = accelerator.save_state()
    if accelerator.is_main_process:
        (Path(saved) / COMPLETE).write_text(str(step))
    accelerator.wait_for_everyone()


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``output_dir/checkpoints/checkpoint_<i>`` that carries the `COMPLETE` marker, or None."""
    complete = [p for p in _checkpoint_folders(output_dir) if (p / COMPLETE).exists()]
    return complete[-1] if complete else None


def _checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """``output_dir/checkpoints/checkpoint_<i>`` folders, by i."""
    folders = [p for p in (Path(output_dir) / "checkpoints").glob("checkpoint_*") if _index(p) is not None]
    return sorted(folders, key=_index)


def _index(folder: Path) -> int | None:
    number = folder.name.removeprefix("checkpoint_")
    return int(number) if number.isdigit() else None


def resume_latest(accelerator: Accelerator, output_dir: str | Path) -> bool:
    """Load the newest *complete* checkpoint under ``output_dir/checkpoints``; False if there is none.

    Later automatic saves continue the checkpoint numbering after it."""
    checkpoint = latest_complete_checkpoint(output_dir)
    if checkpoint is None:
        return False
    accelerator.load_state(str(checkpoint))
    accelerator.project_configuration.iteration = _index(checkpoint) + 1
    return True


def indexed_batches(dataset, batch_size: int) -> Callable[[int, int, int], Any]:
    """A `batches` function reading `dataset` in order: process `rank` of `world` gets batch ``step * world + rank``,
    i.e. items ``i = (step * world + rank) * batch_size + j`` (what a non-shuffling DataLoader sharded by Accelerate
    gives each process, but as a function of the step). `dataset[i]` must accept any index ``i >= 0`` (wrap around,
    or draw item `i` from an RNG seeded by `i`)."""

    def batch(step: int, rank: int, world: int):
        start = (step * world + rank) * batch_size
        return torch.utils.data.default_collate([dataset[i] for i in range(start, start + batch_size)])

    return batch


# ----------------------------------------------------------------------------------------------------------------
# the loop


@dataclass
class LoopConfig:
    """What every recipe's loop shares.

    Attributes:
        steps: total global steps (one `step` call per process each).
        warmup_steps: linear warmup of the default learning-rate factor, then cosine decay to 0 at `steps`.
        seed: seeds the models' initialisation (same on every process) and, with the step and the process index,
            each step's randomness.
        save_every: a complete checkpoint every this many steps, and at the last step.
        log_every: print (and ``accelerator.log``) the mean of the step's logs over this many steps.
        keep_checkpoints: how many checkpoint folders Accelerate keeps (when the loop makes the Accelerator).
        desc: the progress bar's and the log lines' prefix.
    """

    steps: int
    warmup_steps: int = 0
    seed: int = 0
    save_every: int = 1000
    log_every: int = 100
    keep_checkpoints: int = 2
    desc: str = "train"


@dataclass
class Parts:
    """What a recipe's `build` returns.

    Attributes:
        models: modules to train, by name; prepared (DDP, device) and saved in this order.
        optimizers: by name, in the same spirit; each gets a ``LambdaLR`` whose factor is ``lr_factors[name]``
            or, by default, `cosine_factor` over the loop's warmup and steps.
        lr_factors: optional ``step -> factor`` per optimizer name.
    """

    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    lr_factors: dict[str, Callable[[int], float]] = field(default_factory=dict)


@dataclass
class TrainStep:
    """What the recipe's `step` function gets for one global step.

    Attributes:
        index: the global step being taken (0-based; `steps` in all).
        batch: ``batches(index, rank, world)``, on the accelerator's device.
        models, optimizers: the prepared ones (a model may be DDP-wrapped: ``accelerator.unwrap_model``).
        accelerator: the run's Accelerator.
    """

    index: int
    batch: Any
    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    accelerator: Accelerator

    def update(self, optimizer: str, loss: torch.Tensor, max_grad_norm: float | None = None) -> None:
        """One optimizer step on `loss`: zero the gradients, backward, clip the optimizer's parameters' gradient
        norm to `max_grad_norm` (if given), step."""
        opt = self.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if max_grad_norm is not None:
            params = [p for group in opt.param_groups for p in group["params"]]
            self.accelerator.clip_grad_norm_(params, max_grad_norm)
        opt.step()


@dataclass
class Trained:
    """What `train_loop` returns: the unwrapped models (still in train mode), the prepared optimizers, the
    learning-rate schedulers (plain ``LambdaLR``, ``last_epoch`` = global step), the final step, the Accelerator."""

    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR]
    step: int
    accelerator: Accelerator


def make_accelerator(output_dir: str | Path, keep_checkpoints: int = 2) -> Accelerator:
    """An Accelerator whose automatic checkpoints go to ``output_dir/checkpoints/checkpoint_<i>``."""
    return Accelerator(project_config=ProjectConfiguration(
        project_dir=str(output_dir), automatic_checkpoint_naming=True, total_limit=keep_checkpoints))


def _set_lr(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put `scheduler` at global `step`: learning rates from its factors there (as its own ``step()`` computes
    them), whatever the restored optimizer carried (a resumed run may change the schedule, e.g. `steps`)."""
    scheduler.last_epoch = step
    lrs = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports


def train_loop(config: LoopConfig, output_dir: str | Path, build: Callable[[Accelerator], Parts],
               batches: Callable[[int, int, int], Any], step: Callable[[TrainStep], dict[str, Any] | None], *,
               resume: bool = False, accelerator: Accelerator | None = None) -> Trained:
    """Train for ``config.steps`` global steps, checkpointing to ``output_dir/checkpoints``.

    Args:
        config: steps, schedule, seed, save / log periods.
        output_dir: the run folder (checkpoints under ``checkpoints/``).
        build: ``accelerator -> Parts``, called after seeding with ``config.seed`` (same models on every process).
        batches: ``(step, rank, world) -> batch`` (tensors or nested containers of them, on CPU): the data of
            process `rank` of `world` at global `step`. It may draw from torch's global RNG, seeded per step.
        step: ``TrainStep -> logs``: one global step (backward passes, ``TrainStep.update``); `logs` maps names to
            scalars or 0-d tensors, printed as means over ``config.log_every`` steps.
        resume: continue from the newest complete checkpoint in `output_dir`, if any.
        accelerator: an existing Accelerator (its project dir must be `output_dir`, with automatic checkpoint
            naming); by default one is made (`make_accelerator`).
    """
    accelerator = accelerator or make_accelerator(output_dir, config.keep_checkpoints)
    project = accelerator.project_configuration
    same_dir = Path(project.project_dir or ".").resolve() == Path(output_dir).resolve()
    if not (project.automatic_checkpoint_naming and same_dir):
        raise ValueError(f"the accelerator must checkpoint automatically into {output_dir} "
                         "(ProjectConfiguration(project_dir=output_dir, automatic_checkpoint_naming=True))")
    set_seed(config.seed)
    parts = build(accelerator)
    if set(parts.lr_factors) - set(parts.optimizers):
        raise ValueError(f"lr_factors for unknown optimizers: {sorted(set(parts.lr_factors) - set(parts.optimizers))}")
    default = lambda s: cosine_factor(s, config.warmup_steps, config.steps)  # noqa: E731
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, parts.lr_factors.get(name, default))
                  for name, opt in parts.optimizers.items()}
    names_m, names_o = list(parts.models), list(parts.optimizers)
    prepared = accelerator.prepare(*parts.models.values(), *parts.optimizers.values(), *schedulers.values())
    models = dict(zip(names_m, prepared[:len(names_m)]))
    optimizers = dict(zip(names_o, prepared[len(names_m):len(names_m) + len(names_o)]))
    # The prepared schedulers are only saved and loaded (Accelerate's layout); the loop steps the plain ones once
    # per global step (a prepared one steps once per process), so their last_epoch is the global step.
    counter = StepCounter()
    accelerator.register_for_checkpointing(counter)
    if resume:
        checkpoint = latest_complete_checkpoint(output_dir)
        if resume_latest(accelerator, output_dir):
            accelerator.print(f"{config.desc}: resumed at step {counter.value} from {checkpoint}")
        else:
            accelerator.print(f"{config.desc}: no complete checkpoint in {output_dir}, starting at step 0")
    for scheduler in schedulers.values():
        _set_lr(scheduler, counter.value)
    # new checkpoints are numbered after every folder already there (an incomplete one, or an earlier run's)
    existing = [_index(p) for p in _checkpoint_folders(output_dir)]
    project.iteration = max([project.iteration, *(i + 1 for i in existing)])

    rank, world = accelerator.process_index, accelerator.num_processes
    for model in models.values():
        model.train()
    progress = tqdm(total=config.steps, initial=counter.value, desc=config.desc,
                    disable=not accelerator.is_main_process)
    totals: dict[str, Any] = {}
    logged = 0
    while counter.value < config.steps:
        index = counter.value
        set_seed(step_seed(config.seed, index, rank))
        batch = send_to_device(batches(index, rank, world), accelerator.device)
        logs = step(TrainStep(index, batch, models, optimizers, accelerator)) or {}
        counter.value = index + 1
        with warnings.catch_warnings():  # an optimizer a recipe does not step yet (a GAN's discriminator)
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            for scheduler in schedulers.values():
                scheduler.step()
        progress.update(1)
        for key, value in logs.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            totals[key] = totals.get(key, 0.0) + value
        logged += 1
        if counter.value % config.log_every == 0 or counter.value == config.steps:
            means = {key: float(total) / logged for key, total in totals.items()}
            if means and accelerator.is_main_process:
                progress.write(f"{config.desc} step {counter.value}: "
                               + " ".join(f"{key} {value:.4g}" for key, value in means.items()))
            accelerator.log(means, step=counter.value)
            totals, logged = {}, 0
        if counter.value % config.save_every == 0 or counter.value == config.steps:
            save_complete_state(accelerator, counter.value)
    progress.close()
    accelerator.wait_for_everyone()
    return Trained({name: accelerator.unwrap_model(m) for name, m in models.items()}, optimizers, schedulers,
                   counter.value, accelerator)


# ----------------------------------------------------------------------------------------------------------------
# reading a checkpoint back


def checkpoint_model_state(checkpoint: str | Path, index: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of the `index`-th model of a `train_loop` checkpoint folder (``model.safetensors``,
    ``model_1.safetensors``, ...), keeping only the keys under `prefix` (removed), e.g. ``"model."`` for a model
    trained inside a wrapper module."""
    from .checkpoints import read_state_dict

    path = Path(checkpoint) / ("model.safetensors" if index == 0 else f"model_{index}.safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a training checkpoint (no model weights there)")
    state = read_state_dict(path)
    if prefix:
        if not any(key.startswith(prefix) for key in state):
            raise ValueError(f"{path}: expected keys under {prefix!r}")
        state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return state


# ----------------------------------------------------------------------------------------------------------------
# command lines of the training scripts


def add_config_arguments(parser, cls, prefix: str = "", help: dict[str, str] | None = None) -> None:
    """One ``--<prefix><field>`` option per field of the config dataclass `cls`, typed and defaulted as the field."""
    for f in dataclasses.fields(cls):
        parser.add_argument(f"--{prefix}{f.name.replace('_', '-')}", dest=f"{prefix.replace('-', '_')}{f.name}",
                            type=type(f.default), default=f.default, help=(help or {}).get(f.name))


def config_from_arguments(cls, args, prefix: str = ""):
    """The `cls` config the options of `add_config_arguments` parsed into `args`."""
    return cls(**{f.name: getattr(args, f"{prefix.replace('-', '_')}{f.name}") for f in dataclasses.fields(cls)})
