"""eval-genome: perplexity and bits per base of a causal genome LM on any FASTA.

    python -m mambaseq.pipelines eval-genome --model runs/chr20/model --fasta test.fa [--bed held_out.bed]

Prints one JSON object: {"perplexity", "bits_per_base", "tokens"}; ``tokens`` is the number
of bases scored (A C G T; an N is neither predicted nor counted). Every record (or BED
interval) is read in one causal pass from [BOS], in chunks that pass the recurrent state.
"""
from __future__ import annotations

import json

from tqdm.auto import tqdm

from mambaseq import core
from mambaseq.mamba_bio.bed import read_bed
from mambaseq.mamba_bio.fasta import Window, open_sequences
from mambaseq.mamba_bio.metrics import lm_metrics, lm_nll
from mambaseq.pipelines.checkpoint import load_model, read_tokenizer
from mambaseq.pipelines.distributed import resolve_device
from mambaseq.pipelines.options import positive_int

HELP = "perplexity and bits per base of a pretrained causal genome model on FASTA files"


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="model directory (pretrain-genome's "
                                                        "OUT/model)")
    parser.add_argument("--fasta", required=True, nargs="+", help="FASTA file(s) to score")
    parser.add_argument("--bed", default=None,
                        help="score only these intervals (BED, for a single --fasta)")
    parser.add_argument("--chunk-len", type=positive_int, default=2 ** 14,
                        help="bases per forward chunk (memory bound)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--decompress-gzip", action="store_true",
                        help="accept plain-gzip FASTA by decompressing it once to a cache")


def run(args):
    device = resolve_device(args.device)          # names --device when there is no GPU
    model = load_model(args.model, device=device)
    if not isinstance(model, core.MambaLM):
        raise ValueError(f"{args.model} holds a {type(model).__name__}; eval-genome needs a "
                         "causal MambaLM (pretrain-genome --objective clm)")
    if args.bed and len(args.fasta) != 1:
        raise ValueError("--bed needs exactly one --fasta")
    tokenizer = read_tokenizer(args.model)
    jobs = []
    for path in args.fasta:
        source = open_sequences(path, decompress_gzip=args.decompress_gzip)
        regions = (read_bed(args.bed, lengths=source.lengths) if args.bed else
                   [Window(n, 0, source.lengths[n]) for n in source.names])
        jobs += [(path, source, r) for r in regions]
    total, count = 0.0, 0
    for path, source, r in tqdm(jobs, unit="record", disable=len(jobs) < 2):
        ids = tokenizer.encode(source.fetch(r.name, r.start, r.end, r.strand), add_bos=True,
                               source=f"{path}:{r.name}:{r.start}")
        nll, n = lm_nll(model, ids.to(device), chunk_len=args.chunk_len)
        total, count = total + nll, count + n
    if count == 0:
        raise ValueError(f"no A/C/G/T bases to score in {', '.join(args.fasta)}")
    print(json.dumps(lm_metrics(total, count)))
