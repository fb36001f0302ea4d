"""Opening a job's ``out`` folder: the out rule, the run lock, the checks that keep a run
from being clobbered, and ``config.json``, in the order that writes nothing before the
checks pass.

    with run_folder(config, "pretrain-genome", training=True) as out:
        ...   # out is claimed (marker), locked, checked, and holds config.json

Only the main process (torchrun rank 0) claims, locks and writes; the others just run.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

from mambaseq.core.atomic import atomic_file

from . import out_folder
from .checkpoints import list_checkpoints
from .config import check_resume_options
from .distributed import is_main_process
from .run_lock import lock_run_dir

CONFIG_FILE = "config.json"


def check_run(out: Path, options: dict) -> None:
    """Refuse, before anything is written, a training run that would clobber or corrupt the
    run in ``out``: a new run where checkpoints exist, or a resume whose options differ from
    the run's own ``config.json`` (beyond ``config.RESUME_MAY_CHANGE``).

    Raises:
        FileExistsError, ValueError: naming the folder or the field.
    """
    if not options.get("resume"):
        if list_checkpoints(out / "checkpoints"):
            raise FileExistsError(f"{out / 'checkpoints'} already holds checkpoints; resume "
                                  "that run (resume) or choose another out folder")
        return
    saved_path = out / CONFIG_FILE
    if saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{saved_path}: not valid JSON ({e}); cannot check the resume") \
                from None
        check_resume_options(saved, options, saved_path)


def write_config(out: Path, options: dict) -> None:
    """``out/config.json`` (temp file + rename): the options a run used, reusable as
    ``--config``."""
    try:
        with atomic_file(out / CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps(options, indent=2) + "\n")
    except OSError as e:
        raise ValueError(f"output directory {out} is not writable: {e.strerror or e}") from e


@contextlib.contextmanager
def run_folder(config, command: str, *, training: bool) -> Iterator[Path]:
    """Claim ``config.out`` for ``command`` and hold it for the block.

    Args:
        config: the job's config (a ``fields.Config`` with an ``out`` field).
        command: the job's name ("pretrain-genome"), written in the folder's marker.
        training: a training run (locked; checkpoints and resume checked).
    Raises:
        out_folder.OutRefused: the out rule refuses the folder (see ``out_folder``).
        run_lock.RunFolderBusy: another process holds it.
        FileExistsError, ValueError: as :func:`check_run`.
    """
    out = Path(config.out)
    if not is_main_process():
        yield out
        return
    options = {"command": command, **config.to_dict()}
    out_folder.claim_folder(out, command, out_folder.folder_kind(command, training),
                            out_folder.input_paths(options))
    with lock_run_dir(out) if training else contextlib.nullcontext():
        if training:
            check_run(out, options)
        write_config(out, options)
        yield out
