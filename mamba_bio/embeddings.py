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


@torch.no_grad()
def hidden_chunks(model, ids: torch.Tensor, chunk_len: int = 2 ** 14):
    """Yield (start, h) with h (chunk, D) the final hidden states of positions
    [start, start + chunk) of one sequence ``ids`` (L,); chunks cover all of it in order.

    ``model``: a ``core.MambaLM``, ``core.SequenceClassifier`` or ``mamba_bio.MaskedLM``
    (anything with ``embedding`` and ``backbone``).
    """
    if isinstance(model.backbone, MambaBackbone):
        state = None
        for start in range(0, len(ids), chunk_len):
            x = model.embedding(ids[None, start:start + chunk_len])       # (1, chunk, D)
            h, state = model.backbone(x, state=state, return_state=True)
            yield start, h[0]
    else:
        h = model.backbone(model.embedding(ids[None]))[0]                 # (L, D)
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
        pooling: "mean" or "max" over the L positions of :func:`pooled_features`.
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
    device = next(model.parameters()).device
    rows = []
    for i, name in enumerate(tqdm(source.names, unit="record")):
        ids = tokenizer.encode(source.fetch(name), source=f"{label}:{name}")
        if len(ids) == 0:
            raise ValueError(f"{label}:{name}: empty record")
        rows.append(embed_record(model, ids.to(device), chunk_len, pooling,
                                 positions_file(positions_dir, i, name)
                                 if positions_dir is not None else None))
    return RecordEmbeddings(np.stack(rows).astype(np.float32), list(source.names))
