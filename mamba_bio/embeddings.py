"""Embeddings of long sequences in bounded memory.

Dimension names: L length, D d_model (F for an RC-symmetrised classifier's features).

A causal backbone (``core.MambaLM``, or a causal ``core.SequenceClassifier``) is run chunk
by chunk with its recurrent state passed on, so a 2^20-base record costs one chunk of
activations and is exactly the same as one whole pass. A bidirectional backbone needs the
whole sequence at once; ``BiMambaBackbone`` then bounds its own activations (it chunks
internally without gradients) and the hidden states are yielded in chunks all the same.

One vector per record of a FASTA file, in memory (no file written):

    from mambaseq.pipelines.training import load_model
    vectors, names = embed_fasta(load_model("runs/lm/model"), CharTokenizer.load("runs/lm/model"),
                                 "genes.fa")           # vectors (records, F) float32
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from mambaseq.core import MambaBackbone

from .fasta import open_sequences
from .predict import has_base, window_spans
from .token_cache import TokenCache


@torch.no_grad()
def hidden_chunks(model, ids: torch.Tensor, chunk_len: int = 2 ** 14):
    """Yield (start, h) with h (chunk, D) the final hidden states of positions
    [start, start + chunk) of one sequence ``ids`` (L,); chunks cover all of it in order.

    ``ids`` is a tensor or a ``token_cache.CachedIds`` (read slice by slice). ``model``: a
    ``core.MambaLM``, ``core.SequenceClassifier`` or ``mamba_bio.MaskedLM`` (anything with
    ``embedding`` and ``backbone``).
    """
    if isinstance(model.backbone, MambaBackbone):
        state = None
        for start in range(0, len(ids), chunk_len):
            x = model.embedding(ids[start:start + chunk_len][None])       # (1, chunk, D)
            h, state = model.backbone(x, state=state, return_state=True)
            yield start, h[0]
    else:
        h = model.backbone(model.embedding(ids[:][None]))[0]              # (L, D)
        for start in range(0, len(ids), chunk_len):
            yield start, h[start:start + chunk_len]


def pooled_features(model, h: torch.Tensor) -> torch.Tensor:
    """Hidden states (..., D) -> the features a classifier pools, (..., F): RC-symmetrised
    for an RC-equivariant ``SequenceClassifier``, unchanged otherwise."""
    features = getattr(model, "features", None)
    return h if features is None else features(h[None])[0]


@torch.no_grad()
def embed_record(model, ids: torch.Tensor, chunk_len: int = 2 ** 14, pooling: str = "mean",
                 positions_path: str | Path | None = None) -> np.ndarray:
    """Pooled features (F,) float32 of one record ``ids`` (L,), on the model's device.

    Args:
        pooling: "mean" or "max" over the L positions of :func:`pooled_features`, or
            "last" (a causal model's state after the whole record; see :func:`embed_tiles`).
        positions_path: also write the hidden states (L, D) float32 there (.npy), filled
            chunk by chunk through a memory map.
    """
    pooled, positions = None, None
    with tqdm(total=len(ids), unit="bp", unit_scale=True, leave=False) as bar:
        for start, h in hidden_chunks(model, ids, chunk_len):                 # h (chunk, D)
            if positions_path is not None:
                if positions is None:
                    positions = np.lib.format.open_memmap(
                        positions_path, mode="w+", dtype=np.float32, shape=(len(ids), h.shape[-1]))
                positions[start:start + len(h)] = h.float().cpu().numpy()
            f = pooled_features(model, h).float()                             # (chunk, F)
            if pooling == "last":
                pooled = f[-1]
            else:
                part = f.sum(0) if pooling == "mean" else f.amax(0)
                pooled = part if pooled is None else (
                    pooled + part if pooling == "mean" else torch.maximum(pooled, part))
            bar.update(len(h))
    if positions is not None:
        positions.flush()
    return (pooled / len(ids) if pooling == "mean" else pooled).cpu().numpy()


class RecordEmbeddings(NamedTuple):
    """One vector per record: ``vectors`` (records, F) float32, row i for ``names[i]``."""

    vectors: np.ndarray
    names: list[str]


def positions_file(folder: str | Path, index: int, name: str) -> Path:
    """``folder/<index>_<name>.npy``, the per-position file of record ``index`` (characters
    other than letters, digits, ``_.-`` in ``name`` become ``_``)."""
    return Path(folder) / f"{index}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.npy"


def embed_fasta(model, tokenizer, fasta: str | Path, *, pooling: str = "mean",
                chunk_len: int = 2 ** 14, positions_dir: str | Path | None = None,
                decompress_gzip: bool = False) -> RecordEmbeddings:
    """The pooled embedding of every record of ``fasta`` (FASTA or GenBank), in file order.

    ``model`` is any genome model (``core.MambaLM``, ``core.SequenceClassifier``,
    ``MaskedLM``) and ``tokenizer`` the one it was trained with; each record is read on the
    model's device in chunks of ``chunk_len`` bases (a causal model's memory does not grow
    with the record). Nothing is written unless ``positions_dir`` (an existing folder) is
    given: then record i's hidden states (L, D) go to :func:`positions_file`.

        vectors, names = embed_fasta(model, tokenizer, "genes.fa")    # (records, F), [str]

    Raises:
        ValueError: an empty record or an unknown base, naming the file and the record.
    """
    return embed_sequences(model, tokenizer, open_sequences(fasta, decompress_gzip=decompress_gzip),
                           label=str(fasta), pooling=pooling, chunk_len=chunk_len,
                           positions_dir=positions_dir)


def embed_sequences(model, tokenizer, source, *, label: str, pooling: str = "mean",
                    chunk_len: int = 2 ** 14,
                    positions_dir: str | Path | None = None) -> RecordEmbeddings:
    """:func:`embed_fasta` of an opened ``source`` (``fasta.open_sequences``); ``label``
    (its file name) names it in errors."""
    check_pooling(model, pooling)
    device = next(model.parameters()).device
    cache = TokenCache.open(source, tokenizer)     # encoded once; records read chunk by chunk
    rows = []
    for i, name in enumerate(tqdm(source.names, unit="record")):
        ids = cache.ids(name)                                              # lazy (L,)
        if len(ids) == 0:
            raise ValueError(f"{label}:{name}: empty record")
        rows.append(embed_record(model, ids.to(device), chunk_len, pooling,
                                 positions_file(positions_dir, i, name)
                                 if positions_dir is not None else None))
    return RecordEmbeddings(np.stack(rows).astype(np.float32), list(source.names))


# ---------------------------------------------------------------------------------------------
# One vector per tile along the records
# ---------------------------------------------------------------------------------------------

POOLINGS = ("mean", "max", "last")


class TileTable(NamedTuple):
    """Where the tiles are: row i is [``start[i]``, ``end[i]``) of record ``record[i]``
    (0-based, end-exclusive). ``record`` (T,) str, ``start`` and ``end`` (T,) int64."""

    record: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


class TileEmbeddings(NamedTuple):
    """``vectors`` (T, F) float32, row i the tile ``tiles[i]``."""

    vectors: np.ndarray
    tiles: TileTable


def tile_spans(source, window: int, stride: int | None = None, regions=None):
    """Yield (record, start, end) of the tiles of ``source`` (``fasta.open_sequences``), in
    file order (or in the order of ``regions``, ``Window``s to tile instead of whole records).

    The rule (``predict.window_spans``): a tile every ``stride`` bases (default ``window``),
    and when the last one stops short of the end, one more tile [end - window, end) aligned
    to it, so every tile has ``window`` bases and, with stride <= window, every base is in a
    tile. A record (region) shorter than ``window`` is one tile of its whole length.

    >>> from mambaseq.mamba_bio import Genome, write_fasta
    >>> g = Genome(write_fasta("t.fa", {"a": "ACGT" * 25, "b": "ACG"}))       # 100, 3 bases
    >>> list(tile_spans(g, 40))
    [('a', 0, 40), ('a', 40, 80), ('a', 60, 100), ('b', 0, 3)]
    """
    stride = stride or window
    if regions is None:
        regions = [(name, 0, source.lengths[name]) for name in source.names]
    for name, start, end, *_ in regions:
        for lo, hi in window_spans(end - start, window, stride):
            yield name, start + lo, start + hi


def _pool(f: torch.Tensor, pooling: str) -> torch.Tensor:
    """Features (B, L, F) -> (B, F) by ``pooling`` over L."""
    if pooling == "mean":
        return f.mean(1)
    if pooling == "max":
        return f.amax(1)
    return f[:, -1]


def check_pooling(model, pooling: str) -> None:
    """``pooling`` is one of :data:`POOLINGS` and fits ``model``: "last" needs a causal
    backbone (the last position of a bidirectional one has not read the tile)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "last" and not isinstance(model.backbone, MambaBackbone):
        raise ValueError(f"pooling 'last' needs a causal model; this "
                         f"{type(model).__name__} reads both directions: use mean or max")


@torch.no_grad()
def tile_vectors(model, ids: torch.Tensor, pooling: str = "mean",
                 both_strands: bool = False, complement: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """ids (B, W) of tiles of one length -> pooled features (B, F) float32.

    With ``both_strands`` the vector is the mean of those of the tile and of its reverse
    complement (``complement``: token id -> its complement's id), so a tile and its reverse
    complement get the same vector whatever the model."""
    f = _pool(pooled_features(model, model.backbone(model.embedding(ids))), pooling).float()
    if both_strands:
        rc = complement.to(ids.device)[ids].flip(-1)                             # (B, W)
        f = (f + _pool(pooled_features(model, model.backbone(model.embedding(rc))),
                       pooling).float()) / 2
    return f


def embed_tiles(model, tokenizer, fasta: str | Path, window: int, stride: int | None = None,
                *, pooling: str = "mean", both_strands: bool = False, regions=None,
                batch_tokens: int = 2 ** 13, decompress_gzip: bool = False) -> TileEmbeddings:
    """One vector per tile of ``window`` bases every ``stride`` along every record of
    ``fasta`` (tiles by :func:`tile_spans`), batched; memory: one batch of
    ``batch_tokens`` bases of activations (at least one tile) plus the (T, F) vectors,
    whatever the genome's size.

        vectors, tiles = embed_tiles(model, tokenizer, "genome.fa", window=4096)
        vectors.shape        # (T, F) float32; tiles.record[i], tiles.start[i], tiles.end[i]

    Tiles without a single A, C, G or T (assembly gaps) are left out. Each tile is read
    alone (a tile's vector is that of the tile as a sequence of its own).

    Args:
        model: any genome model with ``embedding`` and ``backbone``: a ``core.MambaLM``
            (pretrain-genome clm), a ``mamba_bio.MaskedLM`` (mlm, a converted hub
            checkpoint) or a ``core.SequenceClassifier`` (classify-species: its backbone,
            the head left out; RC-symmetrised features for an rc_invariant one).
        pooling: "mean" (default; the tile's overall content, what binning wants), "max"
            (the strongest local motif of each feature; for tiles that differ by a few
            elements), "last" (causal models only: the state after reading the whole tile,
            what a causal classifier pooled with "last" was trained on).
        both_strands: average the vectors of the tile and its reverse complement; use it
            for a model trained on both strands (rc augmentation, the default of
            pretrain-genome and classify-species), so that a contig gets the same vector on
            either strand. An rc_invariant classifier is strand-independent already.
        regions: ``Window``s (name, start, end) to tile instead of whole records.
    Raises:
        ValueError: a bad ``pooling``, an unknown base (naming the file, record and start).
    """
    return embed_tiles_source(model, tokenizer,
                              open_sequences(fasta, decompress_gzip=decompress_gzip),
                              window, stride, label=str(fasta), pooling=pooling,
                              both_strands=both_strands, regions=regions,
                              batch_tokens=batch_tokens)


def embed_tiles_source(model, tokenizer, source, window: int, stride: int | None = None, *,
                       label: str, pooling: str = "mean", both_strands: bool = False,
                       regions=None, batch_tokens: int = 2 ** 13) -> TileEmbeddings:
    """:func:`embed_tiles` of an opened ``source``; ``label`` names it in errors."""
    check_pooling(model, pooling)
    if window < 1 or (stride is not None and stride < 1):
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")
    model.eval()
    device = next(model.parameters()).device
    complement = tokenizer.complement_map if both_strands else None
    per_batch = max(1, batch_tokens // window)
    spans = list(tile_spans(source, window, stride, regions))
    rows, batch, out = [], [], {}

    def flush():
        v = tile_vectors(model, torch.stack(batch).to(device), pooling, both_strands,
                         complement).cpu()                                    # (B, F)
        if not out:
            # One array for all tiles, filled in place: keeping every batch's small result
            # alive instead fragments the heap, and RSS grew ~1 GB over a 6.6 Mb genome.
            out["vectors"], out["n"] = np.zeros((len(spans), v.shape[1]), np.float32), 0
        out["vectors"][out["n"]:out["n"] + len(v)] = v.numpy()
        out["n"] += len(v)
        batch.clear()

    for name, start, end in tqdm(spans, unit="tile", leave=False, disable=len(spans) < 64):
        seq = source.fetch(name, start, end)
        if not has_base(seq):
            continue
        if batch and (len(batch) == per_batch or len(batch[0]) != end - start):
            flush()                                   # a batch holds tiles of one length
        batch.append(tokenizer.encode(seq, source=f"{label}:{name}:{start}"))
        rows.append((name, start, end))
    if batch:
        flush()
    table = TileTable(np.array([r[0] for r in rows], dtype=str),
                      np.array([r[1] for r in rows], dtype=np.int64),
                      np.array([r[2] for r in rows], dtype=np.int64))
    vectors = out["vectors"][:out["n"]] if out else np.zeros((0, 0), np.float32)
    return TileEmbeddings(vectors, table)


def records_from_tiles(embeddings: TileEmbeddings, names: list[str], pooling: str = "mean",
                       label: str = "") -> np.ndarray:
    """One vector per record (records, F) float32 pooled from its tiles: the tile-length
    weighted mean ("mean"), the elementwise maximum ("max") or the last tile ("last").

    Raises:
        ValueError: a record of ``names`` without a tile (empty or all N), naming it.
    """
    vectors, tiles = embeddings
    out = []
    for name in names:
        rows = np.flatnonzero(tiles.record == name)
        if len(rows) == 0:
            raise ValueError(f"{label}:{name}: no tile with an A, C, G or T base (an empty or "
                             "all-N record) to embed")
        v = vectors[rows]
        weights = (tiles.end[rows] - tiles.start[rows]).astype(np.float64)
        out.append(weights @ v / weights.sum() if pooling == "mean" else
                   v.max(0) if pooling == "max" else v[-1])
    return np.stack(out).astype(np.float32)


def write_tiles_bed(path: str | Path, tiles: TileTable) -> Path:
    """The tiles as BED (record, start, end, name = the tile's row in the vectors), in the
    same order as the vectors, under the header line :data:`TILES_BED_HEADER`."""
    with open(path, "w") as f:
        f.write(TILES_BED_HEADER + "\n")
        for i, (name, start, end) in enumerate(zip(tiles.record, tiles.start, tiles.end)):
            f.write(f"{name}\t{start}\t{end}\ttile{i}\n")
    return Path(path)


TILES_BED_HEADER = "#chrom\tstart\tend\ttile\t(mambaseq embed tiles)"


# ---------------------------------------------------------------------------------------------
# Are the vectors any good for binning? kNN species accuracy, k-means ARI, a PCA picture
# ---------------------------------------------------------------------------------------------

def standardize(reference: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Centre and scale every feature by its mean and SD over ``reference`` (n, F) (no labels
    used), so that no feature dominates a cosine; returns ``reference`` and ``others`` so."""
    mean, sd = reference.mean(0), reference.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return [(x - mean) / sd for x in (reference, *others)]


def binning_scores(reference: np.ndarray, reference_labels, query: np.ndarray, query_labels,
                   k: int = 5, seed: int = 0) -> dict:
    """How well vectors group tiles by genome.

    Args:
        reference (R, F), reference_labels (R,): labelled tiles (e.g. of training regions).
        query (Q, F), query_labels (Q,): the tiles scored.
    Returns:
        {"knn_accuracy": share of query tiles whose k nearest reference tiles (cosine
         distance, majority vote, scikit-learn's tie rule) give their label,
         "ari": adjusted Rand index of k-means (as many clusters as query labels, on the
         unit-length vectors, 10 starts, ``seed``) against the labels}
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    predicted = knn.fit(reference, reference_labels).predict(query)
    unit = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    clusters = KMeans(n_clusters=len(set(query_labels)), n_init=10,
                      random_state=seed).fit_predict(unit)
    return {"knn_accuracy": float(np.mean(predicted == np.asarray(query_labels))),
            "ari": float(adjusted_rand_score(query_labels, clusters))}


def plot_tile_pca(path: str | Path, panels: dict[str, np.ndarray], labels, title: str = ""
                  ) -> Path:
    """A PNG of one 2-D PCA scatter per entry of ``panels`` (name -> vectors (n, F), the same
    n tiles), points coloured by ``labels`` (n,), one shared legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    labels = np.asarray(labels)
    names = list(dict.fromkeys(labels))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(names), 2)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (panel, x) in zip(axes[0], panels.items()):
        xy = PCA(n_components=2, random_state=0).fit_transform(x)
        for name, colour in zip(names, colours):
            ax.scatter(*xy[labels == name].T, s=6, color=colour, label=name, alpha=0.7)
        ax.set_title(panel, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
