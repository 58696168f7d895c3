"""The model registry: one frozen `ModelSpec` per named model, and the allow-list of architectures.

Two tables live here, kept apart on purpose (as in timm):

* **architectures**: `architecture name -> model class`. This is the allow-list that `config.json` files are
  checked against. A config names an architecture; only classes registered here can ever be built, so nothing
  in a downloaded file can make the loader import or instantiate an arbitrary class.
* **models**: `model name -> ModelSpec`: which architecture, which hyperparameters, where the weights come from
  (bundled folder or pinned Hub file), and the facts a user compares models on.

Families register themselves in their package `__init__` and are found through the ``tokzoo.models`` entry-point
group, loaded lazily on the first registry lookup: `zoo` itself never imports a family by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib.metadata
import re
import threading
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

ENTRY_POINT_GROUP = "tokzoo.models"

KINDS = ("tokenizer", "generator", "accelerator", "autoencoder", "classifier")
MODALITIES = ("audio", "image")


class UnknownModelError(KeyError):
    """An unknown model name; the message lists the closest registered names."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


_ARCHITECTURES: dict[str, type] = {}
_MODELS: dict[str, "ModelSpec"] = {}
_families_loaded = False
FAILED_FAMILIES: dict[str, str] = {}  # entry-point name -> the import error, for families that failed to load
_lock = threading.RLock()


@dataclass(frozen=True)
class HubFile:
    """A file in a Hub repository, pinned to a commit.

    Attributes:
        repo_id: ``org/name`` on the Hugging Face Hub.
        filename: path of the file inside the repository.
        revision: the commit sha the file is read at (a branch name only where no sha is known; see the spec notes).
        sha256: optional sha256 of the file's bytes, checked after download.
    """

    repo_id: str
    filename: str
    revision: str = "main"
    sha256: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything the zoo knows about one named model.

    Weights come from exactly one of `bundled` (a folder under ``weights/`` in zoo layout: ``config.json``,
    ``model.safetensors``, ``README.md``; its `sha256` is checked on every load) or `hub_file` (an official
    checkpoint, converted by `filter_fn` at load time), or neither (architecture-only entries, e.g. token-reduction
    presets built on other weights).

    `config_from_checkpoint` (official checkpoints that carry their own config): reads the downloaded file's config
    through the family's allow-list and returns config fields that override `config` (it may fetch further pinned
    files through `zoo.hub.download`). `tokenizer` (generators): the registry name of the paired tokenizer or
    autoencoder that `Generator.sample` decodes through.
    """

    name: str
    family: str
    kind: str
    modality: str
    architecture: str
    config: Mapping[str, Any] = field(default_factory=dict)
    bundled: str | None = None
    hub_file: HubFile | None = None
    filter_fn: Callable[[dict, Any], dict] | None = None
    config_from_checkpoint: Callable[[Any], dict] | None = None
    sha256: str | None = None
    tokenizer: str | None = None
    license: str = "unknown"
    paper: str | None = None
    citation: str = ""
    origin_url: str | None = None
    description: str = ""
    codebook_size: int | None = None
    num_codebooks: int | None = None
    tokens_per_item: str | None = None  # human-readable, e.g. "75 / s" or "1-256 / image"
    sample_rate: int | None = None
    input_size: int | None = None
    datasets: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    notes: str = ""
    limitations: str = ""  # what the model cannot do, said plainly (shown by `zoo demo` and in the card)
    splits: Mapping[str, str] = field(default_factory=dict)  # trained here: {"train", "validation", "test"} -> what

    def __post_init__(self):
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name):
            raise ValueError(f"model name {self.name!r}: use lowercase letters, digits, '.', '_' and '-'")
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"{self.name}: modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.bundled and self.hub_file:
            raise ValueError(f"{self.name}: give either bundled weights or a hub_file, not both")
        if self.bundled and not self.sha256:
            raise ValueError(f"{self.name}: bundled weights need the sha256 of their model.safetensors")
        if self.bundled and set(self.splits) != {"train", "validation", "test"}:
            raise ValueError(f"{self.name}: a model trained here states its train / validation / test data (splits=)")
        if self.kind == "generator" and not self.tokenizer:
            raise ValueError(f"{self.name}: a generator names its paired tokenizer (tokenizer=...)")
        # Freeze the config so a caller cannot mutate the registry through a returned spec.
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "splits", MappingProxyType(dict(self.splits)))

    def __deepcopy__(self, memo) -> "ModelSpec":
        return self  # frozen and immutable (its mappings are read-only views): copies of a model share it

    @property
    def has_weights(self) -> bool:
        return bool(self.bundled or self.hub_file)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (for `zoo info` and the model cards)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("filter_fn", "config_from_checkpoint"):
                value = None if value is None else f"{value.__module__}.{value.__qualname__}"
            elif f.name in ("config", "splits"):
                value = dict(value)
            elif f.name == "hub_file" and value is not None:
                value = dataclasses.asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def register_architecture(name: str, model_cls: type | None = None):
    """Add a model class to the allow-list under `name`. Usable as a decorator."""

    def add(cls: type) -> type:
        with _lock:
            existing = _ARCHITECTURES.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(f"architecture {name!r} is already registered to {existing.__qualname__}")
            _ARCHITECTURES[name] = cls
        return cls

    return add if model_cls is None else add(model_cls)


def register_model(spec: ModelSpec | Callable[[], ModelSpec]):
    """Register a named model. Takes a `ModelSpec`, or decorates a function returning one (its result is used)."""
    resolved = spec() if callable(spec) and not isinstance(spec, ModelSpec) else spec
    if not isinstance(resolved, ModelSpec):
        raise TypeError(f"register_model expects a ModelSpec, got {type(resolved).__name__}")
    with _lock:
        existing = _MODELS.get(resolved.name)
        if existing is not None and existing != resolved:
            raise ValueError(f"model {resolved.name!r} is already registered (family {existing.family})")
        _MODELS[resolved.name] = resolved
    return spec


def _load_families() -> None:
    """Import every package registered under the ``tokzoo.models`` entry-point group, once."""
    global _families_loaded
    if _families_loaded:
        return
    with _lock:
        if _families_loaded:
            return
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry_point.load()
            except Exception as err:  # noqa: BLE001  (one broken family must not take the zoo down)
                FAILED_FAMILIES[entry_point.name] = f"{type(err).__name__}: {err}"
                warnings.warn(f"tokzoo: the model family {entry_point.name!r} ({entry_point.value}) failed to "
                              f"import and its models are unavailable: {type(err).__name__}: {err}",
                              RuntimeWarning, stacklevel=2)
        _families_loaded = True


def get_architecture(name: str) -> type:
    """The model class for an architecture name, from the allow-list only."""
    _load_families()
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(_ARCHITECTURES)) or "none"
        raise ValueError(
            f"unknown architecture {name!r}: a config may only name a registered architecture ({known})"
        ) from None


def list_models(pattern: str | list[str] = "*", *, kind: str | None = None, modality: str | None = None,
                pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style wildcard pattern (or any of a list), sorted.

    Args:
        pattern: e.g. ``"wavtokenizer*"`` or ``["*tiny*", "flextok*"]``.
        kind: only ``tokenizer``, ``generator`` or ``accelerator`` models.
        modality: only ``audio`` or ``image`` models.
        pretrained: only models that come with weights.
    """
    _load_families()
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    names = []
    for name, spec in _MODELS.items():
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if kind is not None and spec.kind != kind:
            continue
        if modality is not None and spec.modality != modality:
            continue
        if pretrained and not spec.has_weights:
            continue
        names.append(name)
    return sorted(names)


def model_info(name: str) -> ModelSpec:
    """The `ModelSpec` of a registered model; an unknown name raises with the closest registered names."""
    _load_families()
    spec = _MODELS.get(name)
    if spec is not None:
        return spec
    if "/" in name or ":" in name:
        raise ValueError(
            f"{name!r} is not a registered model name. For a Hub repository in zoo layout use "
            f"'hf-hub:{name.split(':')[-1]}', for a folder use 'local-dir:PATH'."
        )
    close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    if FAILED_FAMILIES:
        hint += f" (families that failed to import: {', '.join(sorted(FAILED_FAMILIES))})"
    raise UnknownModelError(f"unknown model {name!r}.{hint} `zoo list` shows every registered model.")
