"""Nucleotide tokenizers: a character tokenizer (A C G T N + specials) and a k-mer tokenizer.

Dimension names: B batch, L length (tokens), V vocabulary size.

Character vocabulary (``CharTokenizer``), fixed so that checkpoints stay compatible:

    0 [PAD]   1 [MASK]   2 [BOS]   3 [EOS]   4 A   5 C   6 G   7 T   8 N

IUPAC ambiguity codes (R Y S W K M B D H V) map to N unless ``strict=True``; any other
character is an error that names the character, its position and the source.
"""
from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import numpy as np
import torch

SPECIALS = ("[PAD]", "[MASK]", "[BOS]", "[EOS]")
BASES = "ACGTN"
IUPAC_AMBIGUOUS = "RYSWKMBDHV"
# Complement of every IUPAC letter (upper and lower case): the RC of an ambiguous base is the
# ambiguity code of the complemented set, e.g. R = A|G -> Y = C|T.
_COMPLEMENT = str.maketrans("ACGTNRYSWKMBDHVacgtnryswkmbdhv", "TGCANYRSWMKVHDBtgcanyrswmkvhdb")


def reverse_complement(seq: str) -> str:
    """Reverse complement of a nucleotide string; case and IUPAC codes are kept.

    >>> reverse_complement("ACGTNr")
    'yNACGT'
    """
    return seq.translate(_COMPLEMENT)[::-1]


def _unknown_base(seq: str, pos: int, source: str | None, allowed: str) -> ValueError:
    where = f" in {source}" if source else ""
    return ValueError(f"unknown base {seq[pos]!r} at position {pos}{where} (allowed: {allowed})")


class CharTokenizer:
    """One token per base: A C G T N and the specials [PAD] [MASK] [BOS] [EOS].

    Args:
        strict (bool, False): raise on IUPAC ambiguity codes instead of mapping them to N.
            Characters outside IUPAC always raise.
        uppercase (bool, True): fold lowercase (soft-masked) bases to their uppercase token;
            with False a lowercase base is an error, so that soft-masking cannot slip
            through silently. Use ``soft_mask`` to keep the case information.

    >>> tok = CharTokenizer()
    >>> tok.encode("ACgtR")                  # R (A or G) reads as N
    tensor([4, 5, 6, 7, 8])
    >>> tok.soft_mask("ACgtR")
    tensor([False, False,  True,  True, False])
    >>> batch = tok.batch_encode(["ACGT", "AC"])
    >>> batch["input_ids"], batch["attention_mask"]          # (2, 4) each, right-padded
    (tensor([[4, 5, 6, 7],
            [4, 5, 0, 0]]), tensor([[ True,  True,  True,  True],
            [ True,  True, False, False]]))
    """

    pad_id, mask_id, bos_id, eos_id = 0, 1, 2, 3
    vocab = SPECIALS + tuple(BASES)
    base_ids = (4, 5, 6, 7)                               # A C G T: what an LM predicts

    def __init__(self, strict: bool = False, uppercase: bool = True):
        self.strict, self.uppercase = strict, uppercase
        lut = np.full(256, -1, dtype=np.int16)          # byte -> token id, -1 = not allowed
        letters = BASES if strict else BASES + IUPAC_AMBIGUOUS
        for ch in letters:
            tid = self.vocab.index(ch) if ch in BASES else self.vocab.index("N")
            lut[ord(ch)] = tid
            if uppercase:
                lut[ord(ch.lower())] = tid
        self._lut = lut
        self._allowed = "A C G T N" + ("" if strict else " and IUPAC codes R Y S W K M B D H V") \
            + (", either case" if uppercase else ", uppercase")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def complement_map(self) -> torch.Tensor:
        """(V,) long: id -> id of its complement (A<->T, C<->G; N and specials map to
        themselves). This is the map the RC-equivariant backbone takes."""
        comp = {"A": "T", "C": "G", "G": "C", "T": "A"}
        return torch.tensor([self.vocab.index(comp.get(t, t)) for t in self.vocab])

    @property
    def base_letters(self) -> list[int]:
        """Per token id: 0-3 for A, C, G, T, -1 for N and specials (the ``letters`` of
        ``core.NgramEmbedding``, which turns them into overlapping k-mers)."""
        return [self.base_ids.index(i) if i in self.base_ids else -1
                for i in range(self.vocab_size)]

    def to_config(self) -> dict:
        """JSON-able settings; ``from_config`` rebuilds the same tokenizer."""
        return {"type": "char", "strict": self.strict, "uppercase": self.uppercase}

    @classmethod
    def from_config(cls, cfg: dict) -> "CharTokenizer":
        if cfg.get("type", "char") != "char":
            raise ValueError(f"not a character tokenizer config: {cfg}")
        return cls(strict=cfg.get("strict", False), uppercase=cfg.get("uppercase", True))

    def save(self, directory) -> None:
        """Write ``directory/tokenizer.json`` (beside a model folder's config.json; a
        training run writes it with the model, through ``core.model_assets``)."""
        from mambaseq.core.model_folder import TOKENIZER_FILE    # (core only when needed)

        Path(directory, TOKENIZER_FILE).write_text(json.dumps(self.to_config(), indent=2) + "\n")

    @classmethod
    def load(cls, directory) -> "CharTokenizer":
        """The tokenizer saved in model folder ``directory``; never a default one (a model
        trained with ``strict`` or ``uppercase=False`` must not silently read inputs another
        way).

        Raises:
            FileNotFoundError: there is no ``directory/tokenizer.json``.
            ValueError: tokenizer.json is not a character tokenizer config; names the file.
        """
        from mambaseq.core.model_folder import TOKENIZER_FILE, read_tokenizer_config

        config = read_tokenizer_config(directory)         # its errors name the file
        try:
            return cls.from_config(config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{Path(directory, TOKENIZER_FILE)}: {err}") from None

    def encode_numpy(self, seq: str, source: str | None = None) -> np.ndarray:
        """seq (L chars) -> (L,) uint8 token ids; raises naming the first bad letter,
        its 0-based position and ``source`` (e.g. "genome.fa:chr1:1000")."""
        try:
            raw = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError as err:
            raise _unknown_base(seq, err.start, source, self._allowed) from None
        ids = self._lut[raw]
        invalid = ids < 0
        if invalid.any():
            raise _unknown_base(seq, int(np.flatnonzero(invalid)[0]), source, self._allowed)
        return ids.astype(np.uint8)

    def encode(self, seq: str, add_bos: bool = False, add_eos: bool = False,
               source: str | None = None) -> torch.Tensor:
        """seq -> (L,) long ids (L + add_bos + add_eos)."""
        ids = torch.from_numpy(self.encode_numpy(seq, source).astype(np.int64))
        parts = ([torch.tensor([self.bos_id])] if add_bos else []) + [ids] \
            + ([torch.tensor([self.eos_id])] if add_eos else [])
        return torch.cat(parts) if len(parts) > 1 else ids

    def soft_mask(self, seq: str) -> torch.Tensor:
        """(L,) bool, True where the base is lowercase (repeat soft-masking in UCSC/Ensembl)."""
        raw = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
        return torch.from_numpy((raw >= ord("a")) & (raw <= ord("z")))

    def decode(self, ids) -> str:
        """ids (L,) -> string; specials are written as their names, e.g. "[PAD]"."""
        return "".join(self.vocab[int(i)] for i in ids)

    def batch_encode(self, seqs, add_bos: bool = False, add_eos: bool = False,
                     pad_to_multiple_of: int = 1) -> dict:
        """Encode and right-pad a list of sequences.

        Returns:
            dict with "input_ids" (B, L) long, padded with ``pad_id``, and
            "attention_mask" (B, L) bool, True on real tokens; L is the longest sequence
            rounded up to ``pad_to_multiple_of``.
        """
        encoded = [self.encode(s, add_bos=add_bos, add_eos=add_eos) for s in seqs]
        length = max(len(e) for e in encoded)
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        ids = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(encoded), length, dtype=torch.bool)
        for i, e in enumerate(encoded):
            ids[i, :len(e)] = e
            mask[i, :len(e)] = True
        return {"input_ids": ids, "attention_mask": mask}

    def reverse_complement_ids(self, ids: torch.Tensor, attention_mask: torch.Tensor = None
                               ) -> torch.Tensor:
        """Reverse complement of token ids (..., L); with a right-padded batch pass its
        ``attention_mask`` (..., L) so that each row is reversed within its own length and
        the padding stays on the right. Specials such as [BOS] move with the reversal, so
        reverse-complement ids encoded without them."""
        return reverse_complement_ids(ids, self.complement_map, attention_mask)


def reverse_complement_ids(ids: torch.Tensor, complement_map: torch.Tensor,
                           attention_mask: torch.Tensor = None) -> torch.Tensor:
    """ids (..., L) -> complement_map[ids] reversed along L, each row within its mask.

    Args:
        ids: (..., L) long token ids.
        complement_map: (V,) long, e.g. ``CharTokenizer().complement_map``.
        attention_mask: (..., L) bool, True on real tokens which must be a prefix of each
            row (right padding). None = every position is real.
    """
    comp = complement_map.to(ids.device)[ids]                          # (..., L)
    if attention_mask is None:
        return comp.flip(-1)
    length = ids.shape[-1]
    n = attention_mask.sum(-1, keepdim=True)                           # (..., 1)
    pos = torch.arange(length, device=ids.device)
    src = torch.where(pos < n, n - 1 - pos, pos)                       # (..., L)
    return comp.gather(-1, src)


def kmer_index(base: np.ndarray, k: int, stride: int = 1) -> np.ndarray:
    """Base codes (L,) (A 0, C 1, G 2, T 3, anything else an N) -> (n,) int64 index in
    [0, 4^k) of the k-mer starting every ``stride`` bases (n = (L - k) // stride + 1), -1
    where the k-mer holds an N. Memory O(L) whatever k (k <= 31)."""
    if not 1 <= k <= 31:
        raise ValueError(f"k must be in 1..31, got {k}")
    n = len(base) - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    is_n = (base < 0) | (base > 3)
    code = np.where(is_n, 0, base).astype(np.int64)
    index = np.zeros(n, dtype=np.int64)
    for j in range(k):
        index = index * 4 + code[j:j + n]
    index[np.convolve(is_n, np.ones(k, dtype=np.int64), "valid") > 0] = -1
    return index[::stride]


class KmerTokenizer:
    """Overlapping or strided k-mers as tokens (for comparison with the character model,
    and as count features for the k-mer baseline).

    Vocabulary: [PAD] [MASK] [BOS] [EOS] [NKMER] then the 4^k k-mers in lexicographic
    order; a k-mer that contains anything but A C G T (N, IUPAC) is [NKMER].

    Args:
        k (int): k-mer length.
        stride (int, default k): step between k-mer starts; 1 = fully overlapping.
        strict (bool, False): as in ``CharTokenizer``.

    >>> tok = KmerTokenizer(k=3, stride=3)
    >>> ids = tok.encode("ACGTTT"); ids, tok.decode(ids)
    (tensor([11, 68]), 'ACG TTT')
    >>> counts = tok.counts("ACGTTT"); counts.shape, float(counts.sum())  # counts of each 3-mer
    ((64,), 2.0)
    """

    specials = SPECIALS + ("[NKMER]",)
    nkmer_id = 4

    def __init__(self, k: int, stride: int | None = None, strict: bool = False):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.stride = k, stride or k
        self.chars = CharTokenizer(strict=strict)
        self.kmers = tuple("".join(p) for p in product("ACGT", repeat=k))

    @property
    def vocab_size(self) -> int:
        return len(self.specials) + 4 ** self.k

    def _kmer_index(self, seq: str, source: str | None = None) -> np.ndarray:
        """(n_kmers,) int64 index in [0, 4^k) of each k-mer start, or -1 for [NKMER]."""
        return kmer_index(self.chars.encode_numpy(seq, source).astype(np.int64) - 4,
                          self.k, self.stride)

    def encode(self, seq: str, source: str | None = None) -> torch.Tensor:
        """seq -> (n,) long k-mer token ids, n = (L - k) // stride + 1."""
        index = self._kmer_index(seq, source)
        ids = np.where(index >= 0, index + len(self.specials), self.nkmer_id)
        return torch.from_numpy(ids)

    def decode(self, ids) -> str:
        """Token ids -> the k-mers (or special names) joined with spaces."""
        return " ".join(self.specials[i] if i < len(self.specials)
                        else self.kmers[i - len(self.specials)] for i in map(int, ids))

    def counts(self, seq: str, source: str | None = None) -> np.ndarray:
        """(4^k,) float64 counts of each k-mer in ``seq`` (k-mers with N are not counted)."""
        index = self._kmer_index(seq, source)
        return np.bincount(index[index >= 0], minlength=4 ** self.k).astype(np.float64)
