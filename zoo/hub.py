"""Where weights come from, and `zoo.load`.

Sources, in the order `load` understands them:
* a registered name with bundled weights: the folder ``weights/<dir>/`` in zoo layout;
* a registered name with an official checkpoint: one file from a Hub repo at a pinned revision, converted by the
  spec's `filter_fn`;
* ``local-dir:PATH``: any folder in zoo layout (``config.json`` + ``model.safetensors``);
* ``hf-hub:org/repo[@revision]``: a Hub repository in zoo layout.

Hub files go through `hf_hub_download` (standard HF cache, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` all honoured) with
``library_name="tokzoo"``. A config can only name a registered architecture (see `zoo.registry`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub import errors as hf_errors

from . import checkpoints, registry
from .registry import HubFile, ModelSpec
from .version import __version__

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class WeightsUnavailableError(RuntimeError):
    """The weights are neither bundled nor in the local Hub cache, and the Hub cannot be reached."""


def weights_root() -> Path:
    """The folder of bundled models: ``$TOKZOO_WEIGHTS`` or the ``weights/`` folder shipped with the package."""
    env = os.environ.get("TOKZOO_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "weights"


def bundled_dir(spec: ModelSpec) -> Path:
    return weights_root() / spec.bundled


# ----------------------------------------------------------------------------------------------------------------
# Hub downloads

_offline: bool | None = None


def is_offline() -> bool:
    """Whether the Hub is out of reach: ``HF_HUB_OFFLINE`` is set, or one TCP connection to the Hub endpoint
    fails within 2 s. Probed once per process, so a machine without network fails in seconds, not after minutes
    of download retries."""
    global _offline
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return True
    if _offline is None:
        import socket
        from urllib.parse import urlparse

        url = urlparse(constants.ENDPOINT)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=2).close()
            _offline = False
        except OSError:
            _offline = True
    return _offline


def download(hub_file: HubFile, *, what: str, cache_dir: str | None = None) -> Path:
    """Fetch one pinned file through the HF cache; offline without a cached copy, say exactly what is missing."""
    offline = is_offline()
    try:
        path = hf_hub_download(
            repo_id=hub_file.repo_id,
            filename=hub_file.filename,
            revision=hub_file.revision,
            cache_dir=cache_dir,
            library_name="tokzoo",
            library_version=__version__,
            local_files_only=offline,
        )
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as err:
        from huggingface_hub import constants

        reason = "the Hub cannot be reached (offline" + (", HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE
                                                         or os.environ.get("HF_HUB_OFFLINE") else ")")
        raise WeightsUnavailableError(
            f"{what} needs {hub_file.filename!r} from the Hub repo {hub_file.repo_id!r} "
            f"(revision {hub_file.revision}), which is not in the local Hub cache "
            f"({cache_dir or constants.HF_HUB_CACHE}) and {reason}. "
            f"On a machine with internet run `zoo download {what}` (or `hf download {hub_file.repo_id} "
            f"{hub_file.filename} --revision {hub_file.revision}`) and copy its Hub cache here, or point "
            f"HF_HUB_CACHE at a cache that holds the file. Set HF_HUB_OFFLINE=1 to skip the network check."
        ) from err
    except hf_errors.EntryNotFoundError as err:
        raise WeightsUnavailableError(
            f"{what}: {hub_file.repo_id!r} has no file {hub_file.filename!r} at revision {hub_file.revision}"
        ) from err
    if hub_file.sha256 is not None:
        actual = checkpoints.sha256_of(path)
        if actual != hub_file.sha256.lower():
            raise checkpoints.CheckpointError(
                f"{path}: sha256 mismatch for {hub_file.repo_id}/{hub_file.filename}: expected "
                f"{hub_file.sha256.lower()}, got {actual}. Delete the cached file and download it again."
            )
    return Path(path)


def parse_hub_ref(ref: str) -> tuple[str, str | None]:
    """``org/repo[@revision]`` -> (repo_id, revision)."""
    repo_id, _, revision = ref.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"expected 'hf-hub:org/repo' or 'hf-hub:org/repo@revision', got 'hf-hub:{ref}'")
    return repo_id, revision or None


# ----------------------------------------------------------------------------------------------------------------
# zoo-layout folders


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise checkpoints.CheckpointError(f"{path}: missing; a zoo model folder needs {CONFIG_NAME}") from None
    except json.JSONDecodeError as err:
        raise checkpoints.CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise checkpoints.CheckpointError(f"{path}: expected a JSON object with an 'architecture' string")
    return config


def build_from_config(config: dict[str, Any], *, source: str, expected_class: type | None = None):
    """Instantiate the registered architecture a config names (allow-list only), from plain JSON values."""
    model_cls = registry.get_architecture(config["architecture"])
    if expected_class is not None and not issubclass(model_cls, expected_class):
        raise checkpoints.CheckpointError(
            f"{source}: config names architecture {config['architecture']!r} ({model_cls.__name__}), "
            f"not a {expected_class.__name__}"
        )
    try:
        return model_cls(model_cls.config_class(**config))
    except (TypeError, ValueError, RuntimeError) as err:
        raise checkpoints.CheckpointError(f"{source}: config does not fit {model_cls.__name__}: {err}") from err


def load_zoo_folder(ref: str | Path, *, hub: bool = False, revision: str | None = None,
                    expected_class: type | None = None, cache_dir: str | None = None, sha256: str | None = None,
                    overrides: dict[str, Any] | None = None):
    """Build and strictly load a model from a zoo-layout folder, or (``hub=True``) a Hub repo in zoo layout.

    `sha256`: the expected hash of the weights file (bundled models); `overrides`: config fields to change."""
    if not hub:
        folder = Path(ref)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        card_path = folder / "README.md"
    else:
        repo_id, rev = parse_hub_ref(str(ref))
        rev = revision or rev or "main"
        config_path = download(HubFile(repo_id, CONFIG_NAME, rev), what=f"hf-hub:{repo_id}", cache_dir=cache_dir)
        # The cache path names the commit the branch resolved to: read the weights at that same commit.
        commit = config_path.parent.name
        rev = commit if len(commit) == 40 and all(ch in "0123456789abcdef" for ch in commit) else rev
        weights_path = download(HubFile(repo_id, WEIGHTS_NAME, rev), what=f"hf-hub:{repo_id}", cache_dir=cache_dir)
        card_path = None
    config = {**read_config(config_path), **(overrides or {})}
    model = build_from_config(config, source=str(config_path), expected_class=expected_class)
    state_dict = checkpoints.read_state_dict(weights_path, sha256=sha256)
    checkpoints.load_into(model, state_dict, source=str(weights_path))
    if card_path is not None and card_path.is_file():
        model.card_info["card_path"] = str(card_path)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# zoo.load


def spec_config(spec: ModelSpec, **overrides: Any) -> dict[str, Any]:
    """The config a registered model is built with: its registered hyperparameters, the paired tokenizer of a
    generator, then `overrides`."""
    config = {**spec.config, "architecture": spec.architecture}
    if spec.tokenizer:
        config["tokenizer"] = spec.tokenizer
    return {**config, **overrides}


def build(spec: ModelSpec, **overrides: Any):
    """The architecture of a registered model with its registered hyperparameters, randomly initialised."""
    model_cls = registry.get_architecture(spec.architecture)
    try:
        config = model_cls.config_class(**spec_config(spec, **overrides))
    except TypeError as err:
        raise ValueError(f"{spec.name}: {err}") from None
    model = model_cls(config)
    model.card_info["spec"] = spec
    return model


def load_official(spec: ModelSpec, path: str | Path, **overrides: Any):
    """Build a registered model from an official checkpoint file (its own config first, where the family reads
    one) and load it through the spec's converter: what `load` does after the download, and `zoo convert`."""
    path = Path(path)
    if spec.config_from_checkpoint is not None:
        overrides = {**spec.config_from_checkpoint(path), **overrides}
    model = build(spec, **overrides)
    checkpoints.load_into(model, checkpoints.read_state_dict(path), source=str(path), filter_fn=spec.filter_fn)
    return model


def load(name: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
         pretrained: bool = True, revision: str | None = None, cache_dir: str | None = None, **overrides: Any):
    """Load a model in eval mode with strictly loaded weights.

    Args:
        name: a registered name (``zoo list``), ``local-dir:PATH`` or ``hf-hub:org/repo[@revision]``.
        device: where to put it (default CPU).
        dtype: floating dtype for the weights (families may keep parts, e.g. quantizers, in float32).
        pretrained: False gives the registered architecture with random weights.
        revision: another Hub revision than the pinned one (registered Hub entries, ``hf-hub:`` repos).
        cache_dir: Hub cache folder (default: the standard HF cache, ``HF_HUB_CACHE``).
        overrides: config fields to change, e.g. ``default_steps=8`` (a change that alters the weights' shapes
            fails strict loading with a clear error).
    """
    if not pretrained and name.startswith(("local-dir:", "hf-hub:")):
        raise ValueError(f"{name}: pretrained=False needs a registered model name (a folder or repo means weights)")
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):]).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{name}: no such folder")
        if revision is not None:
            raise ValueError(f"{name}: revision= applies to Hub models only")
        model = load_zoo_folder(folder, overrides=overrides)
    elif name.startswith("hf-hub:"):
        model = load_zoo_folder(name[len("hf-hub:"):], hub=True, revision=revision, cache_dir=cache_dir,
                                overrides=overrides)
    else:
        spec = registry.model_info(name)
        if not pretrained:
            model = build(spec, **overrides)
        elif spec.bundled:
            if revision is not None:
                raise ValueError(f"{name}: revision= applies to Hub models only; this one is bundled")
            folder = bundled_dir(spec)
            if not folder.is_dir():
                raise WeightsUnavailableError(f"{name}: bundled weights folder {folder} is missing")
            model = load_zoo_folder(folder, expected_class=registry.get_architecture(spec.architecture),
                                    sha256=spec.sha256,
                                    overrides={**({"tokenizer": spec.tokenizer} if spec.tokenizer else {}),
                                               **overrides})
        elif spec.hub_file:
            hub_file = spec.hub_file if revision is None else HubFile(spec.hub_file.repo_id, spec.hub_file.filename,
                                                                       revision)  # another revision: other bytes
            model = load_official(spec, download(hub_file, what=name, cache_dir=cache_dir), **overrides)
        else:
            raise WeightsUnavailableError(f"{name} has no weights; use pretrained=False for a random init")
        model.card_info.update(spec=spec)
    model.name = name
    model.card_info.setdefault("source", name)
    model = model.eval()
    if device is not None or dtype is not None:
        model = model.cast(device=device, dtype=dtype)
    return model


def is_available_offline(spec: ModelSpec, cache_dir: str | None = None) -> bool:
    """Whether `load(spec.name)` can succeed without the network."""
    if spec.bundled:
        return (bundled_dir(spec) / WEIGHTS_NAME).is_file()
    if spec.hub_file:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(spec.hub_file.repo_id, spec.hub_file.filename,
                                     revision=spec.hub_file.revision, cache_dir=cache_dir)
        return isinstance(hit, str)
    return False
