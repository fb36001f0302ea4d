"""Where a command may write: the ``--out`` rule, in one place.

A command writes only inside its ``--out``. A folder ``--out`` must be

- new (created, parents included), or
- an empty folder (or one holding only a run lock, ``.lock``), or
- a folder this toolkit made for the same kind of artifact and the same command: the
  marker file ``.mambaseq-out.json`` (``{"kind": ..., "command": ...}``), written into the
  folder before anything else, says which. A folder written before markers existed counts
  as the command's own when its ``config.json`` (the options the CLI saves in every
  ``--out``) names the same command; it gets its marker then.

Anything else is refused in one line naming the folder, before anything is written: a
folder holding other files, another command's folder (a training run is never a
generate-audio folder), a file, a symbolic link (its target would be written instead of
the path given). No input is ever an output: the folder must not be, nor contain, a path
given to any other option (compared resolved, symlinks followed, and as the same file on
disk; a ``--config`` file inside a run's own folder is not counted: giving a run its
``config.json`` back is how it is resumed). A training command's own folder is then
checked by ``cli.check_run_dir`` (a new run where checkpoints exist is refused). Inside an
accepted folder the toolkit replaces only what it wrote:
:func:`replace_own_files` (used by ``convert``, whose ``--out`` is the model folder itself)
lists in the marker the entries it wrote, replaces those, and refuses to replace any other.

A command that writes one FILE (``predict-species --out preds.tsv`` and its ``--summary``,
``embed --out x.npz``) goes through :func:`check_out_file`: the file must not be one of the
inputs (resolved, symlinks followed, or the same file on disk) nor a symbolic link nor a
folder, and an existing file is replaced only when it looks like one this command writes
(the command's test: a TSV header, an .npz's members, ...); any other existing file is
refused, since the toolkit cannot tell it from a file the user owns. Two outputs of one run
must differ (:func:`check_distinct`).

    check_folder(out, "convert", "model", inputs)            # refuse early, write nothing
    out = claim_folder(out, "convert", "model", inputs)      # the same checks + marker
    with replace_own_files(out, "convert") as staging:       # write the new entries there
        model.save_pretrained(staging)
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

from mambaseq.core.atomic import TMP_PREFIX, atomic_file

from .run_lock import LOCK_FILE

MARKER = ".mambaseq-out.json"

# Option dests that name outputs, never inputs.
OUTPUT_DESTS = frozenset({"out", "out_dir", "out_file", "per_position", "summary"})

# What a command's --out folder holds, for the marker and the messages.
KINDS = {"generate-audio": "generated audio", "bench": "benchmark results",
         "demo": "demo run", "convert": "model"}


class OutRefused(ValueError):
    """An output path the rule refuses; the message names it and says what to do.

    Attributes:
        field: the config field that gave the path ("out", "summary", ...; None when the
            message names a path inside the folder); the command line shows its flag.
        reason: the message after the field's name.
    """

    def __init__(self, field: str | None, reason: str | None = None):
        if reason is None:                         # a message that names no field
            field, reason = None, field
        super().__init__(reason if field is None else f"{field} {reason}")
        self.field, self.reason = field, reason


def folder_kind(command: str, training: bool) -> str:
    """The kind of artifact ``command`` writes into its ``--out`` folder."""
    return "training run" if training else KINDS.get(command, "outputs")


def input_paths(options: dict) -> list[Path]:
    """The existing paths named by the option values of ``options`` (dest -> value, e.g.
    ``vars(args)``), outputs (:data:`OUTPUT_DESTS`) left out. A ``NAME=PATH[,PATH]`` value
    (classify-species ``--species``) names its paths too."""
    found = []
    for dest, value in options.items():
        if dest in OUTPUT_DESTS:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(item, (str, os.PathLike)):
                continue
            item = os.fspath(item)
            candidates = [item] + (item.split("=", 1)[1].split(",") if "=" in item else [])
            found += [Path(c) for c in candidates if c and os.path.lexists(c)]
    return found


def _same(a: Path, b: Path) -> bool:
    """``a`` and ``b`` are one path once resolved, or one file on disk (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_link(path: Path, option: str) -> None:
    if path.is_symlink():
        raise OutRefused(option, f"{path} is a symbolic link (to {os.readlink(path)}); give "
                         "the real path or a new one")


def read_marker(folder: Path) -> dict | None:
    """The marker of ``folder`` as a dict, or None when it has none.

    Raises:
        OutRefused: the marker is not a JSON object with a kind and a command.
    """
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        marker = None
    if not (isinstance(marker, dict) and isinstance(marker.get("command"), str)
            and isinstance(marker.get("kind"), str)):
        raise OutRefused(f"{path}: not a valid mambaseq marker; choose a new or empty folder")
    return marker


def _legacy_command(folder: Path) -> str | None:
    """The command named by the ``config.json`` the CLI saved in ``folder``, if any."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    command = config.get("command") if isinstance(config, dict) else None
    return command if isinstance(command, str) else None


def check_folder(out, command: str, kind: str, inputs: Iterable[Path] = (),
                 option: str = "out") -> str:
    """Apply the rule to folder ``out`` of ``command`` without writing anything.

    Returns:
        "new", "empty", "own" (its marker names ``command`` and ``kind``) or "legacy" (no
        marker; its config.json names ``command``).
    Raises:
        OutRefused: ``out`` is a symlink or a file, is or contains an input, holds files the
            toolkit did not write, or is another command's folder.
    """
    out = Path(out)
    _refuse_link(out, option)
    if out.exists() and not out.is_dir():
        raise OutRefused(option, f"{out} is a file, not a folder; give a new or empty folder")
    resolved = Path(os.path.realpath(out))
    for path in inputs:
        if _same(path, out):
            raise OutRefused(option, f"{out} is an input of this command; write the output "
                             "to another folder")
        if Path(os.path.realpath(path)).is_relative_to(resolved):
            raise OutRefused(option, f"{out} contains the input {path}; write the output to "
                             "a folder outside the inputs")
    if not out.exists():
        return "new"
    marker = read_marker(out)
    if marker is not None:
        if marker["command"] != command or marker["kind"] != kind:
            raise OutRefused(option, f"{out} holds a {marker['kind']} of 'mambaseq "
                             f"{marker['command']}', not of {command}; choose another folder")
        return "own"
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    if not entries:                            # a run lock alone is the toolkit's own
        return "empty"
    legacy = _legacy_command(out)
    if legacy == command:
        return "legacy"
    if legacy is not None:
        raise OutRefused(option, f"{out} holds a run of 'mambaseq {legacy}', not of "
                         f"{command}; choose another folder")
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise OutRefused(option, f"{out} already holds files mambaseq did not write there "
                     f"({shown}); give a new or empty folder")


def _write_marker(folder: Path, marker: dict) -> None:
    with atomic_file(folder / MARKER) as tmp:
        tmp.write_text(json.dumps(marker, indent=1) + "\n")


def claim_folder(out, command: str, kind: str, inputs: Iterable[Path] = (),
                 option: str = "out") -> Path:
    """:func:`check_folder`, then create ``out`` and write its marker (first of all) when
    it has none. Returns ``Path(out)``.

    Raises:
        OutRefused: as :func:`check_folder`.
        ValueError: ``out`` cannot be created or written.
    """
    out = Path(out)
    state = check_folder(out, command, kind, inputs, option)
    if state != "own":
        try:
            out.mkdir(parents=True, exist_ok=True)
            _write_marker(out, {"kind": kind, "command": command})
        except OSError as e:
            raise ValueError(f"output directory {out} is not writable: "
                             f"{e.strerror or e}") from e
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def replace_own_files(out, command: str) -> Iterator[Path]:
    """Write entries into folder ``out`` (claimed by ``command``), replacing only the ones
    ``command`` wrote there before.

    Yields a path inside ``out`` that does not exist yet; the body writes a folder there
    (e.g. ``save_pretrained(path)``). On success each entry of that folder is renamed into
    ``out`` (replacing the entry of that name), the entries the marker listed from the last
    time and not written this time are removed, and the marker lists the new entries.
    Anything else in ``out`` is left alone. Each entry is written in full before the
    renames; a kill during them can leave old and new entries side by side, which the next
    run replaces.

    Raises:
        OutRefused: an entry would replace one that ``command`` did not write; nothing in
            ``out`` changed.
    """
    out = Path(out)
    marker = read_marker(out)
    if marker is None:
        raise RuntimeError(f"{out}: replace_own_files needs a folder claim_folder claimed")
    before = set(marker.get("files", []))
    stale = re.compile(rf"^{re.escape(TMP_PREFIX + command)}-\d+$")
    for p in out.iterdir():                    # what a killed earlier run left
        if stale.match(p.name):
            _remove(p)
    staging = out / f"{TMP_PREFIX}{command}-{os.getpid()}"
    staging.mkdir()
    try:
        yield staging / "files"
        names = sorted(p.name for p in (staging / "files").iterdir())
        clash = [n for n in names if os.path.lexists(out / n) and n not in before]
        if clash:
            raise OutRefused(f"{out / clash[0]} was not written by 'mambaseq {command}' and "
                             "would be replaced; move it away or choose another folder")
        _write_marker(out, {**marker, "files": sorted(before | set(names))})
        for name in names:
            if (out / name).is_dir() and not (out / name).is_symlink():
                shutil.rmtree(out / name)
            os.replace(staging / "files" / name, out / name)
        for name in sorted(before - set(names)):
            _remove(out / name)
        _write_marker(out, {**marker, "files": names})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_out_file(path, option: str, inputs: Iterable[Path], command: str,
                   looks_ours: Callable[[Path], bool]) -> Path:
    """Refuse output file ``path`` of ``command`` when it is one of ``inputs`` (resolved or
    the same file on disk), a symbolic link, a folder, or an existing file for which
    ``looks_ours(path)`` (this command's own format) is false. Writes nothing.

    Raises:
        OutRefused: naming the option and the file.
    """
    path = Path(path)
    _refuse_link(path, option)
    if path.is_dir():
        raise OutRefused(option, f"{path} is a folder; give a file name")
    for item in inputs:
        if _same(item, path):
            raise OutRefused(option, f"{path} is an input of this command; write the output "
                             "to another file")
    if path.exists() and not looks_ours(path):
        raise OutRefused(option, f"{path} exists and is not a file 'mambaseq {command}' "
                         "wrote; give a new file name (or delete the file yourself)")
    return path


def check_distinct(outputs: dict[str, Path]) -> None:
    """Refuse two options (option -> path) that name the same output file."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        key = os.path.realpath(path)
        if key in seen:
            raise OutRefused(f"{seen[key]} and {option} both name {path}; give each its own "
                             "file")
        seen[key] = option


def starts_with(path: Path, prefix: str) -> bool:
    """The file ``path`` begins with the text ``prefix`` (a header line)."""
    data = prefix.encode()
    with open(path, "rb") as f:
        return f.read(len(data)) == data
