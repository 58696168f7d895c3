"""The WavTokenizer training recipe runs, checkpoints, resumes, and runs as 2 processes (gloo on CPU)."""

import os

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from tokenizers_audio.wavtokenizer.model import WavTokenizerConfig
from tokenizers_audio.wavtokenizer.train import Discriminators, TrainConfig, train

from conftest import TINY_OVERRIDES

CONFIG = dict(downsamples=(8, 5, 4, 2), n_fft=1280, hop_length=320, **{**TINY_OVERRIDES["wavtokenizer"], "codebook_size": 16},
              kmeans_iters=2)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps a process-wide singleton; forked workers must not inherit a single-process one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def clips():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(12000, generator=g) * 0.1 for _ in range(4)]


def run(out, steps, resume=False, num_processes=1):
    accelerator = Accelerator(project_config=ProjectConfiguration(project_dir=str(out),
                                                                  automatic_checkpoint_naming=True, total_limit=2))
    tc = TrainConfig(steps=steps, batch_size=2, crop_seconds=0.2, warmup_steps=1, mel_only_steps=1,
                     disc_channels=4, save_every=2, log_every=1)
    model = train(WavTokenizerConfig(**CONFIG), tc, clips(), str(out), resume=resume, accelerator=accelerator)
    return model, accelerator


def test_train_checkpoint_resume(tmp_path):
    model, _ = run(tmp_path, steps=2)
    assert bool(model.quantizer._codebook.initted)  # k-means ran on the first batch
    assert (tmp_path / "checkpoints" / "checkpoint_0").is_dir()
    first = {k: v.clone() for k, v in model.state_dict().items()}
    model, _ = run(tmp_path, steps=3, resume=True)  # continues at step 2, saves checkpoint_1 at the end
    assert (tmp_path / "checkpoints" / "checkpoint_1").is_dir()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, first[k])]
    assert changed  # it trained one more step from the restored state
    model.save_pretrained(tmp_path / "export")
    assert (tmp_path / "export" / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_processes(tmp_path):
    """2 processes on CPU (gloo): ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2."""
    import subprocess
    import sys
    from pathlib import Path

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
