"""embed: one pooled embedding per FASTA record (and optionally per-position ones).

    mambaseq embed --model runs/chr20/model --fasta genes.fa --out genes.npz [--per-position DIR]
    mambaseq embed --model runs/lm/model --fasta genome.fa --out g.npz --window 4096 --both-strands

The .npz holds "names" (n,) and "embeddings" (n, F); a .npy path holds only the embeddings,
with the names in PATH.names.txt beside it (see ``pipelines.embeddings``).
"""
from mambaseq.pipelines.embeddings import EmbedConfig, embed

HELP = "pooled (and per-position) embeddings of FASTA records from a trained model"
CONFIG = EmbedConfig


def run(config: EmbedConfig) -> None:
    result = embed(config)
    print(f"{result.shape[0]} embeddings of width {result.shape[1]} -> {result.out}")
    if result.tiles_bed:
        print(f"{result.tiles} tile embeddings -> {result.out} (tiles in {result.tiles_bed})")
