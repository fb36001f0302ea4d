"""What a model folder holds, and how it is written and read: the one module that knows.

A model folder (what ``save_pretrained`` writes, and every ``model/`` or checkpoint folder of
a training run) holds

    config.json        {"class": name, "format_version": 1, "dtype": ..., "config": {...}}:
                       the model's class by name and its config dataclass's fields
    model.safetensors  the weights
    tokenizer.json     the tokenizer's settings (``TOKENIZER_FILE``; genome models)
    classes.json       the class names of a classifier, in label order (``CLASSES_FILE``)
and may hold more JSON files beside (``extra_json``: metrics, ...):

    model.save_pretrained("runs/lm", extra_json=model_assets(tokenizer=tok))
    same = MambaLM.from_pretrained("runs/lm")
    any_model = load_pretrained("runs/lm")       # rebuilt from config.json's class name

The folder is written under a temporary name beside the target and renamed into place, so
a crash or a kill never leaves a half-written folder under the target name. Loading never
unpickles: the config is JSON, the weights safetensors, and the class comes from the
registry of model classes, by name (never from an import path in the file). A model class
registers itself with the ``@register_model_class`` decorator, so that loading a folder needs
the module that defines its class imported: ``mambaseq.core`` for the core models, the
domain modules for theirs (``mambaseq.mamba_bio.heads``: MaskedLM; ``mambaseq.mamba_audio``:
AudioLM, WordClassifier). This module imports no model module.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import torch

from .atomic import atomic_dir

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CLASSES_FILE = "classes.json"
ASSET_FILES = (TOKENIZER_FILE, CLASSES_FILE)   # the JSON files that travel with a model
FORMAT_VERSION = 1

_MODEL_CLASSES: dict[str, type] = {}
# Only for the error message of a class not registered yet: the module that registers it.
_DEFINED_IN = {"MaskedLM": "mambaseq.mamba_bio.heads", "AudioLM": "mambaseq.mamba_audio",
               "WordClassifier": "mambaseq.mamba_audio"}


def register_model_class(cls: type) -> type:
    """Class decorator: make ``cls`` loadable from a model folder under ``cls.__name__``.

    Raises:
        ValueError: another class (not a re-import of the same one) has that name.
    """
    known = _MODEL_CLASSES.get(cls.__name__)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__,
                                                                        cls.__qualname__):
        raise ValueError(f"model class name {cls.__name__!r} is taken by "
                         f"{known.__module__}.{known.__qualname__}")
    _MODEL_CLASSES[cls.__name__] = cls
    return cls


def model_classes() -> dict[str, type]:
    """The registered model classes by name (a copy)."""
    return dict(_MODEL_CLASSES)


def model_class(name: str, where: str | Path = "config.json") -> type:
    """The registered model class called ``name``.

    Raises:
        ValueError: no class of that name is registered; names ``where`` (the config file),
            the class and, for a toolkit class, the module to import.
    """
    if name in _MODEL_CLASSES:
        return _MODEL_CLASSES[name]
    hint = (f"; import {_DEFINED_IN[name]} first, which registers it" if name in _DEFINED_IN
            else "; a model class is registered (@register_model_class) when its module is "
                 "imported")
    raise ValueError(f"{where}: unknown model class {name!r} (registered: "
                     f"{', '.join(sorted(_MODEL_CLASSES))}){hint}")


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for a module built as ``cls(config)``.

    A subclass sets ``config_class`` (a keyword-only dataclass) and calls
    ``super().__init__(config)``, which checks the config's type and keeps it as
    ``self.config``; ``cls(config)`` rebuilds the same architecture. It may set
    ``config_class.renamed_fields`` (old name -> new name) to read config.json files
    written before a field was renamed.
    """

    config_class: type = None

    def __init__(self, config):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes one {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        super().__init__()
        self.config = config

    def save_pretrained(self, directory, extra_json=None):
        """Write the model folder ``directory`` atomically (replaced if it exists).

        Args:
            directory (str or Path): the model folder.
            extra_json (dict[str, object], optional): more JSON files written in the same
                atomic step, e.g. ``model_assets(tokenizer=tok)`` or
                ``{"metrics.json": m}``.
        """
        from safetensors.torch import save_model

        first = next(iter(self.parameters()))
        payload = {"class": type(self).__name__, "format_version": FORMAT_VERSION,
                   "dtype": _dtype_name(first.dtype), "config": dataclasses.asdict(self.config)}
        with atomic_dir(directory) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
            for name, obj in (extra_json or {}).items():
                if Path(name).name != name or name in (CONFIG_FILE, WEIGHTS_FILE):
                    raise ValueError(f"save_pretrained: bad extra file name {name!r}")
                (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
            # save_model drops the duplicate names of tied/shared tensors (the tied LM head,
            # the projections shared by the two directions of a BiMamba layer).
            save_model(self, str(tmp / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        """Rebuild the model saved in ``directory``; it must hold a ``cls`` (use
        :func:`load_pretrained` to load whatever class it is)."""
        return load_pretrained(directory, device=device, expected=cls)


def model_assets(tokenizer=None, classes: list[str] | None = None) -> dict[str, object]:
    """The JSON files that make a model folder self-contained, for ``extra_json``.

    Args:
        tokenizer: a tokenizer with ``to_config()`` (e.g. ``CharTokenizer``), or None.
        classes: the class names of a classifier, in label order, or None.
    Returns:
        ``{"tokenizer.json": {...}, "classes.json": [...]}`` (the ones given).
    """
    assets: dict[str, object] = {}
    if tokenizer is not None:
        assets[TOKENIZER_FILE] = tokenizer.to_config()
    if classes is not None:
        assets[CLASSES_FILE] = list(classes)
    return assets


def _read_json(path: Path, what: str):
    """The parsed JSON file ``path``; errors name it and say what it should hold."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a model folder needs its {what} "
                                f"(written with the model by the training command)")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_config(directory):
    """The parsed ``config.json`` of a model folder (class name, dtype, config).

    Raises:
        FileNotFoundError: no such directory or no config.json in it.
        ValueError: config.json is not JSON, or lacks "class" or "config"; names the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model directory")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint config here")
    payload = _read_json(path, "config")
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    for key in ("class", "config"):
        if key not in payload:
            raise ValueError(f"{path}: missing key {key!r}")
    if not isinstance(payload["config"], dict):
        raise ValueError(f"{path}: \"config\" must be an object of the model's arguments")
    return payload


def read_tokenizer_config(directory) -> dict:
    """The tokenizer settings of a model folder (``tokenizer.json``), never a default.

    Raises:
        FileNotFoundError: the folder has no tokenizer.json.
        ValueError: not a JSON object; names the file.
    """
    path = Path(directory) / TOKENIZER_FILE
    config = _read_json(path, "tokenizer")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def read_classes(directory, num_classes: int | None = None) -> list[str]:
    """The class names of a classifier's model folder (``classes.json``), in label order.

    Args:
        num_classes (int, optional): the number of the model's outputs, which the names
            must match.
    Raises:
        FileNotFoundError: the folder has no classes.json.
        ValueError: not a non-empty list of distinct strings (of ``num_classes``); names the
            file.
    """
    path = Path(directory) / CLASSES_FILE
    classes = _read_json(path, "class names")
    if (not isinstance(classes, list) or not classes
            or not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes)
            or num_classes is not None and len(classes) != num_classes):
        what = ("a non-empty list of distinct class names" if num_classes is None
                else f"a list of {num_classes} distinct class names (the model's outputs)")
        raise ValueError(f"{path}: expected {what}, got {classes!r}")
    return classes


def read_assets(directory) -> dict[str, object]:
    """The asset files (``ASSET_FILES``) a model folder holds, by name (to copy them on)."""
    found = {}
    for name in ASSET_FILES:
        path = Path(directory) / name
        if path.is_file():
            found[name] = _read_json(path, name)
    return found


def _build(cls, payload: dict, path: Path, device=None) -> torch.nn.Module:
    """``cls`` built from the config of ``path`` (config.json); every field is checked.

    ``device="meta"`` builds the architecture without memory (its tensors have shapes and no
    data), for a class whose constructor takes ``device``; a class without one (e.g.
    ``mamba_audio.WordClassifier``, small by design) is built on the CPU.
    """
    config_class = cls.config_class
    given = dict(payload["config"])
    for old, new in getattr(config_class, "renamed_fields", {}).items():
        if old in given and new not in given:
            given[new] = given.pop(old)
    fields = {f.name for f in dataclasses.fields(config_class)}
    if set(given) - fields:
        raise ValueError(f"{path}: unknown config fields {sorted(set(given) - fields)} for "
                         f"{cls.__name__}")
    factory = ({"device": device} if device is not None
               and "device" in inspect.signature(cls).parameters else {})
    try:
        model = cls(config_class(**given), **factory)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: the config does not build a {cls.__name__}: {first}") from None
    dtype = getattr(torch, str(payload.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{path}: unknown dtype {payload.get('dtype')!r}")
    return model.to(dtype=dtype)


def safetensors_shapes(weights: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a safetensors file, from its header alone (no tensor
    is read).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable safetensors file (truncated, another format); names it.
    """
    from safetensors import SafetensorError, safe_open

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights missing")
    try:
        with safe_open(str(weights), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as err:
        raise ValueError(f"{weights}: not a readable safetensors file (truncated or another "
                         f"format: {err})") from None


def check_weight_shapes(model: torch.nn.Module, weights: str | Path, config: str | Path) -> None:
    """Refuse a weights file whose tensor names or shapes are not those of ``model`` (built
    from ``config``, on the meta device or not), reading only the file's header.

    Tensors shared inside the model (tied or shared projections) are stored once, under
    any one of their names (as ``safetensors.torch.save_model`` writes them).

    Raises:
        FileNotFoundError: no such weights file.
        ValueError: one line naming both files and the first missing, unexpected or
            mis-shaped tensor.
    """
    stored = safetensors_shapes(weights)
    tensors = model.state_dict(keep_vars=True)          # the tensors themselves: shared ones
    shared: dict[int, list[str]] = {}                    # are one object, with several names
    for name, t in tensors.items():
        shared.setdefault(id(t), []).append(name)
    expected = {name: tuple(t.shape) for name, t in tensors.items()}
    what = f"{weights}: the weights do not fit the {type(model).__name__} of {config}"
    unexpected = [k for k in stored if k not in expected]
    if unexpected:
        raise ValueError(f"{what}: unexpected tensor {unexpected[0]} ({len(unexpected)} in all)")
    missing = [names[0] for names in shared.values() if not any(n in stored for n in names)]
    if missing:
        raise ValueError(f"{what}: tensor {missing[0]} missing ({len(missing)} in all)")
    for k, shape in expected.items():
        if k in stored and stored[k] != shape:
            raise ValueError(f"{what}: {k} has shape {stored[k]}, the config implies {shape}")


def load_weights(model: torch.nn.Module, weights: str | Path) -> None:
    """Load a safetensors file into ``model`` exactly (no missing, no unexpected names).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors file (truncated, another format), or weights that do
            not fit the model; one line naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights missing")
    try:
        load_model(model, str(weights), strict=True)
    except SafetensorError as err:
        raise ValueError(f"{weights}: not a readable safetensors file (truncated or another "
                         f"format: {err})") from None
    except RuntimeError as err:    # names or shapes that do not fit
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = "; ".join(ln if len(ln) <= 160 else ln[:157] + "..."
                           for ln in (lines[1:3] if len(lines) > 1 else lines))
        raise ValueError(f"{weights}: the weights do not fit the {type(model).__name__} of its "
                         f"config ({detail})") from None


def load_pretrained(directory, device="cpu", expected: type | None = None):
    """Rebuild the model of a model folder written by ``save_pretrained``, in eval mode.

    Args:
        directory (str or Path): the model folder.
        device (str, "cpu"): where the model goes.
        expected (type, optional): the class the folder must hold (``from_pretrained``'s);
            by default any registered class, by the name config.json gives.

    The config must have exactly the class's fields; the weights are read with safetensors
    (no pickle) and must match the architecture exactly. Their names and shapes are checked
    against the config (the file's header against a model on the meta device) before the
    model is built, so a config that disagrees with its weights allocates nothing.

    Raises:
        FileNotFoundError: no folder, config.json or weights.
        TypeError: the folder holds another class than ``expected``.
        ValueError: unknown class, bad config or weights; names the file.

    >>> from mambaseq import core
    >>> lm = core.MambaLM(core.MambaLMConfig(vocab_size=16, d_model=32, n_layer=1))
    >>> lm.save_pretrained("lm")
    >>> sorted(p.name for p in Path("lm").iterdir())
    ['config.json', 'model.safetensors']
    >>> model = core.load_pretrained("lm"); type(model).__name__, model.training
    ('MambaLM', False)
    >>> ids = torch.randint(0, 16, (2, 10)); torch.equal(model(ids), lm(ids))
    True
    """
    payload = read_config(directory)
    path = Path(directory) / CONFIG_FILE
    name = payload["class"]
    if expected is not None and name != expected.__name__:
        raise TypeError(f"{directory}: holds a {name}, not a {expected.__name__}")
    cls = expected or model_class(name, path)
    weights = Path(directory) / WEIGHTS_FILE
    # Shapes first, from the safetensors header and a model without memory: a config.json
    # that disagrees with its weights (d_model 8000 beside a small file) allocates nothing.
    model = _build(cls, payload, path, device="meta")
    check_weight_shapes(model, weights, path)
    if any(t.is_meta for t in model.state_dict().values()):
        model = _build(cls, payload, path)
    load_weights(model, weights)
    return model.to(device).eval()
