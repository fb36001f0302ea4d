"""BED intervals (0-based, end-exclusive): the first three columns are required, name (4)
and strand (6) are read when present; header lines (track, browser, #) are skipped.

Also the split BED of a species task (``write_split_bed``/``read_split_bed``): which regions
of which FASTA file are train, val and test, so that pretraining can be kept off the test
regions of a later classifier."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .fasta import Window


def read_bed(path, lengths: dict | None = None) -> list[Window]:
    """Read a BED file into ``Window`` intervals (name = chromosome).

    Args:
        path: BED file (plain text).
        lengths (dict chrom -> length, optional): when given, every interval must lie on a
            known chromosome and inside it (e.g. ``Genome(...).lengths``).

    Raises:
        FileNotFoundError, or ValueError naming the file, the line number and the problem.

    >>> _ = Path("peaks.bed").write_text("track name=peaks\\n"
    ...                                  "chr1\\t100\\t200\\n"
    ...                                  "chr2\\t5\\t50\\tpeak2\\t0\\t-\\n")
    >>> read_bed("peaks.bed")
    [Window(name='chr1', start=100, end=200, strand='+'),
     Window(name='chr2', start=5, end=50, strand='-')]
    >>> read_bed("peaks.bed", lengths={"chr1": 150, "chr2": 80})
    Traceback (most recent call last):
    ...
    ValueError: peaks.bed:2: end 200 is past the end of chr1 (length 150)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BED file not found: {path}")
    intervals = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            intervals.append(_parse_line(line, f"{path}:{lineno}", lengths))
    if not intervals:
        raise ValueError(f"empty BED file {path}: no intervals")
    return intervals


def _parse_line(line: str, where: str, lengths: dict | None) -> Window:
    cols = line.rstrip("\n").split("\t")
    if len(cols) < 3:
        cols = line.split()       # some tools write BED with spaces
    if len(cols) < 3:
        raise ValueError(f"{where}: a BED line needs at least 3 columns "
                         f"(chrom, start, end), got {len(cols)}: {line.strip()!r}")
    chrom = cols[0]
    try:
        start, end = int(cols[1]), int(cols[2])
    except ValueError:
        raise ValueError(f"{where}: start and end must be integers, got "
                         f"{cols[1]!r} and {cols[2]!r}") from None
    if not 0 <= start < end:
        raise ValueError(f"{where}: need 0 <= start < end, got start={start} end={end}")
    strand = cols[5] if len(cols) > 5 else "+"
    if strand not in ("+", "-", "."):
        raise ValueError(f"{where}: strand (column 6) must be +, - or ., got {strand!r}")
    if lengths is not None:
        if chrom not in lengths:
            raise ValueError(f"{where}: chromosome {chrom!r} is not in the FASTA")
        if end > lengths[chrom]:
            raise ValueError(f"{where}: end {end} is past the end of {chrom} "
                             f"(length {lengths[chrom]})")
    return Window(chrom, start, end, "-" if strand == "-" else "+")


SPLIT_BED_COLUMNS = ("chrom", "start", "end", "split", "score", "strand", "species", "fasta")


@dataclass(frozen=True)
class SplitRegion:
    """One region of a train/val/test split: ``window`` of ``fasta``, for ``species``."""
    split: str
    species: str
    fasta: str
    window: Window


def write_split_bed(path, regions) -> Path:
    """Write a split as BED6+2: chrom, start, end, split (train/val/test), 0, strand,
    species, FASTA path (absolute), one line per ``SplitRegion``; returns the path.

    The file is what ``read_split_bed`` reads back, and what ``pretrain-genome --split-bed``
    takes, so that a model pretrained before a classifier sees only its training regions.
    """
    path = Path(path)
    lines = ["#" + "\t".join(SPLIT_BED_COLUMNS)]
    for r in regions:
        w = r.window
        lines.append("\t".join(map(str, (w.name, w.start, w.end, r.split, 0, w.strand,
                                         r.species, Path(r.fasta).resolve()))))
    path.write_text("\n".join(lines) + "\n")
    return path


def read_split_bed(path) -> list[SplitRegion]:
    """Read a split written by ``write_split_bed``.

    Raises:
        FileNotFoundError, or ValueError naming the file, the line and the problem (fewer
        than 8 columns, a split other than train/val/test, a bad interval).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split BED file not found: {path}")
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            where = f"{path}:{lineno}"
            cols = line.rstrip("\n").split("\t")
            if len(cols) < len(SPLIT_BED_COLUMNS):
                raise ValueError(f"{where}: a split BED line has {len(SPLIT_BED_COLUMNS)} "
                                 f"tab-separated columns ({', '.join(SPLIT_BED_COLUMNS)}), "
                                 f"got {len(cols)}")
            if cols[3] not in ("train", "val", "test"):
                raise ValueError(f"{where}: column 4 must be train, val or test, got {cols[3]!r}")
            rows.append(SplitRegion(cols[3], cols[6], cols[7], _parse_line(line, where, None)))
    if not rows:
        raise ValueError(f"empty split BED file {path}: no regions")
    return rows
