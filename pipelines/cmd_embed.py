"""embed: one pooled embedding per FASTA record (and optionally per-position ones).

    python -m mambaseq.pipelines embed --model runs/chr20/model --fasta genes.fa --out genes.npz

The output .npz holds "names" (n,) and "embeddings" (n, F); a .npy path holds only the
embeddings, with the names in PATH.names.txt beside it. ``--per-position DIR`` also writes
DIR/<index>_<record>.npy, a (L, D) float32 array filled chunk by chunk through a memory
map. With a causal model a record of any length (2^20 bases and more) costs one chunk of
activations on a CPU (the state passes between chunks); a bidirectional model reads a
record whole.

Outputs follow ``pipelines.out_folder``: ``--out`` (and PATH.names.txt) is never an input
and replaces only an earlier embed output; ``--per-position`` is a new or empty folder, or
one embed made.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mambaseq.core.atomic import atomic_file, write_bytes_atomic
from mambaseq.mamba_bio.embeddings import hidden_chunks, pooled_features
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.pipelines import out_folder
from mambaseq.pipelines.checkpoint import load_model, read_tokenizer
from mambaseq.pipelines.distributed import resolve_device
from mambaseq.pipelines.options import positive_int

HELP = "pooled (and per-position) embeddings of FASTA records from a trained model"
POSITIONS_KIND = "per-position embeddings"


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="model directory (any genome model)")
    parser.add_argument("--fasta", required=True, help="FASTA or GenBank file")
    # dest is not "out": the CLI makes an --out *directory* (for config.json); this is a file.
    parser.add_argument("--out", dest="out_file", required=True,
                        help="output .npz (or .npy)")
    parser.add_argument("--pooling", choices=("mean", "max"), default="mean")
    parser.add_argument("--per-position", metavar="DIR", default=None,
                        help="also write per-position hidden states, one .npy per record")
    parser.add_argument("--chunk-len", type=positive_int, default=2 ** 14,
                        help="bases per forward chunk (memory bound)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--decompress-gzip", action="store_true")


def embed_record(model, ids, chunk_len, pooling, positions_path=None):
    """Pooled features (F,) of one record ``ids`` (L,); per-position hidden states (L, D)
    go to ``positions_path`` (.npy, memory-mapped) when given."""
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


def _is_embeddings(path: Path) -> bool:
    """``path`` looks like an embed output: an .npz of exactly ``names`` and ``embeddings``,
    or a 2-D float32 .npy (its names file: when that .npy is one)."""
    if path.name.endswith(".names.txt"):
        return _is_embeddings(path.with_name(path.name.removesuffix(".names.txt") + ".npy"))
    try:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as z:
                return sorted(z.namelist()) == ["embeddings.npy", "names.npy"]
        array = np.load(path, mmap_mode="r")
        return array.ndim == 2 and array.dtype == np.float32
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def run(args):
    out = Path(args.out_file)
    if out.suffix not in (".npz", ".npy"):
        raise ValueError(f"--out must end in .npz or .npy, got {out}")
    names_file = out.with_suffix(".names.txt")
    inputs = out_folder.input_paths(vars(args))
    for path in [out, names_file] if out.suffix == ".npy" else [out]:
        out_folder.check_out_file(path, "--out", inputs, "embed", _is_embeddings)
    if args.per_position:
        out_folder.check_distinct({"--out": out, "--per-position": Path(args.per_position)})
        out_folder.check_folder(args.per_position, "embed", POSITIONS_KIND, inputs,
                                "--per-position")
    device = resolve_device(args.device)          # names --device when there is no GPU
    model = load_model(args.model, device=device)
    tokenizer = read_tokenizer(args.model)
    source = open_sequences(args.fasta, decompress_gzip=args.decompress_gzip)
    pos_dir = (out_folder.claim_folder(args.per_position, "embed", POSITIONS_KIND, inputs,
                                       "--per-position") if args.per_position else None)
    rows = []
    for i, name in enumerate(tqdm(source.names, unit="record")):
        ids = tokenizer.encode(source.fetch(name), source=f"{args.fasta}:{name}")
        if len(ids) == 0:
            raise ValueError(f"{args.fasta}:{name}: empty record")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        rows.append(embed_record(model, ids.to(device), args.chunk_len, args.pooling,
                                 pos_dir / f"{i}_{safe}.npy" if pos_dir else None))
    embeddings = np.stack(rows).astype(np.float32)                           # (n, F)
    with atomic_file(out) as tmp, open(tmp, "wb") as f:
        if out.suffix == ".npz":
            np.savez(f, names=np.array(source.names), embeddings=embeddings)
        else:
            np.save(f, embeddings)
    if out.suffix == ".npy":
        write_bytes_atomic(names_file, ("\n".join(source.names) + "\n").encode())
    print(f"{len(rows)} embeddings of width {embeddings.shape[1]} -> {out}")
