"""Sequence files: indexed FASTA through pyfaidx, small multi-record FASTA/GenBank through
Biopython, and window fetching with strand and N-fraction filtering.

Coordinates are 0-based, end-exclusive (BED style) everywhere in this package.

Both readers expose the same small interface, ``SequenceSource``:
``names`` (list), ``lengths`` (dict name -> int), ``fetch(name, start, end, strand)``.
"""
from __future__ import annotations

import bisect
import contextlib
import gzip
import hashlib
import os
import re
import shutil
import struct
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyfaidx
from Bio import BiopythonParserWarning, SeqIO, bgzf

from mambaseq.core.atomic import atomic_file
from mambaseq.kernels.cpu_build import cache_root

from .tokenizers import reverse_complement

GENBANK_SUFFIXES = (".gb", ".gbk", ".genbank", ".gbff")
# Most bytes of header, blank and comment lines between two indexed records (or after the
# last) that an index check reads; more means the index does not describe the file.
MAX_GAP = 1 << 20
# Decompressed copies and indices in the cache unused for this long are deleted (when a new
# one is written): those of files moved or deleted since.
CACHE_MAX_AGE_DAYS = 30


def _check_exists(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a sequence file")
    if not path.is_file():
        raise FileNotFoundError(f"sequence file not found: {path}")


def _check_text(path: Path, err: UnicodeDecodeError) -> ValueError:
    return ValueError(f"{path}: not a text FASTA file (byte {err.object[err.start:err.start + 1]!r} "
                      f"is not ASCII); is it binary or compressed with something other than "
                      "gzip/bgzip?")


_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)   # a truncated or corrupt .gz


def _damaged_gzip(path: Path, err: Exception) -> ValueError:
    return ValueError(f"{path}: damaged gzip file ({err}); download or compress it again")


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
    """The cache file for ``path`` as it is now: ``<source>_<version>_<name><suffix>``, the
    source key from the resolved path, the version key from size, mtime and inode."""
    st = path.stat()
    source = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    version = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()).hexdigest()
    return cache_dir / f"{source}_{version[:8]}_{path.name}{suffix}"


def _prune_cache(entry: Path) -> None:
    """After writing the cache file ``entry``: delete, in its folder, the files of the other
    versions of its source (one copy per source path) and those unused for
    ``CACHE_MAX_AGE_DAYS`` (of files moved or deleted since). Temporary files of writers in
    progress start with '.' and are kept."""
    source, version = entry.name.split("_", 2)[:2]
    too_old = time.time() - CACHE_MAX_AGE_DAYS * 86400
    for other in entry.parent.iterdir():
        with contextlib.suppress(FileNotFoundError):       # pruned by another process
            if not other.name.startswith(".") and (
                    other.name.startswith(f"{source}_")
                    and not other.name.startswith(f"{source}_{version}_")
                    or other.stat().st_mtime < too_old):
                other.unlink()


def _mark_used(entry: Path) -> None:
    """Date the cache file ``entry`` now, so that ``_prune_cache`` keeps it."""
    with contextlib.suppress(PermissionError):             # a cache shared read-only
        os.utime(entry)


def _make_cache_folder(folder: Path) -> None:
    """Create ``folder``; raise one line naming it and ``MAMBASEQ_CACHE_DIR`` when it cannot
    be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        reason = None if os.access(folder, os.W_OK) else "not writable"
    except OSError as err:
        reason = err.strerror
    if reason:
        raise PermissionError(f"cannot write to the cache folder {folder} ({reason}); set "
                              "MAMBASEQ_CACHE_DIR to a writable folder")


def _decompress_to_cache(path: Path, cache_dir: Path) -> Path:
    """Plain gzip -> the one uncompressed copy of ``path`` in ``cache_dir``: written under a
    temporary name and renamed (a kill leaves no half file), made again when ``path`` changes,
    and the copy of the older version deleted then."""
    out = _cache_name(path, ".fa", cache_dir)
    if not out.exists():
        _make_cache_folder(cache_dir)
        with atomic_file(out) as tmp:
            try:
                with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except _GZIP_ERRORS as err:
                raise _damaged_gzip(path, err) from None
        _prune_cache(out)
    else:
        _mark_used(out)
    return out


def _bgzf_blocks(f) -> list[tuple[int, int, int]]:
    """Every BGZF block of the binary file ``f`` as (compressed start, uncompressed start,
    uncompressed length), from two small reads per block (header and ISIZE footer)."""
    blocks, cstart, ustart = [], 0, 0
    size = os.fstat(f.fileno()).st_size
    while cstart < size:
        f.seek(cstart)
        head = f.read(12)
        extra = f.read(struct.unpack("<H", head[10:12])[0]) if len(head) == 12 else b""
        bsize = None
        while len(extra) >= 4:
            sub_len = struct.unpack("<H", extra[2:4])[0]
            if extra[:2] == b"BC" and sub_len == 2:
                bsize = struct.unpack("<H", extra[4:6])[0] + 1
            extra = extra[4 + sub_len:]
        if head[:4] != b"\x1f\x8b\x08\x04" or bsize is None or cstart + bsize > size:
            raise ValueError(f"damaged bgzip file: no BGZF block at byte {cstart}")
        f.seek(cstart + bsize - 4)
        ulen = struct.unpack("<I", f.read(4))[0]
        blocks.append((cstart, ustart, ulen))
        cstart, ustart = cstart + bsize, ustart + ulen
    return blocks


def _fai_problem(index: dict, size: int, read) -> str | None:
    """Why the .fai records ``index`` (name -> pyfaidx ``IndexRecord``, in file order) do not
    describe a FASTA of ``size`` bytes whose bytes [start, start + n) are ``read(start, n)``;
    None when they do.

    A few small reads per record: its header line ('>name ...') ends where its sequence
    starts, with only blank lines (and ';' comments before the first record) since the end of
    the previous record; its first and its last line hold the indexed numbers of bases, each
    followed by the indexed line end, the last one at the indexed end of the record (so a
    line that changed length anywhere in the record shifts a line end out of place); the last
    record ends where the file does (its final line end may be missing).
    """
    if not index:
        return "it lists no records"
    end = eol = 0
    for name, rec in index.items():
        where = f"record {name!r} at byte {rec.offset}"
        if not end <= rec.offset <= min(size, end + MAX_GAP):
            return f"{where} does not follow the end of the record before it (byte {end})"
        gap = read(end, rec.offset - end)
        lines = (gap[:-1] if gap.endswith(b"\n") else gap).split(b"\n")
        header = lines[-1].removesuffix(b"\r")
        if (not gap.endswith(b"\n") and rec.offset < size) or header[:1] != b">" \
                or header[1:].split()[:1] != [name.encode()] \
                or any(line.strip() and not (end == 0 and line.startswith(b";"))
                       for line in lines[:-1]):
            return f"{where} does not come right after its header line '>{name}'"
        if b"\r" in header:
            return (f"{where}: its header line holds a carriage return; old Mac line ends "
                    "(\\r alone) must be converted to \\n")
        eol = rec.lenb - rec.lenc if rec.rlen else 0
        # pyfaidx gives a one-line record that ends the file without a line end eol 0
        one_line_at_end = rec.rlen == rec.lenc and rec.offset + rec.rlen == size
        if rec.rlen < 0 or rec.rlen and (
                rec.lenc < 1 or not (eol in (1, 2) or eol == 0 and one_line_at_end)):
            return (f"{where}: {rec.rlen} bases in lines of {rec.lenc} bases in {rec.lenb} "
                    "bytes are impossible")
        if rec.rlen:
            n_lines = -(-rec.rlen // rec.lenc)
            last_start = rec.offset + (n_lines - 1) * rec.lenb
            if not (_is_line(read, rec.offset, min(rec.lenc, rec.rlen), eol) and (
                    n_lines == 1 or read(last_start - eol, eol) == _LINE_ENDS[eol] and _is_line(
                        read, last_start, rec.rlen - (n_lines - 1) * rec.lenc, eol))):
                return (f"{where}: its lines are not {rec.lenc} bases each, ending the record "
                        f"with {rec.rlen} bases (a line of another length?)")
        end = rec.bend
    if not end - eol <= size <= end + MAX_GAP or (size > end and read(end, size - end).strip()):
        return f"the file is {size} bytes but its last record {name!r} ends at byte {end}"
    return None


_LINE_ENDS = {0: b"", 1: b"\n", 2: b"\r\n"}       # by length: none, LF, CRLF
_NOT_A_BASE = re.compile(rb"[\r\n>]")


def _is_line(read, start: int, width: int, eol: int) -> bool:
    """The bytes at ``start`` are a line of ``width`` (>= 1) bases and a line end of ``eol``
    bytes, or, cut by the end of the file, its beginning (the last line of a file may lack its
    line end). Reads the line's first 64 bytes, its last base and its end: a line of another
    length puts a base or a line end in the wrong place (and a one-line chromosome is not
    read whole)."""
    head, tail = read(start, min(width, 64)), read(start + width - 1, 1 + eol)
    line_end = tail[1:]
    return (len(head) == min(width, 64) and len(tail) >= 1
            and not _NOT_A_BASE.search(head + tail[:1])
            and (line_end == _LINE_ENDS[eol]
                 or len(tail) < 1 + eol and _LINE_ENDS[eol].startswith(line_end)))


def _index_problem(fa: pyfaidx.Fasta, path: Path, bgzip: bool) -> str | None:
    """Why the index of ``fa`` (its .fai, and its .gzi for a bgzip file) does not describe
    ``path``; None when it does. See ``_fai_problem``; for bgzip every block of the file is
    located (two small reads per block) and the .gzi must list each one, exactly."""
    with open(path, "rb") as f:
        if not bgzip:
            def read(start: int, n: int) -> bytes:
                f.seek(start)
                return f.read(n)
            return _fai_problem(fa.faidx.index, os.fstat(f.fileno()).st_size, read)
        try:
            blocks = _bgzf_blocks(f)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        needed = {(c, u) for c, u, n in blocks[1:] if n}
        listed = {(b.cstart, b.ustart) for b in fa.faidx.gzi_index}
        wrong = sorted(listed - {(c, u) for c, u, _ in blocks})
        if wrong or not needed <= listed:
            at = wrong[0] if wrong else min(needed - listed)
            return (f"{fa.faidx.gzi_indexname} does not list the file's compressed blocks "
                    f"(first mismatch at compressed byte {at[0]})")
        data = [(c, u) for c, u, n in blocks if n]
        starts = [u for _, u in data]
        size = sum(n for _, _, n in blocks)
        reader = bgzf.BgzfReader(fileobj=f, mode="rb")

        def read(start: int, n: int) -> bytes:
            if n <= 0 or start >= size:
                return b""
            c, u = data[bisect.bisect_right(starts, start) - 1]
            reader.seek(bgzf.make_virtual_offset(c, start - u))
            return reader.read(n)
        return _fai_problem(fa.faidx.index, size, read)


def _faidx(path: Path, fai: Path, gzi: Path | None) -> pyfaidx.Fasta:
    """pyfaidx over ``path`` with the index files ``fai`` (and ``gzi`` for bgzip): builds the
    index when ``fai`` is missing, never rewrites one that exists (however old: it is checked
    by ``_index_problem`` instead of by its date)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*older than FASTA", category=RuntimeWarning)
        return pyfaidx.Fasta(str(path), indexname=str(fai),
                             gzi_indexname=None if gzi is None else str(gzi), rebuild=False,
                             sequence_always_upper=False, as_raw=True)


def _duplicate_name(path: Path, err: ValueError) -> ValueError:
    return ValueError(f"{path}: record name {str(err).split(None, 2)[-1]} appears more than "
                      "once; record names must be unique")


def _open_indexed(fasta: Path, bgzip: bool, fai: Path, gzi: Path | None, ours: bool,
                  shown: Path) -> pyfaidx.Fasta:
    """pyfaidx over ``fasta`` through the index ``fai`` (+ ``gzi``) once it is checked against
    the file. An index that is ``ours`` (in the toolkit's cache) is built when missing and
    rebuilt when it does not describe the file; any other one is refused then, never
    rewritten. Errors name ``shown`` (the file the user gave)."""
    fa, problem = None, "missing"
    if fai.exists() and (gzi is None or gzi.exists()):
        try:
            fa = _faidx(fasta, fai, gzi)
        except (ValueError, IndexError, pyfaidx.IndexNotFoundError) as err:
            if "Duplicate key" in str(err):
                raise _duplicate_name(shown, err) from None
            problem = f"unreadable ({err})"
        else:
            problem = _index_problem(fa, fasta, bgzip)
    if problem is None:
        if ours:
            _mark_used(fai)
        return fa
    if fa is not None:
        fa.close()
    if not ours:
        raise ValueError(
            f"{fai}: this index does not match {shown} ({problem}; the file changed after it "
            f"was indexed?). It was not written by mambaseq, so it is left alone: delete it"
            f"{' and ' + gzi.name if gzi else ''}, or rebuild it with `samtools faidx "
            f"{shown}`, and run again")
    _make_cache_folder(fai.parent)
    with contextlib.ExitStack() as stack:
        tmp_fai = stack.enter_context(atomic_file(fai))
        tmp_gzi = None if gzi is None else stack.enter_context(atomic_file(gzi))
        try:
            fa = _faidx(fasta, tmp_fai, tmp_gzi)
        except pyfaidx.FastaIndexingError as err:
            raise ValueError(f"malformed FASTA {shown}: {err}") from None
        except RuntimeError as err:        # pyfaidx's "Unhandled exception ... at entry NAME"
            name = str(err).partition(" at entry ")[2].partition("Please report")[0]
            raise ValueError(f"malformed FASTA {shown}: record {name!r} has lines of uneven "
                             "length or blank lines inside") from None
        except UnicodeDecodeError as err:
            raise _check_text(shown, err) from None
        except ValueError as err:
            if "Duplicate key" not in str(err):
                raise
            raise _duplicate_name(shown, err) from None
    _prune_cache(fai)
    problem = _index_problem(fa, fasta, bgzip)
    if problem is not None:
        fa.close()
        raise ValueError(f"malformed FASTA {shown}: {problem}")
    return fa


@dataclass(frozen=True)
class Window:
    """A stretch of one sequence: [start, end) on ``strand`` ("+" or "-")."""
    name: str
    start: int
    end: int
    strand: str = "+"


class Genome:
    """Indexed random access to a FASTA file (plain or bgzip-compressed) through pyfaidx.

    The index is checked against the file at each opening (``_fai_problem``), never
    trusted by its date. An index beside the file (``.fai``, and ``.gzi`` for bgzip, e.g.
    from ``samtools faidx``) is used when it describes the file and refused, never rewritten,
    when it does not. Otherwise the index lives in ``cache_dir``/fai, one per file, built on
    first use and rebuilt when the file changes: nothing is written beside the data. Case is
    kept (lowercase = soft-masked repeats).

    Args:
        path: FASTA, or FASTA compressed with ``bgzip``.
        decompress_gzip (bool, False): a plain-gzip file is an error (it cannot be indexed);
            with True it is decompressed into ``cache_dir``/decompressed and read from there
            (one copy per file, replaced when the file changes).
        cache_dir (default ``$MAMBASEQ_CACHE_DIR`` or ~/.cache/mambaseq): where indices and
            decompressed copies go.

    >>> _ = Path("genome.fa").write_text(">chr1\\nACGTACGTAA\\nCCGGTTNNac\\n>chr2\\nGGGG\\n")
    >>> g = Genome("genome.fa")
    >>> g.names, g.lengths
    (['chr1', 'chr2'], {'chr1': 20, 'chr2': 4})
    >>> g.fetch("chr1", 7, 13), g.fetch("chr1", 7, 13, strand="-")   # bases [7, 13), and RC
    ('TAACCG', 'CGGTTA')
    >>> g.fetch("chr1", 16)                                  # to the end; case is kept
    'NNac'
    """

    def __init__(self, path, decompress_gzip: bool = False, cache_dir=None):
        self.path = Path(path)
        _check_exists(self.path)
        cache_dir = cache_root() if cache_dir is None else Path(cache_dir)
        kind = gzip_kind(self.path)
        if kind == "gzip" and not decompress_gzip:
            raise ValueError(
                f"{self.path} is plain gzip, which cannot be indexed for random access. "
                f"Recompress it with bgzip (htslib/samtools): "
                f"`gunzip -c {self.path} | bgzip > {self.path.with_suffix('.bgz')}`, "
                "or pass decompress_gzip=True to decompress it once "
                f"into {cache_dir}")
        bgzip = kind == "bgzf"
        if kind == "gzip":
            fasta = _decompress_to_cache(self.path, cache_dir / "decompressed")
            fai, gzi, ours = Path(f"{fasta}.fai"), None, True
        else:
            fasta = self.path
            fai, gzi = Path(f"{fasta}.fai"), Path(f"{fasta}.gzi") if bgzip else None
            ours = not (fai.exists() and (gzi is None or gzi.exists()))
            if ours:
                fai = _cache_name(fasta, ".fai", cache_dir / "fai")
                gzi = fai.with_suffix(".gzi") if bgzip else None
        self._fa = _open_indexed(fasta, bgzip, fai, gzi, ours, self.path)
        self.names = list(self._fa.keys())
        if not self.names:
            raise ValueError(f"empty FASTA {self.path}: no records")
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
        except _GZIP_ERRORS as err:
            raise _damaged_gzip(self.path, err) from None
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
            with warnings.catch_warnings():
                # a cut GenBank file: Biopython warns and returns the bases it found
                warnings.filterwarnings("error", "(Expected sequence length|Premature end)",
                                        BiopythonParserWarning)
                for r in SeqIO.parse(handle, fmt):
                    if r.id in self._seqs:
                        raise ValueError(f"{self.path}: record name {r.id!r} appears more "
                                         "than once; record names must be unique")
                    self._seqs[r.id] = str(r.seq)
        except (ValueError, BiopythonParserWarning) as err:
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


def open_sequences(path, decompress_gzip: bool = False, cache_dir=None):
    """The right reader for ``path``: ``Records`` for GenBank, ``Genome`` (indexed) for FASTA.

    >>> _ = Path("mito.fa").write_text(">human\\nACGTTGCA\\n>mouse\\nACGGT\\n")
    >>> src = open_sequences("mito.fa"); type(src).__name__, src.names, src.lengths
    ('Genome', ['human', 'mouse'], {'human': 8, 'mouse': 5})
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
