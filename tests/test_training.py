"""The one training loop (zoo.training.train_loop): an interrupted and resumed run ends bit-exactly where an
uninterrupted run ends (weights, optimizer and scheduler states, step counter, RNG states); the WavTokenizer GAN
recipe on it resumes bit-exactly too, checkpoints, and runs as 2 processes (gloo on CPU)."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from tokenizers_audio.wavtokenizer.model import WavTokenizerConfig
from tokenizers_audio.wavtokenizer.train import Discriminators, TrainConfig, model_from_checkpoint, train
from zoo import training
from zoo.checkpoints import CheckpointError

from tests_helpers import assert_same_checkpoint, same
from conftest import TINY_OVERRIDES

CONFIG = dict(downsamples=(8, 5, 4, 2), n_fft=1280, hop_length=320,
              **{**TINY_OVERRIDES["wavtokenizer"], "codebook_size": 16}, kmeans_iters=2)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps a process-wide singleton; forked workers must not inherit a single-process one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


class Interrupted(Exception):
    pass


def interrupter(monkeypatch):
    """``interrupt = interrupter(monkeypatch)``; after ``interrupt(k)`` the next runs die right after writing their
    complete checkpoint at step k (as a killed job would), until ``interrupt(None)``."""
    real = training.save_complete_state
    at = {"step": None}

    def save(accelerator, step):
        real(accelerator, step)
        if step == at["step"]:
            raise Interrupted(step)

    monkeypatch.setattr(training, "save_complete_state", save)
    return lambda step: at.update(step=step)


@pytest.fixture
def interrupt_after_save(monkeypatch):
    return interrupter(monkeypatch)


def accelerator_for(out) -> Accelerator:
    return Accelerator(project_config=ProjectConfiguration(project_dir=str(out), automatic_checkpoint_naming=True,
                                                           total_limit=2))


# ----------------------------------------------------------------------------------------------------------------
# the loop itself, on a toy recipe with everything a recipe may use


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.GELU(), torch.nn.Dropout(0.3),
                                        torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.body(x)


def toy_run(out, steps, resume=False, executed=None):
    """Two models and optimizers (one with its own schedule), dropout, random data from the global RNG."""

    def build(accelerator):
        a, b = Toy(), Toy()
        return training.Parts(models={"a": a, "b": b},
                              optimizers={"a": torch.optim.AdamW(a.parameters(), lr=1e-2),
                                          "b": torch.optim.Adam(b.parameters(), lr=1e-2)},
                              lr_factors={"b": lambda s: 1.0 / (1 + s)})

    def batches(step, rank, world):
        x = torch.randn(8, 4)
        return x, x.sum(-1, keepdim=True) + 0.1 * torch.randn(8, 1)

    def step(s):
        if executed is not None:
            executed.append(s.index)
        x, y = s.batch
        loss_a = F.mse_loss(s.models["a"](x), y)
        s.update("a", loss_a, max_grad_norm=1.0)
        loss_b = F.mse_loss(s.models["b"](x + torch.randn_like(x)), y)
        s.update("b", loss_b)
        return {"a": loss_a, "b": loss_b}

    config = training.LoopConfig(steps=steps, warmup_steps=2, seed=7, save_every=2, log_every=3)
    return training.train_loop(config, out, build, batches, step, resume=resume, accelerator=accelerator_for(out))


def test_train_checkpoint_resume(tmp_path, interrupt_after_save):
    """Interrupted at step 4 of 6 and resumed: the same run as an uninterrupted one, bit for bit, and the resumed
    process took only the remaining steps."""
    whole = toy_run(tmp_path / "whole", steps=6)
    interrupt_after_save(4)
    with pytest.raises(Interrupted):
        toy_run(tmp_path / "cut", steps=6)
    interrupt_after_save(None)
    executed = []
    resumed = toy_run(tmp_path / "cut", steps=6, resume=True, executed=executed)

    assert executed == [4, 5]  # it continued at step 4, it did not start over
    assert resumed.step == whole.step == 6
    for name in ("a", "b"):
        for (key, x), y in zip(whole.models[name].state_dict().items(), resumed.models[name].state_dict().values()):
            assert torch.equal(x, y), f"{name}.{key}"
        opt_w, opt_r = whole.optimizers[name].state_dict(), resumed.optimizers[name].state_dict()
        assert opt_w["state"][0]["step"] == 6
        same(opt_w, opt_r, f"optimizer {name}")  # exp_avg, exp_avg_sq, step, param groups (lr)
        sched_w, sched_r = whole.schedulers[name], resumed.schedulers[name]
        assert sched_w.last_epoch == sched_r.last_epoch == 6
        assert sched_w.get_last_lr() == sched_r.get_last_lr()
        same(sched_w.state_dict(), sched_r.state_dict(), f"scheduler {name}")
    assert whole.schedulers["b"].get_last_lr() == [1e-2 / 7]  # its own factor, at global step 6
    # the final checkpoints hold the same state, file by file (RNG states included)
    assert_same_checkpoint(tmp_path / "whole" / "checkpoints" / "checkpoint_2",
                           tmp_path / "cut" / "checkpoints" / "checkpoint_2")
    assert not (tmp_path / "cut" / "checkpoints" / "checkpoint_0").exists()  # total_limit=2


def test_resume_with_a_longer_schedule(tmp_path):
    """A finished run resumed with more steps continues at its step with learning rates from the new schedule."""
    toy_run(tmp_path, steps=4)
    counter = torch.load(tmp_path / "checkpoints" / "checkpoint_1" / "custom_checkpoint_0.pkl", weights_only=False)
    assert counter == {"step": 4}
    executed = []
    longer = toy_run(tmp_path, steps=8, resume=True, executed=executed)
    assert executed == [4, 5, 6, 7] and longer.schedulers["a"].last_epoch == 8
    assert longer.schedulers["a"].get_last_lr() == [1e-2 * training.cosine_factor(8, 2, 8)] == [0.0]


def test_incomplete_checkpoints_are_not_resumed(tmp_path):
    toy_run(tmp_path, steps=2)
    (tmp_path / "checkpoints" / "checkpoint_0" / training.COMPLETE).unlink()  # as if killed while saving
    executed = []
    toy_run(tmp_path, steps=2, resume=True, executed=executed)
    assert executed == [0, 1]


def test_accelerator_must_checkpoint_into_the_run_folder(tmp_path):
    with pytest.raises(ValueError, match="checkpoint automatically into"):
        training.train_loop(training.LoopConfig(steps=1), tmp_path / "run", None, None, None,
                            accelerator=accelerator_for(tmp_path / "elsewhere"))


def test_indexed_batches_shard_like_accelerate():
    batch = training.indexed_batches(list(range(100)), batch_size=3)
    assert batch(0, 0, 1).tolist() == [0, 1, 2] and batch(2, 0, 1).tolist() == [6, 7, 8]
    assert batch(1, 0, 2).tolist() == [6, 7, 8] and batch(1, 1, 2).tolist() == [9, 10, 11]


# ----------------------------------------------------------------------------------------------------------------
# the WavTokenizer recipe (GAN: two optimizers, mel-only phase first)


def clips():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(12000, generator=g) * 0.1 for _ in range(4)]


def run(out, steps, resume=False, mel_only_steps=1, save_every=2):
    accelerator = accelerator_for(out)
    tc = TrainConfig(steps=steps, batch_size=2, crop_seconds=0.2, warmup_steps=1, mel_only_steps=mel_only_steps,
                     disc_channels=4, save_every=save_every, log_every=1)
    model = train(WavTokenizerConfig(**CONFIG), tc, clips(), str(out), resume=resume, accelerator=accelerator)
    return model, accelerator


def test_wavtokenizer_resume_is_bit_exact(tmp_path, interrupt_after_save):
    """4 steps (2 mel-only, 2 GAN) against 2 steps, interrupted, then 2 more: the same generator, discriminators,
    both optimizers and schedulers."""
    whole, _ = run(tmp_path / "whole", steps=4, mel_only_steps=2)
    assert bool(whole.quantizer._codebook.initted)  # k-means ran on the first batch
    interrupt_after_save(2)
    with pytest.raises(Interrupted):
        run(tmp_path / "cut", steps=4, mel_only_steps=2)
    interrupt_after_save(None)
    resumed, _ = run(tmp_path / "cut", steps=4, mel_only_steps=2, resume=True)
    for (key, x), y in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), key
    final = Path("checkpoints") / "checkpoint_1"
    assert_same_checkpoint(tmp_path / "whole" / final, tmp_path / "cut" / final)
    assert (tmp_path / "cut" / final / "model_1.safetensors").is_file()  # the discriminators
    # zoo eval --checkpoint reads the generator back
    model = model_from_checkpoint(tmp_path / "cut" / final, SimpleNamespace(config=CONFIG))
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in model.state_dict().items())
    whole.save_pretrained(tmp_path / "export")
    assert (tmp_path / "export" / "model.safetensors").is_file()


def test_wavtokenizer_fine_tunes_from_init_state(tmp_path):
    """`init_state` starts the generator from trained weights (scripts/train_wavtokenizer.py --init): at lr 0 they
    come back unchanged; a state dict of another shape is refused."""
    base, _ = run(tmp_path / "base", steps=2)
    tc = TrainConfig(steps=1, batch_size=2, crop_seconds=0.2, warmup_steps=1, mel_only_steps=0, disc_channels=4,
                     save_every=1, log_every=1, lr=0.0)
    tuned = train(WavTokenizerConfig(**CONFIG), tc, clips(), str(tmp_path / "ft"),
                  accelerator=accelerator_for(tmp_path / "ft"), init_state=base.state_dict())
    reference = base.state_dict()
    for name, p in tuned.named_parameters():
        assert torch.equal(p, reference[name]), name
    other = {k: v for k, v in reference.items() if not k.startswith("backbone.")}
    with pytest.raises(CheckpointError, match="missing"):
        train(WavTokenizerConfig(**CONFIG), tc, clips(), str(tmp_path / "bad"),
              accelerator=accelerator_for(tmp_path / "bad"), init_state=other)


@pytest.mark.slow
def test_two_processes(tmp_path):
    """2 processes on CPU (gloo): ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2."""
    import subprocess
    import sys

    here = Path(__file__).parent
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(here)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(here / "two_process_job.py"), str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "two-process training ok" in result.stdout
    assert (tmp_path / "checkpoints" / "checkpoint_0").is_dir()


def test_discriminators_shapes():
    disc = Discriminators(channels=4)
    mpd, mrd = disc(torch.randn(2, 4800), torch.tensor([1]))
    assert len(mpd) == 5 and len(mrd) == 3
    for score, features in mpd + mrd:
        assert score.shape[0] == 2 and len(features) >= 5
