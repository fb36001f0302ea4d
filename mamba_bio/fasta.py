"""Sequence files: indexed FASTA through pyfaidx, small multi-record FASTA/GenBank through
Biopython, and window fetching with strand and N-fraction filtering.

Coordinates are 0-based, end-exclusive (BED style) everywhere in this package.

Both readers expose the same small interface, ``SequenceSource``:
``names`` (list), ``lengths`` (dict name -> int), ``fetch(name, start, end, strand)``.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyfaidx
from Bio import SeqIO

from .tokenizers import reverse_complement

DEFAULT_CACHE = Path.home() / ".cache" / "mambaseq"
GENBANK_SUFFIXES = (".gb", ".gbk", ".genbank", ".gbff")


def _check_exists(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a sequence file")
    if not path.is_file():
        raise FileNotFoundError(f"sequence file not found: {path}")


def _check_index(path: Path, fa: pyfaidx.Fasta) -> None:
    """Raise unless every record of the .fai starts where the index says in ``path`` (a file
    edited after indexing, with an older mtime, keeps a stale index that pyfaidx trusts)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        for name, rec in fa.faidx.index.items():
            f.seek(max(0, rec.offset - 4096))
            before = f.read(rec.offset - max(0, rec.offset - 4096))
            header = before[:-1].rsplit(b"\n", 1)[-1]
            fields = header[1:].split(maxsplit=1)
            if (rec.bend > size or not before.endswith(b"\n") or not header.startswith(b">")
                    or not fields or fields[0] != name.encode()):
                raise ValueError(
                    f"{fa.faidx.indexname}: stale index, record {name!r} is not at byte "
                    f"{rec.offset} of {path} (the file changed after it was indexed); "
                    "delete the index and run again")


def _check_text(path: Path, err: UnicodeDecodeError) -> ValueError:
    return ValueError(f"{path}: not a text FASTA file (byte {err.object[err.start:err.start + 1]!r} "
                      f"is not ASCII); is it binary or compressed with something other than "
                      "gzip/bgzip?")


def _writable_dir(folder: Path) -> bool:
    """Writable by permission bits too: root passes os.access on a read-only (r-x) data
    folder, and an index must not land among shared data files."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def gzip_kind(path) -> str | None:
    """None for an uncompressed file, "bgzf" for blocked gzip (bgzip), "gzip" for plain gzip.

    BGZF is gzip with an extra field 'BC' in every block header (SAM/BAM spec, section 4.1).
    """
    with open(path, "rb") as f:
        head = f.read(18)
    if head[:2] != b"\x1f\x8b":
        return None
    has_extra = len(head) >= 18 and head[3] & 4
    return "bgzf" if has_extra and head[12:14] == b"BC" else "gzip"


def _cache_name(path: Path, suffix: str, cache_dir: Path) -> Path:
    """A cache file for ``path`` that changes when the file does (path, size, mtime)."""
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return cache_dir / f"{key[:16]}_{path.name}{suffix}"


def _decompress_to_cache(path: Path, cache_dir: Path) -> Path:
    """Plain gzip -> uncompressed copy in ``cache_dir`` (written to a temporary name, then
    renamed, so that an interrupted run leaves no half file)."""
    out = _cache_name(path, ".fa", cache_dir)
    if not out.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(out)
    return out


@dataclass(frozen=True)
class Window:
    """A stretch of one sequence: [start, end) on ``strand`` ("+" or "-")."""
    name: str
    start: int
    end: int
    strand: str = "+"


class Genome:
    """Indexed random access to a FASTA file (plain or bgzip-compressed) through pyfaidx.

    The .fai (and .gzi) index is written next to the file, or in ``cache_dir`` when that
    folder is read-only. Case is kept (lowercase = soft-masked repeats).

    Args:
        path: FASTA, or FASTA compressed with ``bgzip``.
        decompress_gzip (bool, False): a plain-gzip file is an error (it cannot be indexed);
            with True it is decompressed once into ``cache_dir`` and read from there.
        cache_dir (default ~/.cache/mambaseq): where indices of read-only files and
            decompressed copies go.

    >>> g = Genome("hg38.fa.gz")
    >>> g.fetch("chr20", 1_000_000, 1_000_010, strand="-")       # 10 bases, RC
    """

    def __init__(self, path, decompress_gzip: bool = False, cache_dir=DEFAULT_CACHE):
        self.path = Path(path)
        _check_exists(self.path)
        cache_dir = Path(cache_dir)
        fasta_path = self.path
        kind = gzip_kind(self.path)
        if kind == "gzip":
            if not decompress_gzip:
                raise ValueError(
                    f"{self.path} is plain gzip, which cannot be indexed for random access. "
                    f"Recompress it with bgzip (htslib/samtools): "
                    f"`gunzip -c {self.path} | bgzip > {self.path.with_suffix('.bgz')}`, "
                    "or pass decompress_gzip=True (--decompress-gzip) to decompress it once "
                    f"into {cache_dir}")
            fasta_path = _decompress_to_cache(self.path, cache_dir / "decompressed")
        index_args = {}
        if not _writable_dir(fasta_path.parent):
            (cache_dir / "fai").mkdir(parents=True, exist_ok=True)
            index_args["indexname"] = str(_cache_name(fasta_path, ".fai", cache_dir / "fai"))
            if kind == "bgzf":
                index_args["gzi_indexname"] = str(
                    _cache_name(fasta_path, ".gzi", cache_dir / "fai"))
        try:
            self._fa = pyfaidx.Fasta(str(fasta_path), sequence_always_upper=False,
                                     as_raw=True, **index_args)
        except pyfaidx.FastaIndexingError as err:
            raise ValueError(f"malformed FASTA {self.path}: {err}") from None
        except UnicodeDecodeError as err:
            raise _check_text(self.path, err) from None
        except ValueError as err:
            if "Duplicate key" not in str(err):
                raise
            raise ValueError(f"{self.path}: record name {str(err).split(None, 2)[-1]} appears "
                             "more than once; record names must be unique") from None
        self.names = list(self._fa.keys())
        if not self.names:
            raise ValueError(f"empty FASTA {self.path}: no records")
        if kind != "bgzf":
            _check_index(fasta_path, self._fa)
        self.lengths = {n: len(self._fa[n]) for n in self.names}
        if not any(self.lengths.values()):
            raise ValueError(f"{self.path}: its records hold no bases (header lines only)")

    def fetch(self, name: str, start: int = 0, end: int | None = None, strand: str = "+") -> str:
        """Bases [start, end) of record ``name`` (end None = to the end); strand "-" gives
        the reverse complement of the same stretch."""
        end = _check_interval(self.path, self.lengths, name, start, end)
        return _stranded(self._fa[name][start:end], strand, f"{self.path}:{name}:{start}")


class Records:
    """All records of a small file held in memory, parsed by Biopython (multi-record FASTA,
    GenBank; plain gzip allowed). Same interface as ``Genome``.

    Args:
        path: .fa/.fasta/.fna (optionally .gz), or GenBank (.gb/.gbk/.gbff, or a file that
            starts with "LOCUS").
    """

    def __init__(self, path):
        self.path = Path(path)
        _check_exists(self.path)
        opener = gzip.open if gzip_kind(self.path) else open
        try:
            with opener(self.path, "rt") as handle:
                fmt = self._read(handle)
        except UnicodeDecodeError as err:
            raise _check_text(self.path, err) from None
        if not self._seqs:
            raise ValueError(f"empty {fmt} file {self.path}: no records")
        if not any(map(len, self._seqs.values())):
            raise ValueError(f"{self.path}: its records hold no bases (header lines only)")
        self.names = list(self._seqs)
        self.lengths = {n: len(s) for n, s in self._seqs.items()}

    def _read(self, handle) -> str:
        """Parse every record of ``handle`` into ``self._seqs``; returns the format."""
        first = handle.readline()
        handle.seek(0)
        stem = self.path.name.removesuffix(".gz").lower()
        fmt = "genbank" if stem.endswith(GENBANK_SUFFIXES) or first.startswith("LOCUS") \
            else "fasta"
        if fmt == "fasta" and first.strip() and not first.startswith(">"):
            raise ValueError(f"malformed FASTA {self.path}: line 1 does not start with "
                             f"'>' (found {first.strip()[:40]!r})")
        self._seqs = {}
        try:
            for r in SeqIO.parse(handle, fmt):
                if r.id in self._seqs:
                    raise ValueError(f"{self.path}: record name {r.id!r} appears more "
                                     "than once; record names must be unique")
                self._seqs[r.id] = str(r.seq)
        except ValueError as err:
            if str(err).startswith(str(self.path)):
                raise
            raise ValueError(f"malformed {fmt} file {self.path}: {err}") from None
        return fmt

    def fetch(self, name: str, start: int = 0, end: int | None = None, strand: str = "+") -> str:
        """Bases [start, end) of record ``name``, reverse-complemented on strand "-"."""
        end = _check_interval(self.path, self.lengths, name, start, end)
        return _stranded(self._seqs[name][start:end], strand, f"{self.path}:{name}:{start}")


def _check_interval(path, lengths: dict, name: str, start: int, end: int | None) -> int:
    """Raise naming the file and record unless [start, end) lies in record ``name``;
    returns ``end`` (the record's length when None)."""
    if name not in lengths:
        shown = ", ".join(list(lengths)[:10]) + (" ..." if len(lengths) > 10 else "")
        raise KeyError(f"{path}: no record named {name!r} (records: {shown})")
    end = lengths[name] if end is None else end
    if not 0 <= start <= end <= lengths[name]:
        raise ValueError(f"{path}:{name}: interval [{start}, {end}) outside the record "
                         f"(length {lengths[name]})")
    return end


def _stranded(seq: str, strand: str, where: str) -> str:
    if strand == "+":
        return seq
    if strand == "-":
        return reverse_complement(seq)
    raise ValueError(f"{where}: strand must be '+' or '-', got {strand!r}")


def open_sequences(path, decompress_gzip: bool = False, cache_dir=DEFAULT_CACHE):
    """The right reader for ``path``: ``Records`` for GenBank, ``Genome`` (indexed) for FASTA.

    >>> src = open_sequences("mito/human.fa"); src.names, src.lengths
    """
    path = Path(path)
    _check_exists(path)
    if path.name.removesuffix(".gz").lower().endswith(GENBANK_SUFFIXES):
        return Records(path)
    return Genome(path, decompress_gzip=decompress_gzip, cache_dir=cache_dir)


def n_fraction(seq: str) -> float:
    """Fraction of bases that are not A, C, G or T (either case); 1.0 for an empty string."""
    if not seq:
        return 1.0
    acgt = sum(seq.count(b) for b in "ACGTacgt")
    return 1.0 - acgt / len(seq)


def iter_windows(source, window: int, stride: int | None = None, regions=None,
                 strands: str = "+", max_n_frac: float = 1.0):
    """Fixed-stride windows over ``source`` (a ``Genome`` or ``Records``).

    Args:
        window (int): window length; only whole windows are produced.
        stride (int, default window): step between window starts.
        regions: iterable of ``Window``/BED intervals (name, start, end) to tile; default
            every whole record.
        strands ("+", "-" or "both"): "both" yields each window on "+" then on "-".
        max_n_frac (float, 1.0): skip windows whose fraction of non-ACGT bases is above it.

    Yields:
        (Window, sequence) pairs, the sequence on the window's strand.
    """
    stride = stride or window
    if strands not in ("+", "-", "both"):
        raise ValueError(f"strands must be '+', '-' or 'both', got {strands!r}")
    if regions is None:
        regions = [Window(n, 0, source.lengths[n]) for n in source.names]
    for region in regions:
        for start in range(region.start, region.end - window + 1, stride):
            seq = source.fetch(region.name, start, start + window)
            if n_fraction(seq) > max_n_frac:
                continue
            for strand in ("+", "-") if strands == "both" else (strands,):
                yield (Window(region.name, start, start + window, strand),
                       seq if strand == "+" else reverse_complement(seq))
