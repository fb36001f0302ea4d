"""Converting checkpoints as a job: a published Mamba checkpoint (a folder from the hub) ->
a toolkit model folder, or a toolkit model -> a transformers folder.

    from mambaseq.pipelines import ConvertConfig, convert
    convert(ConvertConfig(src="hub/mamba-130m-hf", out="models/mamba-130m"))  # core.MambaLM
    convert(ConvertConfig(src="hub/caduceus-ps", out="models/caduceus-ps"))   # MaskedLM
    convert(ConvertConfig(src="models/mamba-130m", out="hub/mine", target_format="hf-mamba"))

Sources (``source_format="auto"`` reads config.json to tell them apart): transformers
``MambaForCausalLM`` (hf-mamba), mamba_ssm ``MambaLMHeadModel`` (mamba-ssm), Caduceus-Ph /
Caduceus-PS ``CaduceusForMaskedLM`` (caduceus), or a toolkit model folder (mambaseq, for
``target_format="hf-mamba"``). A configuration our models cannot represent is refused with
the reason. ``out`` follows ``training.out_folder``: a new or empty folder, or one an
earlier convert wrote, whose files alone are replaced; anything else (a symbolic link, a
folder of other files, the source itself) is refused before anything is written.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from mambaseq.core import hub
from mambaseq.core.model_folder import model_assets, read_assets
from mambaseq.mamba_bio.hub_caduceus import CADUCEUS_TOKENIZER, masked_lm_from_caduceus
from mambaseq.mamba_bio.tokenizers import CharTokenizer

from .training import Config, load_model, option, out_folder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KIND = out_folder.KINDS["convert"]


@dataclasses.dataclass(kw_only=True)
class ConvertConfig(Config):
    """Options of :func:`convert` (and of ``mambaseq convert``)."""

    OPTIONS_GROUP = "convert"
    src: str = option(positional=True, help="source folder (config.json + model.safetensors "
                                            "or pytorch_model.bin)")
    out: str = option(help="output model folder: new, empty, or one convert wrote (its files "
                           "are replaced; anything else there is kept)")
    source_format: str = option("auto", choices=("auto",) + hub.FORMATS, flags=("--from",),
                                help="layout of SRC")
    target_format: str = option("mambaseq", choices=("mambaseq", "hf-mamba"), flags=("--to",),
                                help="mambaseq: a toolkit model folder (as training writes); "
                                     "hf-mamba: a folder transformers' MambaForCausalLM reads")
    dtype: str = option("float32", choices=tuple(DTYPES), help="dtype of the written weights")
    char_tokenizer: bool = option(False, help="write the toolkit's nucleotide tokenizer.json "
                                              "beside a converted causal model trained on its "
                                              "ids (e.g. one exported to hf-mamba), so that "
                                              "eval-genome and embed can read DNA with it")


@dataclasses.dataclass
class ConvertResult:
    """What :func:`convert` wrote: the folder, its format, the model's class name and its
    number of parameters."""

    out: Path
    target_format: str
    model_class: str
    parameters: int


def _toolkit_folder(src, dtype):
    """A toolkit model folder's model and the JSON files it carries (tokenizer, classes)."""
    return load_model(src).to(dtype), read_assets(src)


def convert_model(src: str | os.PathLike, source_format: str = "auto",
                  dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, dict]:
    """The toolkit model of checkpoint folder ``src``, in memory: ``(model, extra_json)``
    with the JSON files that go beside it (a toolkit folder's own, the tokenizer of a
    Caduceus model; file name -> content).

        model, extra = convert_model("hub/mamba-130m-hf")        # a core.MambaLM

    Raises:
        core.hub.ConversionError: a file that cannot be read or a configuration our models
            cannot represent, with the reason.
    """
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


def convert(config: ConvertConfig) -> ConvertResult:
    """Convert checkpoint folder ``config.src`` and write it to folder ``config.out``.

        result = convert(ConvertConfig(src="hub/caduceus-ps", out="models/caduceus-ps"))
        result.model_class, result.parameters          # "MaskedLM", its size

    Raises:
        out_folder.OutRefused: ``out`` is not a folder convert may write, or holds a file
            convert did not write where it would write one (nothing changed then).
        core.hub.ConversionError, ValueError: as :func:`convert_model`; ``char_tokenizer``
            for a model whose vocabulary is smaller than the nucleotide tokenizer's.
    """
    inputs = out_folder.input_paths(config.to_dict())
    out_folder.check_folder(config.out, "convert", KIND, inputs)   # before the conversion
    model, extra = convert_model(config.src, config.source_format, DTYPES[config.dtype])
    if config.char_tokenizer:
        vocab = CharTokenizer().vocab_size
        if getattr(model.config, "vocab_size", 0) < vocab:
            raise ValueError(f"char_tokenizer: {config.src} has a vocabulary of "
                             f"{getattr(model.config, 'vocab_size', 0)} tokens, fewer than the "
                             f"{vocab} of the nucleotide tokenizer")
        extra = {**extra, **model_assets(tokenizer=CharTokenizer())}
    out = out_folder.claim_folder(config.out, "convert", KIND, inputs)
    with out_folder.replace_own_files(out, "convert") as staging:
        if config.target_format == "hf-mamba":
            hub.export_hf_mamba(model, staging)
        else:
            model.save_pretrained(staging, extra_json=extra)
    return ConvertResult(out=out, target_format=config.target_format,
                         model_class=type(model).__name__,
                         parameters=sum(p.numel() for p in model.parameters()))
