"""Checkpoints as directories: ``config.json`` + ``model.safetensors``, written atomically.

Every model in ``core`` (the backbones and the heads) has a flat ``@dataclass`` config whose
fields are exactly its constructor's arguments, and inherits :class:`PretrainedMixin`:

    model.save_pretrained("runs/lm")            # runs/lm/{config.json, model.safetensors}
    same = MambaLM.from_pretrained("runs/lm")
    any_model = core.load_pretrained("runs/lm")  # rebuilt from config.json's class name

The directory is written under a temporary name beside the target and renamed into place, so
a crash or a kill never leaves a half-written checkpoint under the target name. Loading
never unpickles: the config is JSON, the weights safetensors, and the class comes from a
registry of the classes defined in this package (never from an import path in the file).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

_REGISTRY: dict[str, type] = {}


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def _write_dir_atomically(directory, write):
    """Call ``write(tmp_dir)`` on a fresh temporary directory beside ``directory`` and then
    move it to ``directory`` (replacing an existing one). On any error the temporary
    directory is removed and an existing ``directory`` is left as it was."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():           # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():
            # os.replace cannot replace a non-empty directory: move the old one aside first,
            # so that the target name holds either the old or the new checkpoint, never a mix.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for a module with a dataclass ``config``.

    A subclass sets ``config_class`` and keeps ``self.config`` (an instance of it) such that
    ``cls(**dataclasses.asdict(self.config))`` rebuilds the same architecture.
    """

    config_class: type = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

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

        def write(tmp):
            (tmp / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
            for name, obj in (extra_json or {}).items():
                if Path(name).name != name or name in (CONFIG_NAME, WEIGHTS_NAME):
                    raise ValueError(f"save_pretrained: bad extra file name {name!r}")
                (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
            # save_model drops the duplicate names of tied/shared tensors (the tied LM head,
            # the projections shared by the two directions of a BiMamba layer).
            save_model(self, str(tmp / WEIGHTS_NAME))

        _write_dir_atomically(directory, write)

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        """Rebuild the model saved in ``directory``; ``cls`` must match the saved class
        (use :func:`load_pretrained` to load whatever class it is)."""
        model = load_pretrained(directory, device=device)
        if not isinstance(model, cls):
            raise TypeError(f"{directory}: holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def read_config(directory):
    """The parsed ``config.json`` of a checkpoint directory (class name, dtype, config)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint config here")
    payload = json.loads(path.read_text())
    for key in ("class", "config"):
        if key not in payload:
            raise ValueError(f"{path}: missing key {key!r}")
    return payload


def load_pretrained(directory, device="cpu"):
    """Rebuild any ``core`` model from a directory written by ``save_pretrained``.

    The class is looked up by the name in config.json among the registered model classes;
    the config must have exactly that class's fields; the weights are read with safetensors
    (no pickle) and must match the architecture exactly (strict).

    >>> model = core.load_pretrained("runs/lm")
    """
    from safetensors.torch import load_model

    payload = read_config(directory)
    name = payload["class"]
    if name not in _REGISTRY:
        raise ValueError(f"{directory}: unknown model class {name!r} "
                         f"(known: {', '.join(sorted(_REGISTRY))})")
    cls = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    given = set(payload["config"])
    if given - fields:
        raise ValueError(f"{directory}/{CONFIG_NAME}: unknown config fields "
                         f"{sorted(given - fields)} for {name}")
    config = cls.config_class(**payload["config"])
    model = cls(**dataclasses.asdict(config))
    dtype = getattr(torch, payload.get("dtype", "float32"))
    model.to(dtype=dtype)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights missing")
    load_model(model, str(weights), strict=True)    # raises on missing or unexpected keys
    return model.to(device).eval()
