"""One run per run folder: an exclusive lock on ``<out>/.lock``.

    with lock_run_dir("runs/x"):      # a second process gets RunFolderBusy at once
        ...

The lock is ``flock`` on the open file, so the kernel drops it when its holder exits, even
by SIGKILL: a stale lock file never blocks a later run. The file names the holder (pid,
host, start time) for the message the next run prints. Taking the lock again in the
process that holds it is allowed (the CLI holds it and the trainer takes it again).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".lock"
_held: dict[Path, object] = {}    # folder -> its open lock file, held by this process


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder; the message names the folder and the holder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return (f"pid {info['pid']} on {info['host']}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['since']))}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def lock_run_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of run folder ``out`` (created when missing) for the block.

    Raises:
        RunFolderBusy: another process holds it (names the folder and the holder).
        ValueError: ``out`` cannot be created or written.
    """
    out = Path(out).resolve()
    if out in _held:          # already ours: the outer block releases it
        yield out
        return
    path = out / LOCK_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
    except OSError as e:
        raise ValueError(f"output directory {out} is not writable: {e.strerror or e}") from e
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise RunFolderBusy(f"run folder {out} is in use by {_holder(path)}; wait for that "
                            "run to end or choose another out folder") from None
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "since": time.time()}) + "\n")
    fh.flush()
    _held[out] = fh
    try:
        yield out
    finally:
        del _held[out]
        fh.close()      # releases the lock; the file stays (removing it would race a waiter)
