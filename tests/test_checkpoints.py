"""Every weight-file failure mode gives an error that names the file and the problem."""

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from zoo import checkpoints
from zoo.checkpoints import CheckpointError


SAVED = {"w": torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), "b": torch.arange(4.0)}


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(SAVED, str(path))
    return path


def _model():
    return torch.nn.Linear(3, 4)


def test_roundtrip(good_file):
    sd = checkpoints.read_state_dict(good_file)
    assert sd.keys() == SAVED.keys() and all(torch.equal(sd[k], v) for k, v in SAVED.items())
    model = checkpoints.load_into(_model(), {"weight": sd["w"], "bias": sd["b"]}, source=str(good_file))
    assert torch.equal(model.weight, SAVED["w"]) and torch.equal(model.bias, SAVED["b"])


def test_truncated_file(good_file):
    data = good_file.read_bytes()
    good_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        checkpoints.read_state_dict(good_file)


def test_corrupt_header(good_file):
    data = bytearray(good_file.read_bytes())
    data[8:16] = b"\xff" * 8
    good_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoints.read_state_dict(good_file)


def test_empty_and_missing(tmp_path):
    empty = tmp_path / "model.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        checkpoints.read_state_dict(empty)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoints.read_state_dict(tmp_path / "absent.safetensors")


def test_sha256_mismatch(good_file):
    right = hashlib.sha256(good_file.read_bytes()).hexdigest()
    sd = checkpoints.read_state_dict(good_file, sha256=right)  # the right hash: the weights, read
    assert sd.keys() == SAVED.keys() and all(torch.equal(sd[k], v) for k, v in SAVED.items())
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        checkpoints.read_state_dict(good_file, sha256="0" * 64)


def test_missing_unexpected_and_shape_mismatch():
    with pytest.raises(CheckpointError, match=r"f\.bin.*1 missing keys \(e\.g\. bias\)"):
        checkpoints.load_into(_model(), {"weight": torch.zeros(4, 3)}, source="f.bin")
    with pytest.raises(CheckpointError, match="1 unexpected keys"):
        checkpoints.load_into(_model(), {"weight": torch.zeros(4, 3), "bias": torch.zeros(4),
                                         "extra": torch.zeros(1)}, source="f.bin")
    with pytest.raises(CheckpointError, match=r"weight: file \(3, 3\) vs model \(4, 3\)"):
        checkpoints.load_into(_model(), {"weight": torch.zeros(3, 3), "bias": torch.zeros(4)}, source="f.bin")


def test_pickle_only_tensors(tmp_path):
    ok = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"weight": torch.ones(2)}, "epoch": 3}, ok)
    assert checkpoints.unwrap_state_dict(checkpoints.read_state_dict(ok))["weight"].sum() == 2

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "bad.ckpt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(CheckpointError, match=r"GLOBAL print.*refused for safety"):
        checkpoints.read_state_dict(bad)


def test_truncated_pickle(tmp_path):
    path = tmp_path / "w.ckpt"
    torch.save({"w": torch.randn(100, 100)}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoints.read_state_dict(path)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"123")
    with pytest.raises(CheckpointError, match="unknown weight format"):
        checkpoints.read_state_dict(path)


def test_atomic_save_keeps_old_file_on_failure(good_file):
    before = good_file.read_bytes()
    with pytest.raises(RuntimeError):
        with checkpoints.atomic_path(good_file) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert good_file.read_bytes() == before
    assert [p.name for p in good_file.parent.iterdir()] == [good_file.name]
