"""BED intervals (0-based, end-exclusive): the first three columns are required, name (4)
and strand (6) are read when present; header lines (track, browser, #) are skipped."""
from __future__ import annotations

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

    >>> read_bed("peaks.bed")    # [Window(name='chr1', start=100, end=200, strand='+'), ...]
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
