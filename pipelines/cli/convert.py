"""convert: a published Mamba checkpoint (a folder from the hub) -> a toolkit model folder.

    mambaseq convert hub/mamba-130m-hf --out models/mamba-130m            # -> core.MambaLM
    mambaseq convert hub/caduceus-ps --out models/caduceus-ps             # -> mamba_bio MaskedLM
    mambaseq convert models/mamba-130m --out hub/mine --to hf-mamba       # -> transformers folder

``--out`` is a new or empty folder, or one an earlier convert wrote (its files alone are
replaced); see ``pipelines.conversion``.
"""
from mambaseq.pipelines.conversion import ConvertConfig, convert

HELP = "convert a hub checkpoint (transformers Mamba, mamba_ssm, Caduceus) to a toolkit model"
CONFIG = ConvertConfig


def run(config: ConvertConfig) -> None:
    result = convert(config)
    print(f"{result.model_class} ({result.parameters:,} parameters) -> {config.out} "
          f"({result.target_format})")
