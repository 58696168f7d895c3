"""Pieces every Accelerate training loop in the zoo shares: the global step, schedules, complete checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

from accelerate import Accelerator

COMPLETE = "complete"  # marker file: the checkpoint folder was written to the end


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


def save_complete_state(accelerator: Accelerator, step: int) -> None:
    """``save_state`` on every process, then (main process) the marker that says the folder is complete."""
    accelerator.wait_for_everyone()
    saved = accelerator.save_state()
    if accelerator.is_main_process:
        (Path(saved) / COMPLETE).write_text(str(step))


def resume_latest(accelerator: Accelerator, output_dir: str | Path) -> bool:
    """Load the newest *complete* checkpoint under ``output_dir/checkpoints``; False if there is none."""
    checkpoints = sorted((p for p in (Path(output_dir) / "checkpoints").glob("checkpoint_*") if (p / COMPLETE).exists()),
                         key=lambda p: int(p.name.split("_")[-1]))
    if not checkpoints:
        return False
    accelerator.load_state(str(checkpoints[-1]))
    accelerator.project_configuration.iteration = int(checkpoints[-1].name.split("_")[-1]) + 1
    return True
