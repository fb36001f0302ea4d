"""predict-species: apply a trained species classifier to new FASTA files.

    mambaseq predict-species --model runs/species/model --fasta new.fa other.fa.gz \
        --out preds.tsv [--window 1000] [--stride 1000] [--batch-size 32] [--summary FILE]

Several ``--model`` folders of the same classes (e.g. ``runs/b/seed0/model
runs/b/seed1/model``) score as one ensemble: the mean of their class log-probabilities,
renormalised (``mamba_bio.predict.ClassifierEnsemble``).

Writes two files:

- ``--out`` (TSV), one row per window: ``file``, ``record``, ``start``, ``end`` (0-based,
  end-exclusive), ``predicted``, then one column per class (named by the class) holding its
  probability; the probabilities of a row sum to 1.
- ``--summary`` (default: PREDS.summary.tsv beside ``--out``), one row per record: ``file``,
  ``record``, ``length``, ``windows``, ``predicted`` (the class of highest mean
  probability) and the mean probability of each class; a ``.json`` name gives a JSON list
  of the same fields (the means under "mean_probabilities"). A record without a usable
  window has 0 windows and no call.

Windows follow ``mamba_bio.predict``: every ``--stride`` bases plus one window ending at a
record's end, a record shorter than ``--window`` as one window, all-N windows skipped. A
record is read one window at a time (pyfaidx for FASTA, bgzip included; plain gzip with
``--decompress-gzip``) and at most one batch of windows is held, so a chromosome of any
length runs in bounded memory. ``--window`` defaults to the window length (``--seq-len``)
the classifier was trained on, read from its run (``training_window``); a folder without that
record needs ``--window``. Both files are written under a temporary name and renamed when
complete.
Neither may be one of the inputs, nor an existing file predict-species did not write
(``pipelines.out_folder``): those are refused before anything is read.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.predict import load_classifiers, predict_records
from mambaseq.pipelines import out_folder
from mambaseq.pipelines.checkpoint import latest_checkpoint

HELP = "species calls for every window and record of new FASTA files, from a trained classifier"

FIXED_COLUMNS = ("file", "record", "start", "end", "predicted")
SUMMARY_COLUMNS = ("file", "record", "length", "windows", "predicted")
TRAIN_CONFIG = "train_config.json"               # a checkpoint's training options


def add_arguments(parser):
    parser.add_argument("--model", required=True, nargs="+", metavar="DIR",
                        help="classifier folder of a classify-species run: OUT/model, "
                             "OUT/checkpoints/best or OUT/checkpoints/step_*; several folders "
                             "of the same classes are averaged as an ensemble")
    parser.add_argument("--fasta", required=True, nargs="+", metavar="F",
                        help="FASTA (plain or bgzip) or GenBank files")
    # dest is not "out": the CLI makes an --out *directory* (for config.json); this is a file.
    parser.add_argument("--out", dest="out_file", required=True, metavar="PREDS.tsv",
                        help="per-window predictions (TSV)")
    parser.add_argument("--summary", default=None, metavar="FILE",
                        help="per-record summary, .tsv or .json (default: PREDS.summary.tsv "
                             "beside --out)")
    parser.add_argument("--window", type=int, default=None,
                        help="window length in bases (default: the --seq-len the classifier "
                             "was trained with, from its run's train_config.json)")
    parser.add_argument("--stride", type=int, default=None,
                        help="bases between window starts (default: --window, no overlap)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--decompress-gzip", action="store_true",
                        help="accept plain-gzip FASTA by decompressing it once to a cache")


def summary_path(out: Path, summary: str | None) -> Path:
    """The summary file: ``--summary`` (.tsv or .json), else PREDS.summary.tsv beside ``out``."""
    if summary is None:
        return out.with_name(f"{out.name.removesuffix('.tsv')}.summary.tsv")
    path = Path(summary)
    if path.suffix.lower() not in (".tsv", ".json"):
        raise ValueError(f"--summary must end in .tsv or .json, got {path}")
    return path


def training_window(directory) -> int | None:
    """The window length (``seq_len``) the classifier in ``directory`` was trained on: from the
    folder's own train_config.json (a checkpoint), or for a run's ``model/`` folder from the
    run's newest checkpoint beside it; None when neither is there (a folder copied out of its
    run).

    Raises:
        ValueError: a train_config.json that is not JSON or has no positive ``seq_len``.
    """
    directory = Path(directory)
    path = directory / TRAIN_CONFIG
    if not path.is_file() and directory.name == "model":
        latest = latest_checkpoint(directory.parent / "checkpoints")
        path = latest / TRAIN_CONFIG if latest is not None else path
    if not path.is_file():
        return None
    try:
        seq_len = json.loads(path.read_text()).get("seq_len")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path}: not a JSON object of training options ({err})") from None
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"{path}: seq_len {seq_len!r} is not a positive integer")
    return seq_len


def _default_window(models) -> int:
    """The one training window of ``models`` (see ``training_window``), or a ValueError that
    asks for ``--window`` and says why."""
    windows = {str(m): training_window(m) for m in models}
    unknown = [m for m, w in windows.items() if w is None]
    if unknown:
        raise ValueError(f"{unknown[0]}: no {TRAIN_CONFIG} here or in its run's checkpoints/ "
                         "to tell the window length the classifier was trained on; pass "
                         "--window (its training --seq-len)")
    if len(set(windows.values())) > 1:
        raise ValueError(f"--model: the classifiers were trained on different window lengths "
                         f"({', '.join(f'{m}: {w}' for m, w in windows.items())}); pass --window")
    return next(iter(windows.values()))


def _check_args(args, classes):
    for opt in ("window", "stride", "batch_size"):
        value = getattr(args, opt)
        if value is not None and value < 1:
            raise ValueError(f"--{opt.replace('_', '-')} must be a positive integer, got {value}")
    if args.window is None:
        args.window = _default_window(args.model)
    clash = set(classes) & set(FIXED_COLUMNS + SUMMARY_COLUMNS)
    if clash:
        raise ValueError(f"{args.model[0]}: class name(s) {sorted(clash)} clash with the output "
                         "columns")


def _fmt(p: float) -> str:
    return f"{p:.6g}"


def _summary_rows(records, classes):
    """(file, RecordPrediction) pairs -> one dict per record, mean probabilities or None."""
    rows = []
    for path, r in records:
        mean = r.mean_probs
        rows.append({"file": path, "record": r.name, "length": r.length, "windows": r.windows,
                     "predicted": None if mean is None else classes[int(mean.argmax())],
                     "mean_probabilities": None if mean is None else
                     {c: float(p) for c, p in zip(classes, mean)}})
    return rows


def write_summary(path: Path, rows, classes) -> None:
    """The per-record summary as JSON (a list of rows) or TSV (one line per record)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if path.suffix.lower() == ".json":
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
    else:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow([*SUMMARY_COLUMNS, *classes])
            for row in rows:
                probs = row["mean_probabilities"]
                writer.writerow([row["file"], row["record"], row["length"], row["windows"],
                                 row["predicted"] or "",
                                 *([_fmt(probs[c]) for c in classes] if probs else
                                   [""] * len(classes))])
    os.replace(tmp, path)


def _written_here(path: Path) -> bool:
    """``path`` is a file predict-species writes: a per-window or per-record TSV (by its
    header) or a per-record JSON list."""
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(rows, list) and bool(rows) and all(
            isinstance(r, dict) and set(r) == {*SUMMARY_COLUMNS, "mean_probabilities"}
            for r in rows)
    return any(out_folder.starts_with(path, "\t".join(columns) + "\t")
               for columns in (FIXED_COLUMNS, SUMMARY_COLUMNS))


def run(args):
    out = Path(args.out_file)
    summary = summary_path(out, args.summary)
    inputs = out_folder.input_paths(vars(args))
    out_folder.check_distinct({"--out": out, "--summary": summary})
    for option, path in (("--out", out), ("--summary", summary)):
        out_folder.check_out_file(path, option, inputs, "predict-species", _written_here)
    model, tokenizer, classes = load_classifiers(args.model, device=args.device)
    _check_args(args, classes)
    sources = [(path, open_sequences(path, decompress_gzip=args.decompress_gzip))
               for path in args.fasta]
    print(f"[mambaseq] {len(classes)} classes from {' + '.join(args.model)}; windows of "
          f"{args.window} bases every {args.stride or args.window}", file=sys.stderr)

    out.parent.mkdir(parents=True, exist_ok=True)
    summary.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    records = []
    bar = tqdm(total=sum(sum(s.lengths.values()) for _, s in sources), unit="bp",
               unit_scale=True)
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow([*FIXED_COLUMNS, *classes])
            for path, source in sources:
                done = {}                                   # record -> bases passed so far

                def write_batch(name, spans, probs):
                    for (start, end), p in zip(spans, probs):
                        writer.writerow([path, name, start, end, classes[int(p.argmax())],
                                         *map(_fmt, p)])
                    bar.update(spans[-1][1] - done.get(name, 0))
                    done[name] = spans[-1][1]

                scored = 0
                for record in predict_records(model, tokenizer, source, args.window,
                                              args.stride, args.batch_size, where=path,
                                              on_batch=write_batch):
                    bar.update(record.length - done.get(record.name, 0))
                    records.append((path, record))
                    scored += record.windows
                if scored == 0:
                    raise ValueError(f"{path}: no usable window (every record is empty or "
                                     "all N)")
        os.replace(tmp, out)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    rows = _summary_rows(records, classes)
    write_summary(summary, rows, classes)
    n_windows = sum(r.windows for _, r in records)
    print(f"{n_windows} windows of {len(records)} records -> {out}; per record -> {summary}")
