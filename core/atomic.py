"""Write a directory or a file under a temporary name and rename it into place.

    with atomic_dir("runs/x/model") as tmp:      # tmp: runs/x/.tmp-model-<pid>, empty
        write_everything_into(tmp)
    # runs/x/model now holds all of it, or (on any error) whatever it held before

A kill at any moment leaves the target either as it was or complete, never half-written;
what a killed writer leaves beside it (``.tmp-<name>-<pid>``, ``.old-<name>-<pid>``) is
recognisable by name, and ``pipelines.training.checkpoints.clean_stale`` removes it. Every other
error removes the temporary copy and is raised again; a full disk is reported as "no space
left on device" with the target's path, whatever layer ran out of space.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def _is_disk_full(err: BaseException) -> bool:
    """ENOSPC raised by Python, or reported in the text of a library's own error (safetensors
    says "No space left on device (os error 28)")."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err) or "os error 28" in str(err)


def _fsync_tree(root: Path) -> None:
    """Data on disk before a rename makes it visible."""
    for path in [root] if root.is_file() else root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _raise_clean(err: BaseException, target: Path) -> None:
    if _is_disk_full(err):
        raise OSError(errno.ENOSPC, f"no space left on device while writing {target}") from err
    raise err


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; on success move it to ``target``.

    An existing ``target`` is swapped out (renamed aside, the new one renamed in, the old one
    deleted), so the name holds the old or the new directory, never a mix.

    Raises:
        OSError: "no space left on device while writing <target>" on a full disk; any other
            error of the body as it was. The temporary directory is removed either way.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{TMP_PREFIX}{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            old = target.parent / f"{OLD_PREFIX}{target.name}-{os.getpid()}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_clean(err, target)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside file ``target``; on success rename it onto ``target``.

    Raises:
        as :func:`atomic_dir`; the temporary file is removed on error.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{TMP_PREFIX}{target.name}-{os.getpid()}"
    try:
        yield tmp
        _fsync_tree(tmp)
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        _raise_clean(err, target)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    """``target.write_bytes(data)`` through :func:`atomic_file`."""
    with atomic_file(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)
