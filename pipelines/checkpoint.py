"""Checkpoint directories that a kill at any moment cannot leave half-written.

A checkpoint is ``<out>/checkpoints/step_XXXXXXX/`` (or ``.../best/``) holding

    <model files>        whatever ``model.save_pretrained(dir)`` writes (JSON config +
                         safetensors), so ``from_pretrained`` loads a checkpoint directly
    trainer_state.pt     optimizer, scheduler, grad scaler, RNG states, step, counters:
                         tensors, numbers, lists and dicts only (loaded with weights_only=True)
    train_config.json    the TrainConfig of the run
    metrics.json         the latest training/validation metrics at that step

Everything is written into ``.tmp-<name>-<pid>`` beside it and renamed into place last,
so a directory called ``step_*`` or ``best`` is always complete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

STATE_FILE = "trainer_state.pt"
BEST = "best"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    """``step_0000100`` for step 100."""
    return f"step_{step:07d}"


def _save_model(model: torch.nn.Module, path: Path) -> None:
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} has no save_pretrained(dir); the trainer "
                        "saves models only through it")
    model.save_pretrained(str(path))


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished ``tmp`` to ``dest``; an existing ``dest`` is swapped out first."""
    if dest.exists():
        old = dest.parent / f".old-{dest.name}-{os.getpid()}"
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old)
    else:
        os.rename(tmp, dest)


def save_model_atomic(model: torch.nn.Module, dest: str | os.PathLike) -> Path:
    """``model.save_pretrained`` into ``dest`` through a temporary directory and a rename."""
    dest = Path(dest)
    tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _save_model(model, tmp)
    _replace_dir(tmp, dest)
    return dest


def write_checkpoint(root: str | os.PathLike, name: str, model: torch.nn.Module, state: dict,
                     train_config: dict, metrics: dict) -> Path:
    """Write one complete checkpoint directory ``root/name`` atomically.

    Args:
        root: the checkpoints folder, created when missing.
        name: ``step_dir_name(step)`` or ``BEST``; an existing one is replaced.
        model: unwrapped model with ``save_pretrained(dir)``.
        state: ``torch.save``-able dict of tensors, numbers, strings, lists, dicts.
        train_config, metrics: JSON-ready dicts.
    Returns:
        the checkpoint's path.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _save_model(model, tmp)
    (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2) + "\n")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    torch.save(state, tmp / STATE_FILE)  # last: its presence marks a finished write
    dest = root / name
    _replace_dir(tmp, dest)
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
    """Remove what a killed writer left: ``.tmp-*`` directories; an ``.old-best-*`` swapped
    out just before the kill is put back when ``best`` is missing."""
    root = Path(root)
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".old-"):
            original = root / p.name[len(".old-"):].rsplit("-", 1)[0]
            if original.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.rename(p, original)


def load_state(path: str | os.PathLike) -> dict:
    """The ``trainer_state.pt`` of checkpoint ``path`` (weights_only: no code runs)."""
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load the weights a ``save_pretrained`` wrote into ``path`` into ``model``, in place.

    Reads the directory's one ``*.safetensors`` file (tied weights stored once are fine).

    Raises:
        FileNotFoundError: no or several safetensors files.
        RuntimeError: the weights do not fit the model (missing or unexpected names).
    """
    from safetensors.torch import load_model

    files = sorted(Path(path).glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"checkpoint {path} should hold one .safetensors weights file, "
                                f"found {[f.name for f in files]}")
    load_model(model, files[0], strict=True)
