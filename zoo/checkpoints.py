"""Safe state-dict reading and strict loading.

* safetensors first; a pickle (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) only through ``torch.load(weights_only=True)``,
  which refuses anything but tensors and plain containers.
* Every failure names the file and says what is wrong: truncated or corrupt bytes, a sha256 mismatch, missing or
  unexpected keys, shape mismatches.
* Writes are atomic: a file is written next to its destination and renamed into place, so an interrupted save
  never leaves a partial file where a good one was.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

SAFE_PICKLE_GLOBALS = [argparse.Namespace]  # classes a weights-only pickle may hold beside tensors
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(RuntimeError):
    """A weight file that cannot be used; the message names the file and the problem."""


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | os.PathLike, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file or a tensors-only pickle.

    Args:
        path: the weight file.
        sha256: if given, the file's bytes must hash to it.

    Returns:
        The flat ``{key: tensor}`` mapping as stored (for Lightning-style pickles: the whole top-level dict; use
        `unwrap_state_dict` to reach the weights).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: weight file is empty (0 bytes); the download or copy was interrupted")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256.lower():
            raise CheckpointError(
                f"{path}: sha256 mismatch: expected {sha256.lower()}, file has {actual}. "
                "The file is corrupt or a different version; delete it and download again."
            )
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({err}); it is truncated or corrupt"
            ) from err
    if path.suffix in PICKLE_SUFFIXES:
        try:
            # training scripts (MAE / MAR / TokenBridge) store their argparse.Namespace beside the weights: a plain
            # attribute bag, allowed; anything else inside it is still refused
            with torch.serialization.safe_globals(SAFE_PICKLE_GLOBALS):
                return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "Weights only load failed" in str(err):
                found = str(err).split("Unsupported global:")[-1].split(" was not")[0].strip()
                raise CheckpointError(
                    f"{path}: holds objects other than tensors ({found}); refused for safety: pickles are only "
                    "read with torch.load(weights_only=True)"
                ) from None
            raise CheckpointError(f"{path}: not a readable pickle ({err}); it is truncated or corrupt") from err
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable checkpoint ({err}); it is truncated or corrupt") from err
    raise CheckpointError(
        f"{path}: unknown weight format {path.suffix!r}; expected .safetensors or one of {PICKLE_SUFFIXES}"
    )


def unwrap_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    """Reach the weights in a Lightning / training checkpoint (``state_dict`` or ``model`` entry)."""
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def state_differences(state_dict: dict[str, torch.Tensor], model: torch.nn.Module
                      ) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """How `state_dict` differs from `model`'s: missing keys, unexpected keys (both sorted) and
    ``(key, shape in state_dict, shape in model)`` for every shared key whose shapes differ (model order)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in expected.items()
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    return missing, unexpected, mismatched


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, source: str,
              filter_fn: Callable[[dict, torch.nn.Module], dict] | None = None) -> torch.nn.Module:
    """Strictly load `state_dict` (optionally converted by `filter_fn`) into `model`.

    Every key must be present with the right shape; nothing may be left over. `source` names the file in errors.
    """
    if filter_fn is not None:
        try:
            state_dict = filter_fn(state_dict, model)
        except (KeyError, ValueError, AssertionError) as err:
            raise CheckpointError(f"{source}: cannot convert this checkpoint: {err}") from err
    missing, unexpected, mismatched = state_differences(state_dict, model)
    mismatched = [f"{k}: file {got} vs model {want}" for k, got, want in mismatched]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({'; '.join(mismatched[:5])})")
    if problems:
        raise CheckpointError(
            f"{source}: weights do not match the model architecture: " + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)
    return model


def check_converted(state_dict: dict[str, torch.Tensor], model: torch.nn.Module, *, blocks: str, depth: int,
                    hint: str = "another size?") -> None:
    """The end of a ``checkpoint_filter_fn``: a converted `state_dict` must hold exactly `model`'s keys (else
    `KeyError`) with its shapes (else `ValueError`). `blocks` is the key prefix of the stacked blocks (such as
    ``"layers."``): the message counts the checkpoint's blocks against the model's `depth`."""
    missing, unexpected, mismatched = state_differences(state_dict, model)
    if missing or unexpected:
        found = len({k[len(blocks):].split(".")[0] for k in state_dict if k.startswith(blocks)})
        raise KeyError(f"checkpoint and model differ: {len(missing)} missing keys (e.g. {missing[:4]}), "
                       f"{len(unexpected)} unexpected (e.g. {unexpected[:4]}); the checkpoint has {found} "
                       f"{blocks.rstrip('.')} blocks, the model {depth}: is this the right entry?")
    bad = [f"{k}: checkpoint {got} vs model {want}" for k, got, want in mismatched]
    if bad:
        raise ValueError(f"{len(bad)} shape mismatches ({'; '.join(bad[:4])}): {hint}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp (or a writer re-creating the file) leaves 0600: exports must be readable
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def holds_state_dict(path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether the safetensors file at `path` holds exactly `state_dict` (keys, dtypes, values)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        stored = load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return False
    return stored.keys() == state_dict.keys() and all(
        stored[k].dtype == v.dtype and torch.equal(stored[k], v.detach().cpu()) for k, v in state_dict.items())


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                    metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (contiguous, detached, CPU copies of the tensors)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
