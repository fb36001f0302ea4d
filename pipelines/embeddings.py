"""Embeddings as a job: one pooled vector per FASTA record (and optionally per-position ones,
or one per tile along the records) from a trained genome model, written to a file.

    from mambaseq.pipelines import EmbedConfig, embed
    result = embed(EmbedConfig(model="runs/chr20/model", fasta="genes.fa", out="genes.npz"))
    result.out, result.shape                     # genes.npz, (records, F)

The .npz holds "names" (records,) and "embeddings" (records, F); a .npy ``out`` holds only
the embeddings, with the names in ``<out stem>.names.txt`` beside it. ``per_position`` (a
folder) also gets ``<index>_<record>.npy``, a (L, D) float32 array per record filled chunk
by chunk through a memory map. With a causal model a record of any length (2^20 bases and
more) costs one chunk of activations on a CPU; a bidirectional model reads a record whole.
For the vectors in memory, without files, see ``mamba_bio.embeddings.embed_fasta``.

Tiles (``window``, ``stride``): one vector per tile of ``window`` bases every ``stride``
bases along every record (``mamba_bio.embeddings.tile_spans``: the last tile is aligned to
the record's end, a record shorter than ``window`` is one tile), read in batches of
``batch_tokens`` bases, so memory is one batch of activations (plus the vectors) for a
genome of any size. ``out`` (.npz) then holds "names" and "embeddings" (records, F), each
record's vector pooled from its tiles (the tile-length weighted mean for mean pooling),
"tile_vectors" (T, F), "tile_record", "tile_start", "tile_end" (T,); ``<out stem>.tiles.bed``
beside it lists the tiles in the same order.

    result = embed(EmbedConfig(model="runs/lm/model", fasta="genome.fa", out="g.npz",
                               window=4096, both_strands=True))
    z = np.load(result.out); z["tile_vectors"].shape       # (T, F); result.tiles_bed
    # or in memory: mamba_bio.embeddings.embed_tiles(model, tokenizer, fasta, 4096)

Outputs follow ``training.out_folder``: ``out`` (and its names file) is never an input and
replaces only an earlier embed output; ``per_position`` is a new or empty folder, or one
embed made.
"""
from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from mambaseq.core.atomic import atomic_file, write_bytes_atomic
from mambaseq.mamba_bio.embeddings import (TILES_BED_HEADER, POOLINGS, embed_sequences,
                                            embed_tiles_source, records_from_tiles,
                                            write_tiles_bed)
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.tokenizers import CharTokenizer

from .genome import ModelReadOptions
from .training import load_model, option, positive_int, resolve_device
from .training import out_folder

POSITIONS_KIND = "per-position embeddings"     # the kind in the per_position folder's marker


@dataclasses.dataclass(kw_only=True)
class EmbedConfig(ModelReadOptions):
    """Options of :func:`embed` (and of ``mambaseq embed``)."""

    OPTIONS_GROUP = "embed"
    model: str = option(help="model folder (any genome model)")
    fasta: str = option(help="FASTA or GenBank file")
    out: str = option(help="output .npz (names and embeddings) or .npy (embeddings; names "
                           "in OUT.names.txt)")
    pooling: str = option("mean", choices=POOLINGS,
                          help="how positions are pooled into a vector: mean (overall "
                               "content, for binning and clustering), max (strongest local "
                               "signal), last (causal models: the state after the sequence)")
    window: int | None = option(None, rule=positive_int,
                                help="also one vector per tile of WINDOW bases along every "
                                     "record (needs an .npz out; tiles also in OUT.tiles.bed)")
    stride: int | None = option(None, rule=positive_int,
                                help="bases between tile starts (default: window, no overlap)")
    both_strands: bool = option(False, help="average each tile's vector with that of its "
                                            "reverse complement (for a model trained on both "
                                            "strands)")
    batch_tokens: int = option(2 ** 13, rule=positive_int,
                               help="bases of tiles per forward batch (memory bound)")
    per_position: str | None = option(None, metavar="DIR",
                                      help="also write per-position hidden states, one .npy "
                                           "per record")

    def __post_init__(self):
        super().__post_init__()
        if Path(self.out).suffix not in (".npz", ".npy"):
            raise ValueError(f"out must end in .npz or .npy, got {self.out}")
        if self.window is None and (self.stride or self.both_strands):
            raise ValueError("stride and both_strands are options of tiles: give window too")
        if self.window is not None and Path(self.out).suffix != ".npz":
            raise ValueError(f"window (tiles) needs an .npz out, got {self.out}")
        if self.window is not None and self.per_position:
            raise ValueError("per_position and window are two outputs of one pass each; "
                             "choose one")


@dataclasses.dataclass
class EmbedResult:
    """What :func:`embed` wrote: ``out``, the names file of a .npy (else None), the
    per-position folder (or None), the record names, the shape (records, F) of the
    embeddings; with tiles the BED file of the tiles and their number T (else None, 0)."""

    out: Path
    names_file: Path | None
    per_position: Path | None
    names: list[str]
    shape: tuple[int, int]
    tiles_bed: Path | None = None
    tiles: int = 0


NPZ_KEYS = ["embeddings.npy", "names.npy"]
TILE_KEYS = ["tile_end.npy", "tile_record.npy", "tile_start.npy", "tile_vectors.npy"]


def is_embed_output(path: Path) -> bool:
    """``path`` looks like an embed output: an .npz of exactly ``names`` and ``embeddings``,
    or a 2-D float32 .npy (its names file: when that .npy is one)."""
    if path.name.endswith(".names.txt"):
        return is_embed_output(path.with_name(path.name.removesuffix(".names.txt") + ".npy"))
    if path.name.endswith(".tiles.bed"):
        with open(path, errors="replace") as f:
            return f.readline().rstrip("\n") == TILES_BED_HEADER
    try:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as z:
                return sorted(z.namelist()) in (NPZ_KEYS, sorted(NPZ_KEYS + TILE_KEYS))
        array = np.load(path, mmap_mode="r")
        return array.ndim == 2 and array.dtype == np.float32
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def embed(config: EmbedConfig) -> EmbedResult:
    """Embed every record of ``config.fasta`` with ``config.model`` into ``config.out``.

        result = embed(EmbedConfig(model="m", fasta="genes.fa", out="genes.npz",
                                   per_position="genes_pos"))
        np.load(result.out)["embeddings"].shape == result.shape     # (records, F)

    Every output is checked before anything is written.

    Raises:
        out_folder.OutRefused: an output is an input, a link, or a file/folder embed did
            not write (naming the field: ``out`` or ``per_position``).
        ValueError: bad input (an empty record, an unknown base), naming the file and record.
    """
    out = Path(config.out)
    names_file = out.with_suffix(".names.txt") if out.suffix == ".npy" else None
    tiles_bed = out.with_suffix(".tiles.bed") if config.window else None
    inputs = out_folder.input_paths(config.to_dict())
    for path in [out] + [p for p in (names_file, tiles_bed) if p]:
        out_folder.check_out_file(path, "out", inputs, "embed", is_embed_output)
    if config.per_position:
        out_folder.check_distinct({"out": out, "per_position": Path(config.per_position)})
        out_folder.check_folder(config.per_position, "embed", POSITIONS_KIND, inputs,
                                "per_position")
    device = resolve_device(config.device)          # names the device when there is no GPU
    model = load_model(config.model, device=device)
    tokenizer = CharTokenizer.load(config.model)
    source = open_sequences(config.fasta, decompress_gzip=config.decompress_gzip)
    pos_dir = (out_folder.claim_folder(config.per_position, "embed", POSITIONS_KIND, inputs,
                                       "per_position") if config.per_position else None)
    tile_arrays = {}
    if config.window:
        tiles = embed_tiles_source(model, tokenizer, source, config.window, config.stride,
                                   label=config.fasta, pooling=config.pooling,
                                   both_strands=config.both_strands,
                                   batch_tokens=config.batch_tokens)          # (T, F)
        names = list(source.names)
        vectors = records_from_tiles(tiles, names, config.pooling, config.fasta)
        tile_arrays = dict(tile_vectors=tiles.vectors, tile_record=tiles.tiles.record,
                           tile_start=tiles.tiles.start, tile_end=tiles.tiles.end)
    else:
        vectors, names = embed_sequences(model, tokenizer, source, label=config.fasta,
                                         pooling=config.pooling, chunk_len=config.chunk_len,
                                         positions_dir=pos_dir)              # (records, F)
    with atomic_file(out) as tmp, open(tmp, "wb") as f:
        if names_file is None:
            np.savez(f, names=np.array(names), embeddings=vectors, **tile_arrays)
        else:
            np.save(f, vectors)
    if names_file is not None:
        write_bytes_atomic(names_file, ("\n".join(names) + "\n").encode())
    if tiles_bed is not None:
        with atomic_file(tiles_bed) as tmp:
            write_tiles_bed(tmp, tiles.tiles)
    return EmbedResult(out=out, names_file=names_file, per_position=pos_dir, names=names,
                       shape=vectors.shape, tiles_bed=tiles_bed,
                       tiles=len(tiles.tiles) if config.window else 0)
