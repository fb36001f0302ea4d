"""pretrain-genome: causal (Mamba paper) or masked (Caduceus) language model on a FASTA.

    python -m mambaseq.pipelines pretrain-genome --fasta chr20.fa --objective clm --seq-len 1024 \
        --steps 2000 --out runs/chr20

Training windows come from the train split, the validation loss from the disjoint val split
(by chromosome when there are several, else the last ``--val-fraction`` of each record).
Several FASTA files (e.g. one per chromosome or per genome) are each split that way and
pooled, windows spread over them in proportion to their size. The regions go to
``<out>/split.bed`` (a ``--split-bed`` for another run); ``--resume`` refuses inputs that
now give other regions.
For clm the validation is the whole val split read in one causal pass (state passed between
chunks), so ``val_loss`` is the exact per-base NLL there; the report adds the perplexity of
the best order-k Markov model fit on the train split, the baseline to beat.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from mambaseq import core
from mambaseq.mamba_bio.bed import SplitRegion, read_bed, read_split_bed, write_split_bed
from mambaseq.mamba_bio.datasets import GenomeWindows, split_regions
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.heads import MaskedLM
from mambaseq.mamba_bio.metrics import best_markov_perplexity, lm_metrics, lm_nll
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines.checkpoint import model_assets
from mambaseq.pipelines.distributed import is_main_process
from mambaseq.pipelines.options import (TrainConfig, add_training_args, check_resume_split,
                                        fraction, positive_int, share)
from mambaseq.pipelines.trainer import seed_everything, train

HELP = "pretrain a causal (clm) or masked (mlm) Mamba language model on a genome FASTA"
MARKOV_MAX_BASES = 20_000_000      # the Markov baseline reads the splits into memory
SPLIT_FILE = "split.bed"           # <out>/split.bed: the regions a run trains and validates on


def add_arguments(parser):
    add_training_args(parser)
    g = parser.add_argument_group("genome")
    g.add_argument("--fasta", nargs="+", default=None,
                   help="FASTA files (plain or bgzip) to pretrain on")
    g.add_argument("--split-bed", default=None, metavar="FILE",
                   help="instead of --fasta: the split.bed of a classify-species run (its FASTA "
                        "files and regions); trains on its train regions, validates on its val "
                        "regions and never reads its test regions")
    g.add_argument("--bed", default=None, help="BED file: train/validate only inside these "
                                               "intervals (chromosomes of any --fasta file)")
    g.add_argument("--objective", choices=("clm", "mlm"), default="clm",
                   help="clm: next-base prediction, causal MambaLM; mlm: masked bases, "
                        "bidirectional MaskedLM")
    g.add_argument("--rc-equivariant", action="store_true",
                   help="mlm only: reverse-complement equivariant model (Caduceus-PS), which "
                        "initialises a classify-species --rc-invariant classifier")
    g.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="share of the bases held out for validation")
    g.add_argument("--split-by", choices=("auto", "record", "position"), default="auto",
                   help="hold out whole records, or the end of every record")
    g.add_argument("--val-bases", type=positive_int, default=200_000,
                   help="validate on at most this many bases of the val split")
    g.add_argument("--max-n-frac", type=share, default=0.1,
                   help="skip training windows with more N than this")
    g.add_argument("--no-rc-augment", action="store_true",
                   help="do not reverse-complement half of the training windows")
    g.add_argument("--d-state", type=positive_int, default=16, help="SSM state size N")
    g.add_argument("--strict", action="store_true",
                   help="IUPAC codes other than N are an error instead of N")
    g.add_argument("--decompress-gzip", action="store_true",
                   help="accept a plain-gzip FASTA by decompressing it once to a cache")


def clm_loss(model, batch):
    """Predict every base of the window from [BOS] and the bases before it."""
    ids = batch["input_ids"]                                               # (B, L)
    inputs = F.pad(ids[:, :-1], (1, 0), value=CharTokenizer.bos_id)        # (B, L)
    logits = model(inputs)                                                 # (B, L, V)
    return F.cross_entropy(logits.flatten(0, 1), ids.flatten()), ids.numel()


def mlm_loss(model, batch):
    logits = model(batch["input_ids"])                                     # (B, L, V)
    labels = batch["labels"]
    return (F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100),
            int((labels != -100).sum()))


def region_text(sources, regions, max_bases=None):
    """The bases of ``regions[i]`` of every ``sources[i]`` as one list of strings, cut at
    ``max_bases`` in total."""
    out, left = [], max_bases if max_bases is not None else math.inf
    for source, r in ((s, r) for s, rs in zip(sources, regions) for r in rs):
        if left <= 0:
            break
        end = r.end if left == math.inf else min(r.end, r.start + int(left))
        out.append(source.fetch(r.name, r.start, end))
        left -= end - r.start
    return out


def file_regions(sources, bed):
    """Per source, the BED intervals on its chromosomes (None per source without a BED)."""
    if bed is None:
        return [None] * len(sources)
    lengths = {}
    for src in sources:
        for name, n in src.lengths.items():
            if name in lengths:
                raise ValueError(f"--bed: chromosome {name!r} is in more than one --fasta file, "
                                 f"so the BED intervals on it are ambiguous")
            lengths[name] = n
    intervals = read_bed(bed, lengths=lengths)
    return [[w for w in intervals if w.name in src.lengths] for src in sources]


def training_regions(args):
    """(FASTA paths, opened sources, {"train", "val"}: per source a list of Window) from
    --fasta (+ --bed), split by --val-fraction, or from a classify-species --split-bed."""
    if args.split_bed is None:
        if not args.fasta:
            raise ValueError("give --fasta FILE [FILE ...] or --split-bed FILE")
        sources = [open_sequences(f, decompress_gzip=args.decompress_gzip) for f in args.fasta]
        per_file = [split_regions(src, (1 - args.val_fraction, args.val_fraction, 0.0),
                                  by=args.split_by, regions=regions)
                    for src, regions in zip(sources, file_regions(sources, args.bed))]
        return args.fasta, sources, {k: [sp[k] for sp in per_file] for k in ("train", "val")}
    if args.fasta or args.bed:
        raise ValueError("--split-bed names the FASTA files and regions itself; drop "
                         "--fasta and --bed")
    rows = read_split_bed(args.split_bed)
    files = list(dict.fromkeys(r.fasta for r in rows if r.split != "test"))
    sources = [open_sequences(f, decompress_gzip=args.decompress_gzip) for f in files]
    splits = {k: [[r.window for r in rows if r.fasta == f and r.split == k] for f in files]
              for k in ("train", "val")}
    for f, src, train, val in zip(files, sources, splits["train"], splits["val"]):
        for w in train + val:
            if w.end > src.lengths.get(w.name, -1):
                raise ValueError(f"{args.split_bed}: region {w.name}:{w.start}-{w.end} is not "
                                 f"inside a record of {f}")
    return files, sources, splits


def region_line(r: SplitRegion) -> str:
    """One region of a split as a message shows it: "val chrM:15000-16569 of /abs/h.fa"."""
    w = r.window
    return (f"{r.split} {w.name}:{w.start}-{w.end}{'' if w.strand == '+' else ' (-)'} of "
            f"{Path(r.fasta).resolve()}{'' if r.species == '.' else f' ({r.species})'}")


def keep_split_bed(path: Path, rows: list[SplitRegion], resume: bool, inputs: str,
                   write: bool = True) -> Path:
    """Write the split a run trains on to ``path`` (``write_split_bed``); on ``resume``,
    check instead that ``rows``, the split derived again from the inputs, is the one there
    (shared with classify-species).

    Args:
        inputs: the options the split comes from, named when it differs.
        write: False on the processes that leave the writing to another.
    Raises:
        ValueError: on resume, another split than the run's own (the inputs changed).
    """
    if resume and path.is_file():
        check_resume_split([region_line(r) for r in read_split_bed(path)],
                           [region_line(r) for r in rows], path, inputs)
    elif write:
        write_split_bed(path, rows)
    return path


def make_clm_eval(val_texts, tokenizer, where):
    """``where[i]``: "file:record:start" of ``val_texts[i]``, named by a bad-base error."""
    ids = [tokenizer.encode(t, add_bos=True, source=w) for t, w in zip(val_texts, where)]

    def eval_fn(model):
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for x in ids:
            nll, n = lm_nll(model, x.to(device))
            total, count = total + nll, count + n
        return {"val_loss": total / count, **lm_metrics(total, count)}
    return eval_fn


def make_mlm_eval(data, seq_len, n_batches=4, batch_size=8):
    batches = [data.get_batch(10 ** 9 + i, seq_len, batch_size) for i in range(n_batches)]

    def eval_fn(model):
        device = next(model.parameters()).device
        losses = [mlm_loss(model, {k: v.to(device) for k, v in b.items()})[0].item()
                  for b in batches]
        return {"val_loss": float(np.mean(losses))}
    return eval_fn


def run(args):
    if args.rc_equivariant and args.objective != "mlm":
        raise ValueError("--rc-equivariant needs --objective mlm (a causal model reads one "
                         "strand)")
    cfg = TrainConfig.from_args(args)
    tokenizer = CharTokenizer(strict=args.strict)
    files, sources, splits = training_regions(args)
    if not any(splits["val"]):
        raise ValueError("the validation split is empty; raise --val-fraction")
    rows = [SplitRegion(k, ".", f, w) for k in ("train", "val")
            for f, ws in zip(files, splits[k]) for w in ws]
    keep_split_bed(Path(cfg.out) / SPLIT_FILE, rows, cfg.resume,
                   "--split-bed" if args.split_bed else "--fasta/--bed", write=is_main_process())
    seed_everything(cfg.seed)
    common = dict(tokenizer=tokenizer, objective=args.objective, max_n_frac=args.max_n_frac,
                  seed=cfg.seed)
    train_data = GenomeWindows(sources, splits["train"], rc_augment=not args.no_rc_augment,
                               **common)
    if args.objective == "clm":
        model = core.MambaLM(tokenizer.vocab_size, cfg.d_model, cfg.n_layer,
                             d_state=args.d_state)
        loss_fn = clm_loss
        val_texts = region_text(sources, splits["val"], args.val_bases)
        eval_fn = make_clm_eval(val_texts, tokenizer, [
            f"{f}:{r.name}:{r.start}" for f, rs in zip(files, splits["val"]) for r in rs])
    else:
        model = MaskedLM(tokenizer.vocab_size, cfg.d_model, cfg.n_layer, d_state=args.d_state,
                         rc_equivariant=args.rc_equivariant,
                         complement=tokenizer.complement_map.tolist() if args.rc_equivariant else None)
        loss_fn = mlm_loss
        val_data = GenomeWindows(sources, splits["val"], rc_augment=False, **common)
        eval_fn = make_mlm_eval(val_data, cfg.seq_len)
    summary = train(model, loss_fn, train_data.get_batch, cfg, eval_fn=eval_fn,
                    assets=model_assets(tokenizer))
    if not is_main_process():
        return

    report = {"objective": args.objective, "steps": summary["step"],
              "train_loss": summary["loss"], "val": summary["val"],
              "splits": {k: [f"{Path(f).name}:{r.name}:{r.start}-{r.end}"
                             for f, rs in zip(files, v) for r in rs]
                         for k, v in splits.items()}}
    if args.objective == "clm":
        train_bases = sum(r.end - r.start for rs in splits["train"] for r in rs)
        if train_bases + sum(map(len, val_texts)) <= MARKOV_MAX_BASES:
            # Fit on the train split, score the same val bases as the model.
            markov = best_markov_perplexity("N".join(region_text(sources, splits["train"])),
                                            "N".join(val_texts))
            report["markov_baseline"] = markov
    Path(cfg.out, "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in report if k != "splits"}, indent=2))
