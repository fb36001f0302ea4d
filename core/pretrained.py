"""Checkpoints as directories: ``config.json`` + ``model.safetensors``, written atomically.

Every model in ``core`` (the backbones and the heads) has a flat ``@dataclass`` config whose
fields are exactly its constructor's arguments, and inherits :class:`PretrainedMixin`:

    model.save_pretrained("runs/lm")            # runs/lm/{config.json, model.safetensors}
    same = MambaLM.from_pretrained("runs/lm")
    any_model = core.load_pretrained("runs/lm")  # rebuilt from config.json's class name

The directory is written under a temporary name beside the target and renamed into place, so
a crash or a kill never leaves a half-written checkpoint under the target name. Loading
never unpickles: the config is JSON, the weights safetensors, and the class comes from an
explicit map of names to classes (never from an import path in the file): ``core``'s own
by default, ``pipelines.checkpoint.MODEL_CLASSES`` for every model of the toolkit.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import torch

from .atomic import atomic_dir

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for a module with a dataclass ``config``.

    A subclass sets ``config_class`` and keeps ``self.config`` (an instance of it) such that
    ``cls(**dataclasses.asdict(self.config))`` rebuilds the same architecture.
    """

    config_class: type = None

    def save_pretrained(self, directory, extra_json=None):
        """Write ``directory/config.json`` and ``directory/model.safetensors`` atomically.

        Args:
            directory (str or Path): the checkpoint directory (replaced if it exists).
            extra_json (dict[str, dict], optional): more JSON files written in the same
                atomic step, e.g. ``{"tokenizer.json": tok.to_dict(), "metrics.json": m}``.
        """
        from safetensors.torch import save_model

        config = self.config
        if hasattr(config, "check_saveable"):
            config.check_saveable()
        first = next(iter(self.parameters()))
        payload = {"class": type(self).__name__, "format_version": FORMAT_VERSION,
                   "dtype": _dtype_name(first.dtype), "config": dataclasses.asdict(config)}

        with atomic_dir(directory) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
            for name, obj in (extra_json or {}).items():
                if Path(name).name != name or name in (CONFIG_NAME, WEIGHTS_NAME):
                    raise ValueError(f"save_pretrained: bad extra file name {name!r}")
                (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
            # save_model drops the duplicate names of tied/shared tensors (the tied LM head,
            # the projections shared by the two directions of a BiMamba layer).
            save_model(self, str(tmp / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        """Rebuild the model saved in ``directory``; it must hold a ``cls`` (use
        :func:`load_pretrained` to load whatever class it is)."""
        return load_pretrained(directory, device=device, classes={cls.__name__: cls})


def core_models() -> dict[str, type]:
    """The model classes of ``core`` by name: what :func:`load_pretrained` knows by default."""
    from .backbone import MambaBackbone
    from .bimamba import BiMambaBackbone
    from .heads import MambaLM, SequenceClassifier
    from .multiscale import MultiscaleBackbone

    return {c.__name__: c for c in (MambaBackbone, BiMambaBackbone, MultiscaleBackbone,
                                    MambaLM, SequenceClassifier)}


def read_config(directory):
    """The parsed ``config.json`` of a checkpoint directory (class name, dtype, config).

    Raises:
        FileNotFoundError: no such directory or no config.json in it.
        ValueError: config.json is not JSON, or lacks "class" or "config"; names the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model directory")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint config here")
    try:
        payload = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    for key in ("class", "config"):
        if key not in payload:
            raise ValueError(f"{path}: missing key {key!r}")
    if not isinstance(payload["config"], dict):
        raise ValueError(f"{path}: \"config\" must be an object of the model's arguments")
    return payload


def _build(cls, payload: dict, path: Path, device=None) -> torch.nn.Module:
    """``cls`` built from the config of ``path`` (config.json); every field is checked.

    ``device="meta"`` builds the architecture without memory (its tensors have shapes and no
    data), passed to a class whose constructor takes ``device``; a class without one (e.g.
    ``mamba_audio.WordClassifier``, small by design) is built on the CPU.
    """
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    given = set(payload["config"])
    if given - fields:
        raise ValueError(f"{path}: unknown config fields {sorted(given - fields)} for "
                         f"{cls.__name__}")
    factory = ({"device": device} if device is not None
               and "device" in inspect.signature(cls).parameters else {})
    try:
        config = cls.config_class(**payload["config"])
        model = cls(**dataclasses.asdict(config), **factory)
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


def load_pretrained(directory, device="cpu", classes: dict[str, type] | None = None):
    """Rebuild a model from a directory written by ``save_pretrained``.

    Args:
        directory (str or Path): the model directory.
        device (str, "cpu"): where the model goes.
        classes (dict[str, type] or None): the classes that may be loaded, by the name
            config.json gives; default :func:`core_models`. A domain layer passes its own
            (e.g. ``pipelines.checkpoint.MODEL_CLASSES``). The class is never imported from a
            path in the file.

    The config must have exactly the class's fields; the weights are read with safetensors
    (no pickle) and must match the architecture exactly. Their names and shapes are checked
    against the config (the file's header against a model on the meta device) before the
    model is built, so a config that disagrees with its weights allocates nothing.

    Raises:
        FileNotFoundError: no directory, config.json or model.safetensors.
        ValueError: a config, weights file or mismatch between them, in one line naming
            the file (and the first tensor that differs).

    >>> model = core.load_pretrained("runs/lm")
    """
    classes = core_models() if classes is None else classes
    payload = read_config(directory)
    path = Path(directory) / CONFIG_NAME
    name = payload["class"]
    if name not in classes:
        if len(classes) == 1:
            raise TypeError(f"{directory}: holds a {name}, not a {next(iter(classes))}")
        raise ValueError(f"{path}: unknown model class {name!r} "
                         f"(known: {', '.join(sorted(classes))})")
    weights = Path(directory) / WEIGHTS_NAME
    # Shapes first, from the safetensors header and a model without memory: a config.json
    # that disagrees with its weights (d_model 8000 beside a small file) allocates nothing.
    model = _build(classes[name], payload, path, device="meta")
    check_weight_shapes(model, weights, path)
    if any(t.is_meta for t in model.state_dict().values()):
        model = _build(classes[name], payload, path)
    load_weights(model, weights)
    return model.to(device).eval()
