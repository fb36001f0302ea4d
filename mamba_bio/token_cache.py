"""A tokenized genome cache: a FASTA encoded once into one uint8 array on disk, from which a
window is a slice, its reverse strand a table lookup, and its N fraction O(1).

Dimension names: L window length (bases), B batch.

On first use every record of a ``Genome`` (plain or bgzip FASTA, read through ``fasta.Genome``)
or of a ``Records`` file is encoded in chunks of ``CHUNK`` bases (bounded memory, numpy lookup
tables) into ``<cache_dir>/tokens/<key>.tokens`` (the records one after the other), with
beside it ``<key>.nsum`` (int64 prefix sums of the non-ACGT bases at every ``BLOCK``-th
position) and ``<key>.json`` (the file's identity, the tokenizer, each record's offset and
length). Each file is written under a temporary name and renamed, the JSON last: a killed
encoding leaves no cache that looks complete. The key holds the file's resolved path, size,
mtime and a hash of its first and last MiB (``core.file_cache``), and the tokenizer's
config: a changed, grown or truncated file gets a new cache (the old one is deleted then),
never the old one. Processes that open a missing cache at once (training ranks) take a lock:
one encodes, the others wait and read its files.

A code is the tokenizer's id of the base (``CharTokenizer``: A 4, C 5, G 6, T 7, N and the
IUPAC codes 8), plus ``SOFT`` on a lowercase (soft-masked) base when the tokenizer keeps
case (``uppercase=False``), or ``BAD`` for a letter the tokenizer refuses. Codes above
``MAX_ID`` are not token ids: ``TokenCache.tokens`` raises the tokenizer's own error on them.

Windows are read with ``os.pread``: the bases live once in the page cache, shared by every
process (training ranks) that reads them, and a process's resident memory does not grow with
the genome it samples from.

>>> from mambaseq.mamba_bio import Genome, write_fasta
>>> genome = Genome(write_fasta("soft.fa", {"chr1": "ACGTNNacgt"}))
>>> cache = TokenCache.open(genome, CharTokenizer())
>>> cache.tokens("chr1", 2, 8), cache.tokens("chr1", 2, 8, strand="-")
(array([6, 7, 8, 8, 4, 5], dtype=uint8), array([6, 7, 8, 8, 4, 5], dtype=uint8))
>>> cache.n_count("chr1", 0, 10), round(cache.n_fraction("chr1", 0, 10), 6)
(2, 0.2)
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import numpy as np
import torch

from mambaseq.core.atomic import atomic_file
from mambaseq.core.file_cache import file_identity, identity_key
from mambaseq.kernels.cpu_build import cache_root

from .fasta import _make_cache_folder, _mark_used, _prune_cache
from .tokenizers import CharTokenizer

FORMAT = 1                # layout version of the cache files (in the key)
CHUNK = 1 << 22           # bases encoded at a time (about 50 MB of temporaries)
BLOCK = 4096              # positions between two prefix sums of non-ACGT bases
SOFT = 0x40               # added to the code of a soft-masked base (uppercase=False)
BAD = 0x3F                # a letter the tokenizer refuses
MAX_ID = 8                # the highest token id a base takes (N)


def code_table(tokenizer: CharTokenizer) -> np.ndarray:
    """(256,) uint8: byte of a FASTA letter -> its code (see the module docstring)."""
    folded = CharTokenizer(strict=tokenizer.strict, uppercase=True)._lut
    lut = tokenizer._lut
    codes = np.where(lut >= 0, lut, np.where(folded >= 0, folded + SOFT, BAD))
    return codes.astype(np.uint8)


def complement_table(tokenizer: CharTokenizer) -> np.ndarray:
    """(256,) uint8: code -> code of the complementary base (the soft-mask flag kept; N,
    specials and ``BAD`` map to themselves)."""
    comp = tokenizer.complement_map.numpy().astype(np.uint8)
    table = np.arange(256, dtype=np.uint8)
    table[:len(comp)] = comp
    table[SOFT:SOFT + len(comp)] = comp + SOFT
    return table




def count_not_acgt(codes: np.ndarray) -> int:
    """How many of ``codes`` are not A/C/G/T of either case (what ``fasta.n_fraction``
    counts as N): those codes are 4-7 and 4-7 + ``SOFT``, i.e. 4 once the two low bits and
    the ``SOFT`` bit are cleared."""
    return int(np.count_nonzero((codes & (0xFF ^ 0x03 ^ SOFT)) != 4))


def _entry(identity: dict, tokenizer: CharTokenizer, cache_dir: Path) -> Path:
    """``<cache_dir>/<source>_<version>_<file name>`` (no suffix): the source key from the
    path and the tokenizer (one cache kept per pair), the version from the rest."""
    source = identity_key(identity["path"], tokenizer.to_config())[:16]
    version = identity_key(FORMAT, identity)[:8]
    return cache_dir / f"{source}_{version}_{Path(identity['path']).name}"


class TokenCache:
    """The encoded bases of every record of one sequence file (see the module docstring).

    Build or reuse with ``TokenCache.open(source, tokenizer)``. Coordinates are 0-based,
    end-exclusive, as in ``fasta``.

    Attributes:
        names (list of str), lengths (dict name -> int): as the source's.
        offsets (dict name -> int): where each record starts in the token file.
        path (Path): the token file (``<key>.tokens``, raw uint8, ``np.memmap``-able).
    """

    def __init__(self, entry: Path, meta: dict, tokenizer: CharTokenizer, source):
        self.path, self.source, self.tokenizer = Path(f"{entry}.tokens"), source, tokenizer
        self.where = str(source.path)
        self.names = [r["name"] for r in meta["records"]]
        self.lengths = {r["name"]: r["length"] for r in meta["records"]}
        self.offsets = {r["name"]: r["offset"] for r in meta["records"]}
        self.total = int(meta["total"])
        self.nsum = np.fromfile(f"{entry}.nsum", dtype=np.int64)     # (total // BLOCK + 1,)
        self.complement = complement_table(tokenizer)
        if self.path.stat().st_size != self.total or len(self.nsum) != self.total // BLOCK + 1:
            raise ValueError(f"{entry}.json: the token cache of {self.where} is damaged (its "
                             f"files do not have the sizes it lists); delete {entry}.* and run "
                             "again")
        self._fd = os.open(self.path, os.O_RDONLY)

    def __del__(self):
        with contextlib.suppress(AttributeError, OSError):
            os.close(self._fd)

    @classmethod
    def open(cls, source, tokenizer: CharTokenizer | None = None, cache_dir=None
             ) -> "TokenCache":
        """The cache of ``source`` (a ``Genome`` or ``Records``; its ``path`` is the file)
        for ``tokenizer`` (default ``CharTokenizer()``), encoded now when there is none for
        the file as it is now.

        Args:
            cache_dir (default ``$MAMBASEQ_CACHE_DIR`` or ~/.cache/mambaseq): the cache goes
                to its ``tokens`` folder, never beside the data.
        Raises:
            PermissionError: the cache folder cannot be written (names it and
                ``MAMBASEQ_CACHE_DIR``).
        """
        tokenizer = tokenizer or CharTokenizer()
        folder = (cache_root() if cache_dir is None else Path(cache_dir)) / "tokens"
        identity = file_identity(source.path)
        entry = _entry(identity, tokenizer, folder)
        meta_path = Path(f"{entry}.json")
        if not meta_path.exists():
            _make_cache_folder(folder)
            # one process encodes; the others (training ranks) wait and then read its files
            try:
                with open(f"{entry}.lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if not meta_path.exists():
                        _encode(source, tokenizer, entry, identity)
            finally:
                Path(f"{entry}.lock").unlink(missing_ok=True)
            _prune_cache(meta_path)
        else:
            _mark_used(meta_path)
        meta = json.loads(meta_path.read_text())
        if meta["identity"] != identity:          # the key hashes it: a collision or a bug
            raise ValueError(f"{meta_path}: token cache of another file; delete it")
        return cls(entry, meta, tokenizer, source)

    # -- reading ---------------------------------------------------------------------
    def check(self, name: str, start: int, end: int) -> None:
        """Raise naming the file and record unless [start, end) lies in record ``name``."""
        if name not in self.lengths:
            raise KeyError(f"{self.where}: no record named {name!r}")
        if not 0 <= start <= end <= self.lengths[name]:
            raise ValueError(f"{self.where}:{name}: interval [{start}, {end}) outside the "
                             f"record (length {self.lengths[name]})")

    def read_into(self, out: np.ndarray, name: str, start: int) -> np.ndarray:
        """Fill ``out`` ((L,) uint8, contiguous) with the codes of [start, start + L) of
        record ``name`` (strand "+"; no bounds check: see ``check``)."""
        if os.preadv(self._fd, [out], self.offsets[name] + start) != len(out):
            raise OSError(f"{self.path}: short read (the token cache was cut); delete it and "
                          "run again")
        return out

    def codes(self, name: str, start: int = 0, end: int | None = None, strand: str = "+"
              ) -> np.ndarray:
        """(L,) uint8 codes of bases [start, end) (end None = to the end); strand "-" gives
        the reverse complement."""
        end = self.lengths.get(name, 0) if end is None else end
        self.check(name, start, end)
        out = self.read_into(np.empty(end - start, dtype=np.uint8), name, start)
        if strand == "-":
            return self.complement[out[::-1]]
        if strand != "+":
            raise ValueError(f"{self.where}:{name}:{start}: strand must be '+' or '-', got "
                             f"{strand!r}")
        return out

    def tokens(self, name: str, start: int = 0, end: int | None = None, strand: str = "+"
               ) -> np.ndarray:
        """(L,) uint8 token ids of [start, end) on ``strand``: what ``tokenizer.encode``
        gives for the bases; raises its error (letter, position, source) where it would."""
        out = self.codes(name, start, end, strand)
        if len(out) and out.max() > MAX_ID:
            self.raise_bad(name, start, out if strand == "+" else out[::-1])
        return out

    def raise_bad(self, name: str, start: int, codes: np.ndarray) -> None:
        """Raise the tokenizer's error for the first code of ``codes`` (strand "+" codes of
        bases from ``start``) that is not a token id: the letter is read back from the file."""
        pos = int(np.flatnonzero(codes > MAX_ID)[0])
        self.tokenizer.encode(self.source.fetch(name, start, start + len(codes)),
                              source=f"{self.where}:{name}:{start}")
        raise AssertionError(f"{self.path}: code {codes[pos]} at {pos} for a valid base")

    def n_count(self, name: str, start: int, end: int, row: np.ndarray | None = None) -> int:
        """Number of non-A/C/G/T bases (either case) in [start, end): 0 when the prefix
        sums say the blocks around the stretch hold none (most windows), else whole
        ``BLOCK`` s from the prefix sums and the ends (< ``BLOCK`` each) counted from ``row``
        (the window's codes, when read already) or from the file."""
        lo, hi = self.offsets[name] + start, self.offsets[name] + end
        around = -(-hi // BLOCK)                        # blocks [lo // BLOCK, around) hold it
        if around < len(self.nsum) and self.nsum[around] == self.nsum[lo // BLOCK]:
            return 0                                    # no N anywhere near: nothing to count
        first, last = -(-lo // BLOCK), hi // BLOCK      # whole blocks [first, last)
        if first >= last:
            part = [(lo, hi)]
            inner = 0
        else:
            part = [(lo, first * BLOCK), (last * BLOCK, hi)]
            inner = int(self.nsum[last] - self.nsum[first])
        for a, b in part:
            if b > a:
                piece = row[a - lo:b - lo] if row is not None else \
                    self.read_into(np.empty(b - a, np.uint8), name, a - self.offsets[name])
                inner += count_not_acgt(piece)
        return inner

    def ids(self, name: str, start: int = 0, end: int | None = None, strand: str = "+",
            bos_id: int | None = None) -> "CachedIds":
        """The token ids of [start, end) on ``strand`` (after ``bos_id`` when given) as a
        lazy (L,) sequence: a slice is read from the cache when asked for, so a whole
        chromosome is scored in bounded memory (``metrics.lm_nll`` takes it as its ids)."""
        end = self.lengths.get(name, 0) if end is None else end
        self.check(name, start, end)
        if strand not in ("+", "-"):
            raise ValueError(f"{self.where}:{name}:{start}: strand must be '+' or '-', got "
                             f"{strand!r}")
        return CachedIds(self, name, start, end, strand, bos_id)

    def n_fraction(self, name: str, start: int, end: int) -> float:
        """``fasta.n_fraction`` of the bases [start, end), in O(1): the same float."""
        self.check(name, start, end)
        if end == start:
            return 1.0
        return 1.0 - (end - start - self.n_count(name, start, end)) / (end - start)


class CachedIds:
    """(L,) long token ids of a stretch of a ``TokenCache`` record, read slice by slice
    (``TokenCache.ids``): ``len``, ``ids[a:b]`` -> (b - a,) long tensor on ``device``,
    ``.to(device)``. Raises the tokenizer's error on a slice holding a letter it refuses."""

    def __init__(self, cache: TokenCache, name: str, start: int, end: int, strand: str,
                 bos_id: int | None, device="cpu"):
        self.cache, self.name, self.start, self.end, self.strand = cache, name, start, end, strand
        self.bos_id, self.device = bos_id, torch.device(device)
        self.lead = 0 if bos_id is None else 1

    def __len__(self) -> int:
        return self.end - self.start + self.lead

    def to(self, device) -> "CachedIds":
        return CachedIds(self.cache, self.name, self.start, self.end, self.strand, self.bos_id,
                         device)

    def __getitem__(self, key: slice) -> torch.Tensor:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"CachedIds takes slices with step 1, got {key!r}")
        a, b, _ = key.indices(len(self))
        lo, hi = max(a - self.lead, 0), max(b - self.lead, 0)     # bases [lo, hi) of the stretch
        if self.strand == "+":
            start, codes = self.start + lo, self.cache.codes(self.name, self.start + lo,
                                                             self.start + hi)
            plus = codes
        else:                 # base i of the reverse strand is the complement of end - 1 - i
            start = self.end - hi
            codes = self.cache.codes(self.name, start, self.end - lo, "-")
            plus = codes[::-1]
        if len(codes) and codes.max() > MAX_ID:
            self.cache.raise_bad(self.name, start, np.ascontiguousarray(plus))
        ids = torch.from_numpy(np.ascontiguousarray(codes)).long()
        if a < self.lead <= b:
            ids = torch.cat([torch.tensor([self.bos_id]), ids])
        return ids.to(self.device)


def _encode(source, tokenizer: CharTokenizer, entry: Path, identity: dict) -> None:
    """Write the cache files of ``source`` (tokens, prefix sums, then the JSON)."""
    table = code_table(tokenizer)
    records, offset = [], 0
    nsum, counted = [np.zeros(1, np.int64)], 0       # non-ACGT bases before `offset`
    with atomic_file(f"{entry}.tokens") as tmp, open(tmp, "wb") as out:
        for name in source.names:
            length = source.lengths[name]
            records.append({"name": name, "offset": offset, "length": length})
            for lo in range(0, length, CHUNK):
                seq = source.fetch(name, lo, min(lo + CHUNK, length))
                codes = table[np.frombuffer(seq.encode("ascii", errors="replace"), np.uint8)]
                out.write(codes.tobytes())
                cum = np.cumsum((codes & (0xFF ^ 0x03 ^ SOFT)) != 4, dtype=np.int64)
                # prefix sums at the block boundaries k * BLOCK in (offset, offset + len]
                ks = np.arange(offset // BLOCK + 1, (offset + len(codes)) // BLOCK + 1)
                nsum.append(counted + cum[ks * BLOCK - offset - 1])
                counted += int(cum[-1]) if len(cum) else 0
                offset += len(codes)
    with atomic_file(f"{entry}.nsum") as tmp:
        np.concatenate(nsum).tofile(tmp)
    meta = {"format": FORMAT, "identity": identity, "tokenizer": tokenizer.to_config(),
            "block": BLOCK, "total": offset, "records": records}
    with atomic_file(f"{entry}.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
