"""The GPT recipe (generators/ar/train.py) on the one training loop, and the sample-set script
(scripts/generate_image.py): a tiny random GPT over a tiny random VQ on a slice of Fashion-MNIST learns (the loss
falls), resumes bit-exactly (weights, EMA, optimizer), caches its codes once per tokenizer; the sample set is the
same for 1 or 2 processes and any batch size, and a second run only fills in what is missing."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from generators.ar.model import ARConfig
from generators.ar.train import ARTrainConfig, check_fits
from generators.trainer import export, model_from_checkpoint, pretokenize, train, weights_digest
from zoo import data, hub, training

from conftest import REPO, TINY_OVERRIDES
from tests_helpers import assert_same_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "llamagen-gpt-tiny-fashion"
GPT = dict(TINY_OVERRIDES["ar"], block_size=64, grid_size=(8, 8))  # the tiny VQ's 8 x 8 grid at 32 px, 64 codes
ITEMS = 256  # the first images of the train split


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps a process-wide singleton: every run here starts from a clean one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def tiny_vq(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    spec = zoo.model_info(zoo.model_info(NAME).tokenizer)
    return hub.build(spec, **{**TINY_OVERRIDES["llamagen_vq"], **overrides}).eval()


def gpt_config(**overrides) -> ARConfig:
    return ARConfig(**hub.spec_config(zoo.model_info(NAME), **{**GPT, **overrides}))


class Interrupted(Exception):
    pass


def run(out: Path, tok, resume: bool = False, steps: int = 20) -> object:
    tc = ARTrainConfig(steps=steps, batch_size=16, lr=3e-3, warmup_steps=2, ema_decay=0.95, save_every=10,
                       log_every=10, train_items=ITEMS, encode_batch_size=128)
    return train(tc, gpt_config(), tok, out, resume=resume)


def test_recipe_learns_and_resumes_bit_exactly(tmp_path, monkeypatch):
    """20 steps on a tiny GPT: the loss falls; interrupted after its step-10 checkpoint and resumed, the run ends
    with the same weights, EMA and optimizer state as the uninterrupted one; the EMA is what the checkpoint reader
    and the export give."""
    tok = tiny_vq()
    whole = run(tmp_path / "whole", tok)
    first, last = np.mean(whole.losses[:3]), np.mean(whole.losses[-3:])
    print(f"loss: first 3 steps {first:.3f}, last 3 steps {last:.3f}")
    assert len(whole.losses) == 20 and last < first - 0.5, whole.losses
    assert not whole.tokens.reused and whole.tokens.codes.shape == (ITEMS, 64)
    # the EMA follows the model but is not it
    model, ema = whole.model.state_dict(), whole.ema.state_dict()
    assert model.keys() == ema.keys() and not all(torch.equal(model[k], ema[k]) for k in model)

    real = training.save_complete_state

    def save(accelerator, step):
        real(accelerator, step)
        if step == 10:
            raise Interrupted

    monkeypatch.setattr(training, "save_complete_state", save)
    with pytest.raises(Interrupted):
        run(tmp_path / "cut", tok)
    monkeypatch.setattr(training, "save_complete_state", real)
    resumed = run(tmp_path / "cut", tok, resume=True)
    assert len(resumed.losses) == 10 and resumed.tokens.reused  # steps 10..19 only, on the cached codes
    for a, b in ((whole.model, resumed.model), (whole.ema, resumed.ema)):
        for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), key
    final = Path("checkpoints") / "checkpoint_1"
    assert (tmp_path / "whole" / final / "model_1.safetensors").is_file()  # the EMA is checkpointed
    assert_same_checkpoint(tmp_path / "whole" / final, tmp_path / "cut" / final)

    with pytest.raises(ValueError, match="another architecture"):  # a run resumes with its own architecture
        tc = ARTrainConfig(steps=20, batch_size=16, train_items=ITEMS)
        train(tc, gpt_config(n_layer=2), tok, tmp_path / "cut", resume=True)

    reread = model_from_checkpoint(tmp_path / "cut" / final, zoo.model_info(NAME))
    assert reread.config == whole.ema.config
    assert all(torch.equal(v, ema[k]) for k, v in reread.state_dict().items())
    export(whole.ema, zoo.model_info(NAME), tmp_path / "export")
    loaded = zoo.load(f"local-dir:{tmp_path / 'export'}")
    assert all(torch.equal(v, ema[k]) for k, v in loaded.state_dict().items())


def test_pretokenized_cache_is_reused_and_refused_for_another_tokenizer(tmp_path, monkeypatch):
    tok = tiny_vq()
    made = pretokenize(tmp_path, tok, items=32, batch_size=10)
    images = data.fashion_mnist_rgb32(data.fashion_mnist("train")[0][:32])
    assert torch.equal(made.codes, tok.to_sequence(tok.encode(images))[..., 0])  # batches change nothing
    assert torch.equal(made.labels, data.fashion_mnist("train")[1][:32]) and made.grid_size == (8, 8)
    assert not made.reused and made.path.is_file()

    monkeypatch.setattr(tok, "encode", lambda *a, **k: pytest.fail("encoded again"))
    again = pretokenize(tmp_path, tok, items=32)
    assert again.reused and torch.equal(again.codes, made.codes) and torch.equal(again.labels, made.labels)
    monkeypatch.undo()

    other_weights = tiny_vq(seed=1)  # the same config, other weights
    assert other_weights.config_hash == tok.config_hash and weights_digest(other_weights) != weights_digest(tok)
    with pytest.raises(ValueError, match="Differs: weights"):
        pretokenize(tmp_path, other_weights, items=32)
    with pytest.raises(ValueError, match="config_hash"):
        pretokenize(tmp_path, tiny_vq(codebook_size=32), items=32)
    with pytest.raises(ValueError, match="Differs: items"):
        pretokenize(tmp_path, tok, items=16)
    with pytest.raises(ValueError, match="vocab_size is 512, the codes need 64"):
        check_fits(gpt_config(vocab_size=512), made)


def test_train_ar_script_in_two_processes(tmp_path):
    """scripts/train_ar.py as 2 CPU processes (gloo): the registered architecture on a random tokenizer of the
    registered one's size, 2 steps; the EMA (DDP-wrapped like every model of a multi-process run) is checkpointed
    and exported."""
    torch.manual_seed(0)
    hub.build(zoo.model_info(zoo.model_info(NAME).tokenizer)).save_pretrained(tmp_path / "vq")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "scripts" / "train_ar.py"), "--out", str(tmp_path / "run"), "--tokenizer",
           f"local-dir:{tmp_path / 'vq'}", "--steps", "2", "--batch-size", "4", "--train-items", "64", "--threads", "1",
           "--export", str(tmp_path / "export")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint_0"
    assert {"model_1.safetensors", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
    exported = zoo.load(f"local-dir:{tmp_path / 'export'}")
    assert exported.config.tokenizer == f"local-dir:{tmp_path / 'vq'}"
    assert exported.config.n_layer == zoo.model_info("llamagen-gpt-tiny-fashion").config["n_layer"]
    reread = model_from_checkpoint(checkpoint, zoo.model_info(NAME))
    assert all(torch.equal(v, exported.state_dict()[k]) for k, v in reread.state_dict().items())


# --- scripts/generate_image.py ---------------------------------------------------------------------------------------

SCRIPT = REPO / "scripts" / "generate_image.py"


def generate_image_main():
    spec = importlib.util.spec_from_file_location("generate_image", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def tiny_generator(tmp_path) -> str:
    """A tiny random GPT in a zoo folder, paired with a tiny random VQ in another folder (local-dir:)."""
    tok = tiny_vq()
    tok.save_pretrained(tmp_path / "vq")
    torch.manual_seed(0)
    gen = hub.build(zoo.model_info(NAME), **GPT, tokenizer=f"local-dir:{tmp_path / 'vq'}")
    with torch.no_grad():
        gen.output.weight.normal_(0, 1.0)  # the official init zeroes the head: spread the logits
    gen.save_pretrained(tmp_path / "gen")
    return f"local-dir:{tmp_path / 'gen'}"


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(zoo.io.tensor_to_pil(zoo.io.load_image(p))) for p in sorted(folder.glob("*.png"))}


def test_generate_image_two_processes_batch_sizes_and_resume(tmp_path, tiny_generator, monkeypatch):
    n, common = 7, ["--cfg", "2.0", "--temperature", "1.0", "--seed", "5", "--threads", "1"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           tiny_generator, "-n", str(n), "--out", str(tmp_path / "two"), "--batch-size", "2", *common]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "process 0/2: wrote 4" in result.stdout and "process 1/2: wrote 3" in result.stdout

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    main = generate_image_main()
    one = tmp_path / "one"
    args = [tiny_generator, "-n", str(n), "--out", str(one), "--batch-size", "3", "--npz", str(tmp_path / "s.npz"),
            *common]
    assert main(args)["written"] == n
    two_images, one_images = pngs(tmp_path / "two"), pngs(one)
    assert sorted(one_images) == [f"{i:06d}.png" for i in range(n)] == sorted(two_images)
    for name, img in one_images.items():
        assert img.shape == (32, 32, 3) and np.array_equal(img, two_images[name]), name
    assert len({img.tobytes() for img in one_images.values()}) > 1  # different classes and seeds, not one image
    packed = np.load(tmp_path / "s.npz")
    assert packed["images"].dtype == np.uint8 and packed["images"].shape == (n, 32, 32, 3)
    assert np.array_equal(packed["images"], np.stack([one_images[f"{i:06d}.png"] for i in range(n)]))
    assert packed["labels"].tolist() == [i % 10 for i in range(n)] and packed["seeds"].tolist() == list(range(5, 12))
    assert (one / "index.csv").read_text().splitlines()[1] == "000000.png,0,5"

    # a second run writes only what is missing (an interrupted run), and the same images again
    for i in (1, 4):
        (one / f"{i:06d}.png").unlink()
    kept = (one / "000000.png").stat().st_mtime_ns
    assert main(args) == {"written": 2, "skipped": 5, "out": one}
    assert (one / "000000.png").stat().st_mtime_ns == kept
    again = pngs(one)
    assert all(np.array_equal(again[name], img) for name, img in one_images.items())
    # a folder made with other settings is refused, not mixed
    with pytest.raises(SystemExit, match="other settings"):
        main([tiny_generator, "-n", str(n), "--out", str(one), "--cfg", "1.0"])


# --- scripts/generate_audio.py ---------------------------------------------------------------------------------------


def test_generate_audio_writes_a_resumable_clip_set(tmp_path, monkeypatch):
    """The audio twin of generate_image.py (the same zoo.sample_sets machinery): a tiny random audio GPT paired with
    the bundled WavTokenizer; WAVs at the tokenizer's rate, the same clips for any batch size, resumable, packed."""
    torch.manual_seed(0)
    gen = hub.build(zoo.model_info("llamagen-gpt-tiny-spoken-digits"), dim=32, n_layer=1, n_head=2, multiple_of=32,
                    block_size=15)
    with torch.no_grad():
        gen.output.weight.normal_(0, 1.0)
    gen.save_pretrained(tmp_path / "gen")
    spec = importlib.util.spec_from_file_location("generate_audio", REPO / "scripts" / "generate_audio.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    name, n = f"local-dir:{tmp_path / 'gen'}", 5
    out = tmp_path / "clips"
    assert module.main([name, "-n", str(n), "--out", str(out), "--batch-size", "2", "--npz",
                        str(tmp_path / "c.npz"), "--threads", "1"])["written"] == n
    clips = {p.name: zoo.io.load_audio(p) for p in sorted(out.glob("*.wav"))}
    assert sorted(clips) == [f"{i:06d}.wav" for i in range(n)]
    hop = zoo.load("wavtokenizer-tiny-75tps").hop_length
    assert all(sr == 24000 and wav.shape == (1, 15 * hop) for wav, sr in clips.values())
    packed = np.load(tmp_path / "c.npz")
    assert packed["audio"].shape == (n, 15 * hop) and int(packed["sample_rate"]) == 24000
    assert packed["labels"].tolist() == list(range(n))
    # the same clips at another batch size: the same codes (per-item seeds); the decoder's float rounding may differ
    # with the batch size by ~1e-7, which can flip the last bit of a 16-bit sample
    other = tmp_path / "other"
    module.main([name, "-n", str(n), "--out", str(other), "--batch-size", "5", "--threads", "1"])
    assert all((zoo.io.load_audio(other / f)[0] - clips[f][0]).abs().max() <= 1 / 32768 for f in clips)
    assert len({wav.numpy().tobytes() for wav, _ in clips.values()}) == n  # not one clip five times
    (out / "000003.wav").unlink()
    assert module.main([name, "-n", str(n), "--out", str(out), "--threads", "1"])["written"] == 1
    with pytest.raises(SystemExit, match="not a class-conditional audio generator"):
        module.main(["llamagen-gpt-tiny-fashion", "-n", "1", "--out", str(tmp_path / "x")])


def test_pretokenize_refuses_a_dataset_of_another_modality(tmp_path):
    with pytest.raises(ValueError, match="holds image data.*reads audio.*spoken-digits"):
        pretokenize(tmp_path, zoo.load("wavtokenizer-tiny-75tps"), dataset="fashion-mnist")
    with pytest.raises(ValueError, match="dataset must be one of"):
        pretokenize(tmp_path, zoo.load("wavtokenizer-tiny-75tps"), dataset="librispeech")
