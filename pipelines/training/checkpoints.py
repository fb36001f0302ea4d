"""Checkpoints of a training run, which a kill at any moment cannot leave half-written.

Every model folder the trainer writes, ``<out>/model/``, ``<out>/checkpoints/step_XXXXXXX/``
and ``<out>/checkpoints/best/``, is a self-contained model folder (``core.model_folder``:
config, weights, and the run's assets, ``tokenizer.json`` and ``classes.json``), which
``core.load_pretrained`` reads; a checkpoint also holds

    trainer_state.pt     optimizer, scheduler, grad scaler, RNG states, step, counters:
                         tensors, numbers, lists and dicts only (loaded with weights_only=True)
    train_config.json    the TrainConfig of the run
    metrics.json         the latest training/validation metrics at that step

Each folder is written through ``core.atomic.atomic_dir`` (a temporary name, then a rename),
so a folder called ``model``, ``step_*`` or ``best`` is always complete.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch

from mambaseq.core.atomic import OLD_PREFIX, TMP_PREFIX, atomic_dir
from mambaseq.core.model_folder import load_pretrained, load_weights

STATE_FILE = "trainer_state.pt"
BEST = "best"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def load_model(directory: str | os.PathLike, device: str = "cpu") -> torch.nn.Module:
    """The model of any toolkit model folder or checkpoint (eval mode), whatever its class:
    the domain layers' model classes (``MaskedLM``, ``AudioLM``, ``WordClassifier``) are
    registered with ``core.model_folder`` first, then ``core.load_pretrained`` reads it.

    Raises:
        FileNotFoundError, ValueError: as ``core.load_pretrained``, naming the file.
    """
    import mambaseq.mamba_audio  # noqa: F401  (registers AudioLM and WordClassifier)
    import mambaseq.mamba_bio.heads  # noqa: F401  (registers MaskedLM)

    return load_pretrained(directory, device=device)


def step_dir_name(step: int) -> str:
    """``step_0000100`` for step 100."""
    return f"step_{step:07d}"


# -- checkpoints --------------------------------------------------------------------------

def write_checkpoint(root: str | os.PathLike, name: str, model: torch.nn.Module, state: dict,
                     train_config: dict, metrics: dict, assets: dict | None = None) -> Path:
    """Write one complete checkpoint directory ``root/name`` atomically.

    Args:
        root: the checkpoints folder, created when missing.
        name: ``step_dir_name(step)`` or ``BEST``; an existing one is replaced.
        model: the unwrapped model, with ``save_pretrained(dir, extra_json=None)`` (every
            model class of the toolkit: ``core.model_folder``).
        state: ``torch.save``-able dict of tensors, numbers, strings, lists, dicts.
        train_config, metrics: JSON-ready dicts.
        assets: file name -> JSON-ready object (``core.model_assets``).
    Returns:
        the checkpoint's path.
    Raises:
        OSError: "no space left on device while writing <path>" on a full disk; the
            previous checkpoint of that name is kept and nothing temporary is left.
    """
    dest = Path(root) / name
    # Serialised in memory first: torch.save on a full disk fails with "unexpected pos",
    # a plain write with ENOSPC, which atomic_dir reports by name.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, extra_json=assets)
        (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / STATE_FILE).write_bytes(buffer.getvalue())
    return dest


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete ``step_*`` checkpoints under ``root`` as ``(step, path)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete ``step_*`` checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def prune_checkpoints(root: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest ``step_*`` checkpoints (``best`` is kept)."""
    for _, path in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path)


def clean_stale(root: str | os.PathLike) -> None:
    """Remove what a killed writer left: ``.tmp-*`` folders and files; an ``.old-<name>-<pid>``
    swapped out just before the kill is put back when ``<name>`` is missing."""
    root = Path(root)
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)        # an atomic_file's, e.g. config.json's
        elif p.name.startswith(OLD_PREFIX):
            original = root / p.name[len(OLD_PREFIX):].rsplit("-", 1)[0]
            if original.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.rename(p, original)


def load_state(path: str | os.PathLike) -> dict:
    """The ``trainer_state.pt`` of checkpoint ``path`` (weights_only: no code runs).

    Raises:
        ValueError: the file holds anything but tensors, numbers, strings, lists and dicts
            (it is not trusted and not loaded), or is not a readable trainer state; the
            message names the file.
    """
    file = Path(path) / STATE_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # PyTorch's own message suggests weights_only=False, which would run the file's code.
        raise ValueError(f"{file}: checkpoint not trusted: it holds objects other than "
                         "tensors, numbers, strings, lists and dicts, so it is not loaded") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{file}: not a readable trainer state (truncated or another "
                         f"format: {str(err).splitlines()[0] if str(err) else err!r})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{file}: not a trainer state (no step counter)")
    return state


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load the weights a ``save_pretrained`` wrote into ``path`` into ``model``, in place.

    Reads the directory's one ``*.safetensors`` file (tied weights stored once are fine).

    Raises:
        FileNotFoundError: no or several safetensors files.
        ValueError: the weights do not fit the model, or the file is not safetensors.
    """
    files = sorted(Path(path).glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"checkpoint {path} should hold one .safetensors weights file, "
                                f"found {[f.name for f in files]}")
    load_weights(model, files[0])
