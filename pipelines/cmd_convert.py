"""convert: a published Mamba checkpoint (a folder from the hub) -> a toolkit model folder.

    mambaseq convert hub/mamba-130m-hf --out models/mamba-130m            # -> core.MambaLM
    mambaseq convert hub/caduceus-ps --out models/caduceus-ps             # -> mamba_bio MaskedLM
    mambaseq convert models/mamba-130m --out hub/mine --to hf-mamba       # -> transformers folder

Sources (``--from auto`` reads config.json to tell them apart): transformers
``MambaForCausalLM`` (hf-mamba), mamba_ssm ``MambaLMHeadModel`` (mamba-ssm), Caduceus-Ph /
Caduceus-PS ``CaduceusForMaskedLM`` (caduceus), or a toolkit model folder (mambaseq, for
``--to hf-mamba``). A configuration our models cannot represent is refused with the reason.
``--out`` follows ``pipelines.out_folder``: a new or empty folder, or one an earlier convert
wrote, whose files alone are replaced; anything else (a symbolic link, a folder of other
files, the source itself) is refused before anything is written.
"""
from __future__ import annotations

import torch

from mambaseq.core import hub
from mambaseq.mamba_bio.hub_caduceus import CADUCEUS_TOKENIZER, masked_lm_from_caduceus
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines import out_folder
from mambaseq.pipelines.checkpoint import CLASSES_FILE, TOKENIZER_FILE, load_model, model_assets

HELP = "convert a hub checkpoint (transformers Mamba, mamba_ssm, Caduceus) to a toolkit model"
ASSETS = (TOKENIZER_FILE, CLASSES_FILE)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KIND = out_folder.KINDS["convert"]


def add_arguments(parser):
    parser.add_argument("src", help="source folder (config.json + model.safetensors or "
                                    "pytorch_model.bin)")
    # dest is not "out": the CLI would write its own config.json into an --out directory.
    parser.add_argument("--out", dest="out_dir", required=True,
                        help="output model folder: new, empty, or one convert wrote (its "
                             "files are replaced; anything else there is kept)")
    parser.add_argument("--from", dest="source_format", default="auto",
                        choices=("auto",) + hub.FORMATS, help="layout of SRC")
    parser.add_argument("--to", dest="target_format", default="mambaseq",
                        choices=("mambaseq", "hf-mamba"),
                        help="mambaseq: a toolkit model folder (as training writes); hf-mamba: a "
                             "folder transformers' MambaForCausalLM reads")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="dtype of the written weights")
    parser.add_argument("--char-tokenizer", action="store_true",
                        help="write the toolkit's nucleotide tokenizer.json beside a converted "
                             "causal model trained on its ids (e.g. one exported with --to "
                             "hf-mamba), so that eval-genome and embed can read DNA with it")


def _toolkit_folder(src, dtype):
    """A toolkit model folder's model and the JSON files it carries (tokenizer, classes)."""
    assets = {name: hub.read_json_if_present(src, name) for name in ASSETS}
    return load_model(src).to(dtype), {k: v for k, v in assets.items() if v is not None}


def convert(src, source_format="auto", dtype=torch.float32):
    """``(model, extra_json)``: the toolkit model of folder ``src`` and the JSON files that go
    beside it (a toolkit folder's own, the tokenizer of a Caduceus model)."""
    if source_format == "mambaseq":
        return _toolkit_folder(src, dtype)
    config, state = hub.read_hub_folder(src)
    fmt = hub.detect_format(config, src) if source_format == "auto" else source_format
    if fmt == "mambaseq":
        return _toolkit_folder(src, dtype)
    if fmt == "hf-mamba":
        return hub.mamba_lm_from_hf(config, state, src, dtype), {}
    if fmt == "mamba-ssm":
        return hub.mamba_lm_from_mamba_ssm(config, state, src, dtype), {}
    tokenizer_config = hub.read_json_if_present(src, CADUCEUS_TOKENIZER)
    model = masked_lm_from_caduceus(config, state, tokenizer_config, src, dtype)
    return model, model_assets(tokenizer=CharTokenizer())


def run(args):
    inputs = out_folder.input_paths(vars(args))
    out_folder.check_folder(args.out_dir, "convert", KIND, inputs)   # before the conversion
    model, extra = convert(args.src, args.source_format, DTYPES[args.dtype])
    if args.char_tokenizer:
        vocab = CharTokenizer().vocab_size
        if getattr(model.config, "vocab_size", 0) < vocab:
            raise ValueError(f"--char-tokenizer: {args.src} has a vocabulary of "
                             f"{getattr(model.config, 'vocab_size', 0)} tokens, fewer than the "
                             f"{vocab} of the nucleotide tokenizer")
        extra = {**extra, **model_assets(tokenizer=CharTokenizer())}
    out = out_folder.claim_folder(args.out_dir, "convert", KIND, inputs)
    with out_folder.replace_own_files(out, "convert") as staging:
        if args.target_format == "hf-mamba":
            hub.export_hf_mamba(model, staging)
        else:
            model.save_pretrained(staging, extra_json=extra)
    n = sum(p.numel() for p in model.parameters())
    print(f"{type(model).__name__} ({n:,} parameters) -> {args.out_dir} ({args.target_format})")
