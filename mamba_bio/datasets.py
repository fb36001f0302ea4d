"""Window datasets: genome windows for pretraining, species windows for classification.

Dimension names: B batch, L window length (bases).

Splits never share a base: regions are assigned to train/val/test by record (chromosome)
when there are enough records, else each record is cut into disjoint position ranges, or,
for k-fold cross-validation, into k blocks of which one is tested; a window is drawn
entirely inside one region. Sampling is a pure function of
(seed, step, rank), which is what makes a resumed run see the same batches.
"""
from __future__ import annotations

import bisect

import numpy as np
import torch

from .bed import SplitRegion
from .fasta import Window, n_fraction
from .token_cache import MAX_ID, TokenCache
from .tokenizers import CharTokenizer

SPLITS = ("train", "val", "test")


def check_fractions(fractions) -> tuple[float, float, float]:
    """``fractions`` as 3 floats (train, val, test) if they are non-negative shares summing to
    1; ValueError otherwise.

    >>> check_fractions([0.8, 0.1, 0.1])
    (0.8, 0.1, 0.1)
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be 3 non-negative shares summing to 1, got {fractions}")
    return fractions


def split_regions(source, fractions=(0.8, 0.1, 0.1), by: str = "auto",
                  regions=None, fold: tuple[int, int] | None = None) -> dict[str, list[Window]]:
    """Assign disjoint regions of ``source`` to train/val/test.

    Args:
        source: a ``Genome`` or ``Records`` (``names``, ``lengths``).
        fractions (train, val, test): shares of the bases; a 0 share gives an empty split.
        by ("auto", "record", "position", "fold"): "record" assigns whole records (the last
            ones to test, those before to val, at least one each), "position" cuts every
            region into consecutive ranges [0, f_train), [f_train, f_train + f_val), ...;
            "auto" = "record" when there are more records than non-empty splits; "fold"
            is k-fold cross-validation inside every region (see ``fold_ranges``; only the
            val share of ``fractions`` is used).
        regions (list of Window, optional): split these intervals (e.g. from a BED file)
            instead of the whole records.
        fold ((i, k), for by="fold"): test the i-th of k equal blocks of every region.

    Returns:
        {"train": [...], "val": [...], "test": [...]} lists of ``Window``.

    >>> from mambaseq.mamba_bio import Genome, write_fasta
    >>> genome = Genome(write_fasta("genome.fa", {"chr20": "ACGT" * 250}))   # 1000 bases
    >>> split_regions(genome, (0.9, 0.1, 0.0), by="position")["val"]
    [Window(name='chr20', start=900, end=1000, strand='+')]
    >>> four = Genome(write_fasta("four.fa", {f"c{i}": "ACGT" * 100 for i in range(1, 5)}))
    >>> {split: [w.name for w in ws] for split, ws in split_regions(four).items()}  # by record
    {'train': ['c1', 'c2'], 'val': ['c3'], 'test': ['c4']}
    """
    fractions = check_fractions(fractions)
    if regions is None:
        regions = [Window(n, 0, source.lengths[n]) for n in source.names]
    n_splits = sum(f > 0 for f in fractions)
    if (by == "fold") != (fold is not None):
        raise ValueError(f"fold=(i, k) goes with by='fold' and only with it (by={by!r}, "
                         f"fold={fold!r})")
    if by == "auto":
        by = "record" if len(regions) > n_splits else "position"
    out = {s: [] for s in SPLITS}
    if by == "record":
        if len(regions) < n_splits:
            raise ValueError(f"split by record needs at least {n_splits} records/regions, "
                             f"got {len(regions)}; use by='position'")
        n = len(regions)
        n_test = max(1, round(fractions[2] * n)) if fractions[2] > 0 else 0
        n_val = max(1, round(fractions[1] * n)) if fractions[1] > 0 else 0
        n_train = n - n_val - n_test
        if fractions[0] > 0 and n_train < 1:
            n_val, n_train = n_val - 1, 1
        out["train"] = list(regions[:n_train])
        out["val"] = list(regions[n_train:n_train + n_val])
        out["test"] = list(regions[n_train + n_val:])
    elif by == "position":
        bounds = np.cumsum((0.0,) + fractions)
        for r in regions:
            cuts = [r.start + int(round(b * (r.end - r.start))) for b in bounds]
            for split, lo, hi in zip(SPLITS, cuts[:-1], cuts[1:]):
                if hi > lo:
                    out[split].append(Window(r.name, lo, hi, r.strand))
    elif by == "fold":
        for r in regions:
            for split, ranges in fold_ranges(r.start, r.end, *fold, fractions[1]).items():
                out[split] += [Window(r.name, lo, hi, r.strand) for lo, hi in ranges]
    else:
        raise ValueError(f"by must be 'auto', 'record', 'position' or 'fold', got {by!r}")
    return out


def fold_ranges(start: int, end: int, fold: int, n_folds: int, val_fraction: float = 0.1
                ) -> dict[str, list[tuple[int, int]]]:
    """K-fold cross-validation ranges of [start, end): test is block ``fold`` of ``n_folds``
    equal blocks, val the ``val_fraction`` share right after it (before it for the last
    block), train the rest (one or two ranges). Over the k folds every base is tested once.

    >>> fold_ranges(0, 100, 1, 5, 0.1)
    {'train': [(0, 20), (50, 100)], 'val': [(40, 50)], 'test': [(20, 40)]}
    """
    if n_folds < 2 or not 0 <= fold < n_folds:
        raise ValueError(f"fold must be (i, k) with k >= 2 and 0 <= i < k, got ({fold}, {n_folds})")
    size = end - start
    lo, hi = start + fold * size // n_folds, start + (fold + 1) * size // n_folds
    n_val = int(round(val_fraction * size))
    if n_val > size - (hi - lo):
        raise ValueError(f"val_fraction {val_fraction} leaves no training bases with "
                         f"{n_folds} folds")
    val = (hi, hi + n_val) if hi + n_val <= end else (lo - n_val, lo)
    held_lo, held_hi = min(lo, val[0]), max(hi, val[1])   # test and val are adjacent
    train = [(a, b) for a, b in ((start, held_lo), (held_hi, end)) if b > a]
    return {"train": train, "val": [val] if n_val else [], "test": [(lo, hi)]}


class WindowSampler:
    """Random windows of a given length from a list of regions of one source.

    A region is chosen with probability proportional to the number of window starts it
    holds, then a start uniformly; windows with more than ``max_n_frac`` non-ACGT bases
    are redrawn (up to ``max_tries`` times).
    """

    def __init__(self, source, regions, max_n_frac: float = 0.1, max_tries: int = 100):
        self.source, self.regions = source, list(regions)
        self.max_n_frac, self.max_tries = max_n_frac, max_tries
        self.where = str(getattr(source, "path", "sequences"))   # for error messages

    def n_starts(self, length: int) -> int:
        """How many windows of ``length`` bases the regions hold."""
        return sum(max(r.end - r.start - length + 1, 0) for r in self.regions)

    def longest(self) -> int:
        return max((r.end - r.start for r in self.regions), default=0)

    def sample(self, rng: np.random.Generator, length: int) -> tuple[Window, str]:
        """One window (on strand "+") and its bases."""
        starts = np.array([r.end - r.start - length + 1 for r in self.regions])
        if (starts <= 0).all():
            raise ValueError(f"{self.where}: no region holds a window of {length} bases "
                             f"(longest region {self.longest()})")
        p = starts.clip(min=0) / starts.clip(min=0).sum()
        for _ in range(self.max_tries):
            r = self.regions[rng.choice(len(self.regions), p=p)]
            start = r.start + int(rng.integers(0, r.end - r.start - length + 1))
            seq = self.source.fetch(r.name, start, start + length)
            if n_fraction(seq) <= self.max_n_frac:
                return Window(r.name, start, start + length), seq
        raise ValueError(f"{self.where}: no window of {length} bases with at most "
                         f"{self.max_n_frac:.0%} N found in {self.max_tries} draws")


class PooledSampler:
    """Windows from several ``WindowSampler`` (e.g. one per FASTA file): a sampler is chosen
    in proportion to the windows it holds, then a window inside it.

    Args:
        samplers (list of WindowSampler), where (str): names them in error messages.
    """

    def __init__(self, samplers, where: str):
        self.samplers, self.where = list(samplers), where

    def sample(self, rng: np.random.Generator, length: int) -> tuple[WindowSampler, Window, str]:
        """(the sampler drawn from, a window on strand "+", its bases)."""
        starts = np.array([s.n_starts(length) for s in self.samplers], dtype=float)
        if starts.sum() <= 0:
            longest = max((s.longest() for s in self.samplers), default=0)
            raise ValueError(f"{self.where}: no region holds a window of {length} bases "
                             f"(longest region {longest})")
        sampler = self.samplers[rng.choice(len(self.samplers), p=starts / starts.sum())]
        return (sampler, *sampler.sample(rng, length))


def _cdf(p: np.ndarray) -> list[float]:
    """The cumulative probabilities ``rng.choice(len(p), p=p)`` looks a uniform draw up in
    (with ``searchsorted(side="right")``, i.e. ``bisect.bisect_right``)."""
    cdf = p.cumsum()
    cdf /= cdf[-1]
    return cdf.tolist()


def random_bases(rng: np.random.Generator, shape, tokenizer: CharTokenizer) -> torch.Tensor:
    """Token ids of shape ``shape``, each an A/C/G/T drawn uniformly."""
    bases = torch.tensor(tokenizer.base_ids)
    return bases[torch.from_numpy(rng.integers(0, len(bases), size=tuple(shape)))]


def mlm_mask(ids: torch.Tensor, rng: np.random.Generator, tokenizer: CharTokenizer,
             p: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of base tokens (Devlin et al. 2019, as Caduceus): each base is chosen
    with probability ``p``; a chosen one becomes [MASK] 80%, a random base 10%, itself 10%.

    Args:
        ids: (B, L) token ids.
    Returns:
        input_ids (B, L) masked, labels (B, L) = original id where chosen, else -100.
    """
    u = torch.from_numpy(rng.random((2,) + tuple(ids.shape)))
    chosen = (u[0] < p) & (ids >= min(tokenizer.base_ids))
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    random_base = random_bases(rng, ids.shape, tokenizer)
    inputs = torch.where(chosen & (u[1] < 0.8), torch.full_like(ids, tokenizer.mask_id), ids)
    inputs = torch.where(chosen & (u[1] >= 0.8) & (u[1] < 0.9), random_base, inputs)
    return inputs, labels


class GenomeWindows:
    """Pretraining batches: random windows from regions of a genome (one or several files).

    Args:
        source: ``Genome`` or ``Records``, or a list of them (e.g. one per FASTA file).
        regions (list of Window): where windows are drawn (e.g. ``split_regions(...)["train"]``);
            with a list of sources, one such list per source (windows are then spread over
            the sources in proportion to the windows each holds).
        tokenizer (CharTokenizer, default CharTokenizer()).
        objective ("clm" or "mlm"): "mlm" adds BERT masking and "labels".
        rc_augment (bool, True): each window is reverse-complemented with probability 1/2.
        max_n_frac (float, 0.1): windows with more non-ACGT bases are redrawn.
        seed (int, 0).

    ``get_batch(step, seq_len, batch_size, rank, world_size)`` returns
    {"input_ids": (B, L) long} (+ "labels" (B, L) for mlm); it is a pure function of its
    arguments and the seed. The windows are those ``WindowSampler.sample`` draws, read from
    the token cache of each file (``token_cache.TokenCache``, encoded on first use, here):
    a window is one read, its N fraction comes from prefix sums, its reverse strand from a
    table.

    >>> from mambaseq.mamba_bio import Genome, write_fasta
    >>> genome = Genome(write_fasta("genome.fa", {"chr1": "ACGTTGCA" * 500}))   # 4000 bases
    >>> ds = GenomeWindows(genome, split_regions(genome)["train"])
    >>> ds.get_batch(step=0, seq_len=64, batch_size=8)["input_ids"].shape
    torch.Size([8, 64])
    >>> torch.equal(ds.get_batch(3, 64, 8)["input_ids"], ds.get_batch(3, 64, 8)["input_ids"])
    True
    """

    def __init__(self, source, regions, tokenizer: CharTokenizer | None = None,
                 objective: str = "clm", rc_augment: bool = True, max_n_frac: float = 0.1,
                 seed: int = 0):
        if objective not in ("clm", "mlm"):
            raise ValueError(f"objective must be 'clm' or 'mlm', got {objective!r}")
        if isinstance(source, (list, tuple)):
            if len(regions) != len(source):
                raise ValueError(f"{len(source)} sources need as many region lists, "
                                 f"got {len(regions)}")
            samplers = [WindowSampler(s, r, max_n_frac) for s, r in zip(source, regions)]
        else:
            samplers = [WindowSampler(source, regions, max_n_frac)]
        self.sampler = PooledSampler(samplers, ", ".join(s.where for s in samplers))
        self.tokenizer = tokenizer or CharTokenizer()
        self.objective, self.rc_augment, self.seed = objective, rc_augment, seed
        # first use encodes each file once into the token cache; batches are read from it
        self.caches = [TokenCache.open(s.source, self.tokenizer) for s in samplers]
        self._plans: dict[int, tuple | None] = {}         # window length -> its ``_plan``

    def _plan(self, length: int) -> tuple[list[float], list] | None:
        """For windows of ``length``: the cumulative probabilities with which
        ``PooledSampler.sample`` picks a sampler, and per sampler those with which
        ``WindowSampler.sample`` picks a region, with the regions' names, starts and window
        start counts; None when no region holds such a window."""
        if length not in self._plans:
            samplers = self.sampler.samplers
            pool = np.array([s.n_starts(length) for s in samplers], dtype=float)
            plan = None
            if pool.sum() > 0:
                plan = (_cdf(pool / pool.sum()), [])
                for s in samplers:
                    spans = np.array([r.end - r.start - length + 1 for r in s.regions])
                    kept = spans.clip(min=0)
                    plan[1].append(None if (spans <= 0).all() else (
                        _cdf(kept / kept.sum()), [r.name for r in s.regions],
                        [r.start for r in s.regions], spans.tolist()))
            self._plans[length] = plan
        return self._plans[length]

    def _draw(self, rng: np.random.Generator, plan, row: np.ndarray) -> tuple[int, str, int]:
        """Fill ``row`` ((L,) uint8) with the codes of the window ``self.sampler.sample``
        would draw with ``rng`` (the same random numbers, in the same order: rng.choice with
        probabilities p is one ``rng.random()`` looked up in the cumulative p), read from the
        token cache; returns (sampler index, record name, start)."""
        length = len(row)
        which = bisect.bisect_right(plan[0], rng.random())
        sampler, cache = self.sampler.samplers[which], self.caches[which]
        cdf, names, starts, spans = plan[1][which]
        for _ in range(sampler.max_tries):
            i = bisect.bisect_right(cdf, rng.random())
            start = starts[i] + int(rng.integers(0, spans[i]))
            cache.read_into(row, names[i], start)
            if sampler.max_n_frac >= 1.0 or 1.0 - (length - cache.n_count(
                    names[i], start, start + length, row)) / length <= sampler.max_n_frac:
                return which, names[i], start
        raise ValueError(f"{sampler.where}: no window of {length} bases with at most "
                         f"{sampler.max_n_frac:.0%} N found in {sampler.max_tries} draws")

    def get_batch(self, step: int, seq_len: int, batch_size: int, rank: int = 0,
                  world_size: int = 1) -> dict:
        # rank (not world_size) enters the seed: each process draws its own windows.
        rng = np.random.default_rng([self.seed, step, rank])
        plan = self._plan(seq_len)
        if plan is None:                      # no window that long: the sampler's error
            self.sampler.sample(rng, seq_len)
        codes = np.empty((batch_size, seq_len), dtype=np.uint8)          # (B, L)
        flip, drawn = np.zeros(batch_size, dtype=bool), []
        for b in range(batch_size):
            drawn.append(self._draw(rng, plan, codes[b]))
            flip[b] = self.rc_augment and rng.random() < 0.5
        if codes.max(initial=0) > MAX_ID:     # a letter the tokenizer refuses: its error
            b = int(np.flatnonzero(codes.max(axis=1) > MAX_ID)[0])
            which, name, start = drawn[b]
            self.caches[which].raise_bad(name, start, codes[b])
        if flip.any():
            codes[flip] = self.caches[0].complement[codes[flip, ::-1]]
        ids = torch.from_numpy(codes).long()                              # (B, L)
        if self.objective == "mlm":
            inputs, labels = mlm_mask(ids, rng, self.tokenizer)
            return {"input_ids": inputs, "labels": labels}
        return {"input_ids": ids}


class SpeciesWindows:
    """Species classification windows, Great-Apes style (Mamba paper, section 4.3.4):
    pick a species uniformly, then a region of it in proportion to its size, then a
    window uniformly inside it; train/val/test regions are disjoint.

    Args:
        species (dict name -> list of sources): one or more ``Genome``/``Records`` each.
        fractions (train, val, test, default 0.8/0.1/0.1), by ("auto"/"record"/"position"/
            "fold"), fold ((i, k) for by="fold"): passed to ``split_regions`` per source;
            "auto" splits by record when a species has enough records, else by disjoint
            position ranges; "fold" tests block i of k of every source.
        tokenizer (CharTokenizer), max_n_frac (float, 0.1), seed (int, 0).
        rc_augment (bool, True): reverse-complement half of the training windows.
        substitution_rate (float, 0): on training windows, replace each base by a random
            A/C/G/T with this probability (a regulariser: exact long matches are broken,
            base composition is kept).

    >>> from mambaseq.mamba_bio import Genome, simulate_genomes, write_species_fastas
    >>> fastas = write_species_fastas("species", simulate_genomes("(human:0.1,mouse:0.1);",
    ...                                                           length=3000))
    >>> ds = SpeciesWindows({name: [Genome(path)] for name, path in fastas.items()})
    >>> batch = ds.get_batch(0, seq_len=100, batch_size=16)
    >>> batch["input_ids"].shape, batch["labels"].shape
    (torch.Size([16, 100]), torch.Size([16]))
    >>> seqs, labels = ds.fixed_windows("test", seq_len=100, per_class=3)
    >>> ds.classes, [len(s) for s in seqs], labels
    (['human', 'mouse'], [100, 100, 100, 100, 100, 100], array([0, 0, 0, 1, 1, 1]))
    """

    def __init__(self, species: dict, fractions=(0.8, 0.1, 0.1), by: str = "auto",
                 tokenizer: CharTokenizer | None = None, max_n_frac: float = 0.1,
                 rc_augment: bool = True, seed: int = 0, fold: tuple[int, int] | None = None,
                 substitution_rate: float = 0.0):
        if not 0.0 <= substitution_rate < 1.0:
            raise ValueError(f"substitution_rate must be in [0, 1), got {substitution_rate}")
        if len(species) < 2:
            raise ValueError(f"species classification needs at least 2 species, "
                             f"got {len(species)}")
        self.classes = list(species)
        self.tokenizer = tokenizer or CharTokenizer()
        self.rc_augment, self.seed = rc_augment, seed
        self.substitution_rate = substitution_rate
        self.samplers = {s: [] for s in SPLITS}     # split -> per class: PooledSampler
        for name, sources in species.items():
            per_split = {s: [] for s in SPLITS}
            for src in sources:
                # "auto" by record needs several records in one file; a species given as
                # several one-record files is split across its files' positions.
                for split, regions in split_regions(src, fractions, by, fold=fold).items():
                    if regions:
                        per_split[split].append(WindowSampler(src, regions, max_n_frac))
            for split in SPLITS:
                self.samplers[split].append(PooledSampler(per_split[split],
                                                          f"species {name!r} ({split})"))

    def regions(self, split: str) -> list[list[tuple[str, Window]]]:
        """Per class: (source path, region) of ``split`` (for checks and reports)."""
        return [[(str(getattr(s.source, "path", "")), r) for s in pooled.samplers
                 for r in s.regions] for pooled in self.samplers[split]]

    def longest_regions(self, split: str) -> list[int]:
        """Per class, the length of its longest region in ``split`` (the longest window it
        can give)."""
        return [max((s.longest() for s in pooled.samplers), default=0)
                for pooled in self.samplers[split]]

    def split_table(self) -> list[SplitRegion]:
        """Every region of every split, for ``mamba_bio.bed.write_split_bed``."""
        return [SplitRegion(split, self.classes[label], path, window) for split in SPLITS
                for label, regions in enumerate(self.regions(split)) for path, window in regions]

    def _encode(self, sampler, win, seq):
        return self.tokenizer.encode(seq, source=f"{sampler.where}:{win.name}:{win.start}")

    def _draw(self, rng, split, label, seq_len):
        """(sampler, window, bases) of one window of class ``label`` from ``split``."""
        pooled = self.samplers[split][label]
        if not pooled.samplers:
            raise ValueError(f"species {self.classes[label]!r} has no {split} region")
        return pooled.sample(rng, seq_len)

    def get_batch(self, step: int, seq_len: int, batch_size: int, rank: int = 0,
                  world_size: int = 1, split: str = "train") -> dict:
        """{"input_ids": (B, L) long, "labels": (B,) long}; RC augmentation and base
        substitutions (when asked) on train."""
        rng = np.random.default_rng([self.seed, step, rank])
        labels = rng.integers(0, len(self.classes), size=batch_size)
        rows = []
        for label in labels:
            ids = self._encode(*self._draw(rng, split, int(label), seq_len))
            if split == "train" and self.rc_augment and rng.random() < 0.5:
                ids = self.tokenizer.reverse_complement_ids(ids)
            rows.append(ids)
        ids = torch.stack(rows)                                              # (B, L)
        if split == "train" and self.substitution_rate:
            ids = self._substitute(rng, ids)
        return {"input_ids": ids, "labels": torch.from_numpy(labels).long()}

    def _substitute(self, rng, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` (B, L) with each A/C/G/T replaced, with probability ``substitution_rate``,
        by a base drawn uniformly from A/C/G/T (N and specials are left alone)."""
        hit = torch.from_numpy(rng.random(ids.shape) < self.substitution_rate)
        hit &= torch.isin(ids, torch.tensor(self.tokenizer.base_ids))
        return torch.where(hit, random_bases(rng, ids.shape, self.tokenizer), ids)

    def tiled_windows(self, split: str, seq_len: int, per_class: int
                      ) -> tuple[list[str], np.ndarray]:
        """Non-overlapping windows tiling the regions of ``split`` (a window with more than
        ``max_n_frac`` N is left out), at most ``per_class`` of them per class, evenly spread
        over the tiles. The same regions at every ``seq_len``, no window scored twice: the
        evaluation set for accuracy against window length.

        Returns:
            sequences (list of str, strand "+"), labels (n,) int64.
        Raises:
            ValueError: a class has no tile of ``seq_len`` bases in ``split``.
        """
        seqs, labels = [], []
        for label, pooled in enumerate(self.samplers[split]):
            tiles = [(s, r.name, start) for s in pooled.samplers for r in s.regions
                     for start in range(r.start, r.end - seq_len + 1, seq_len)]
            if not tiles:
                raise ValueError(f"species {self.classes[label]!r} has no {split} window of "
                                 f"{seq_len} bases")
            picks = np.unique(np.linspace(0, len(tiles) - 1, min(per_class, len(tiles)))
                              .round().astype(int))
            for i in picks:
                sampler, name, start = tiles[i]
                seq = sampler.source.fetch(name, start, start + seq_len)
                if n_fraction(seq) <= sampler.max_n_frac:
                    seqs.append(seq)
                    labels.append(label)
        return seqs, np.array(labels, dtype=np.int64)

    def fixed_windows(self, split: str, seq_len: int, per_class: int
                      ) -> tuple[list[str], np.ndarray]:
        """A fixed evaluation set: ``per_class`` windows of every class from ``split``
        (seeded by the dataset seed and the split, so identical across calls and models).

        Returns:
            sequences (list of str, strand "+"), labels (n,) int64.
        """
        rng = np.random.default_rng([self.seed, 1 + SPLITS.index(split), 10_007])
        seqs, labels = [], []
        for label in range(len(self.classes)):
            for _ in range(per_class):
                seqs.append(self._draw(rng, split, label, seq_len)[2])
                labels.append(label)
        return seqs, np.array(labels, dtype=np.int64)
