"""Published Mamba language models <-> ``core.MambaLM``.

Two layouts of the same architecture (embedding -> residual pre-RMSNorm Mamba blocks ->
final RMSNorm -> tied head) are read, and one is written:

- "hf-mamba": transformers' ``MambaForCausalLM`` (``model_type: "mamba"``): tensors
  ``backbone.embeddings.weight``, ``backbone.layers.{i}.{norm,mixer}.*``,
  ``backbone.norm_f.weight``, ``lm_head.weight``. Read and written (``export_hf_mamba``).
- "mamba-ssm": mamba_ssm's ``MambaLMHeadModel`` (config with ``d_model``, ``n_layer``,
  ``ssm_cfg``): the same names with ``backbone.embedding.weight``; the vocabulary is padded
  up to ``pad_vocab_size_multiple`` and the padded rows are kept, so the logits have the
  padded width exactly as mamba_ssm's do.

The mixer's tensors have our ``Mamba`` block's names and shapes (in_proj, conv1d, x_proj,
dt_proj, A_log, D, out_proj), so a conversion renames and checks; it never reshapes. What
our model cannot represent is refused with a one-line :class:`ConversionError` (LayerNorm,
untied embeddings, MLP or attention layers, Mamba-2, another activation).

A source folder is read as downloaded from the hub: ``config.json`` and ``model.safetensors``
(or a sharded ``model.safetensors.index.json``) or ``pytorch_model.bin``; a pickled ``.bin``
is read with ``torch.load(weights_only=True)`` only, which cannot run code.

>>> from mambaseq.core import MambaLM, MambaLMConfig
>>> lm = MambaLM(MambaLMConfig(vocab_size=16, d_model=32, n_layer=2))
>>> export_hf_mamba(lm, "mamba-hf")                # a folder transformers loads
>>> config, state = read_hub_folder("mamba-hf")    # or one downloaded, e.g. mamba-130m-hf
>>> config["model_type"], config["hidden_size"], config["num_hidden_layers"]
('mamba', 32, 2)
>>> back = mamba_lm_from_hf(config, state)         # core.MambaLM, logits as transformers'
>>> ids = torch.randint(0, 16, (2, 10))
>>> torch.equal(back(ids), lm(ids))
True
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from .heads import MambaLM
from .atomic import atomic_dir

FORMATS = ("hf-mamba", "mamba-ssm", "caduceus", "mambaseq")

# Tensors of one Mamba mixer, as named in our block and in both published layouts.
MIXER_TENSORS = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias",
                 "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D",
                 "out_proj.weight", "out_proj.bias")
# mamba_ssm ssm_cfg keys that only steer the initialisation or the kernels, not the function.
_SSM_INIT_KEYS = {"dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "use_fast_path",
                  "layer_idx", "device", "dtype"}


class ConversionError(ValueError):
    """A checkpoint that cannot be mapped; the message is one line saying why."""


# -- reading a hub folder -------------------------------------------------------------------
def read_hub_folder(src):
    """``(config dict, state dict of CPU tensors)`` of a folder as downloaded from the hub.

    Raises:
        ConversionError: no config.json, a config.json that is not a JSON object, no
            weights file, unreadable weights, or a shard index naming a file outside
            ``src``; one line naming the file.
    """
    src = Path(src)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{src}: no config.json (pass the folder downloaded from the hub)")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise ConversionError(f"{config_path}: expected a JSON object, got "
                              f"{type(config).__name__}")
    return config, _read_weights(src)


def read_json_if_present(src, name):
    """The parsed ``src/name`` JSON file, or None when there is none.

    Raises:
        ConversionError: the file is not valid JSON; names it.
    """
    path = Path(src) / name
    return _read_json(path) if path.is_file() else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ConversionError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ConversionError(f"{path}: not a readable safetensors file (truncated or another "
                              f"format: {err})") from None


def _shards(index: Path, src: Path) -> list[Path]:
    """The shard files a ``model.safetensors.index.json`` names, each inside ``src``: a name
    that is absolute or climbs out with ``..`` is refused (the index must not steer reads
    elsewhere); a shard that is itself a link (the hub cache's layout) is followed."""
    weight_map = _read_json(index)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if (not isinstance(weight_map, dict) or not weight_map
            or not all(isinstance(v, str) for v in weight_map.values())):
        raise ConversionError(f"{index}: no \"weight_map\" object of tensor names -> shard "
                              "file names")
    shards = []
    for name in sorted(set(weight_map.values())):
        relative = Path(name)
        if not name or relative.is_absolute() or ".." in relative.parts:
            raise ConversionError(f"{index}: shard {name!r} is not a file inside {src} "
                                  "(absolute or with '..'); refused")
        shards.append(src / relative)
    return shards


def _read_weights(src):
    single, index, pickled = (src / "model.safetensors", src / "model.safetensors.index.json",
                              src / "pytorch_model.bin")
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        state = {}
        for shard in _shards(index, src):
            state.update(_load_safetensors(shard))
        return state
    if pickled.is_file():
        try:
            state = torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as err:  # an unpickler refusal or a corrupt file: one line
            raise ConversionError(f"{pickled}: not a plain tensor state dict "
                                  f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
        if not isinstance(state, dict):
            raise ConversionError(f"{pickled}: holds a {type(state).__name__}, not a state dict")
        return state
    raise ConversionError(f"{src}: no model.safetensors, model.safetensors.index.json or "
                          "pytorch_model.bin")


def detect_format(config, src="SRC"):
    """The layout a config.json describes: one of ``FORMATS``."""
    model_type = config.get("model_type")
    if "class" in config and "config" in config:
        return "mambaseq"
    if model_type == "mamba":
        return "hf-mamba"
    if model_type == "caduceus":
        return "caduceus"
    if model_type in ("mamba2", "falcon_mamba", "jamba", "zamba", "bamba"):
        raise ConversionError(f"{src}: model_type {model_type!r} is not a Mamba-1 language "
                              "model (only plain Mamba-1 stacks map to MambaLM)")
    if model_type is None and {"d_model", "n_layer", "vocab_size"} <= set(config):
        return "mamba-ssm"
    raise ConversionError(f"{src}/config.json: cannot tell the layout (model_type "
                          f"{model_type!r}); name the source format: hf-mamba, mamba-ssm or "
                          "caduceus")


# -- helpers shared by the converters -------------------------------------------------------
def mixer_weights(state, src_prefix, dst_prefix):
    """Copy one Mamba mixer's tensors ``src_prefix + name`` -> ``dst_prefix + name`` (the
    names of ``MIXER_TENSORS`` that are present)."""
    return {dst_prefix + n: state[src_prefix + n] for n in MIXER_TENSORS
            if src_prefix + n in state}


def check_untied(state, embedding_key, head_key, src):
    """Refuse a separate output head whose weights differ from the input embedding's."""
    head = state.get(head_key)
    if head is not None and not torch.equal(head, state[embedding_key]):
        raise ConversionError(f"{src}: the output head is not tied to the embedding "
                              "(our models tie them)")


def config_int(config, key, src, default=None):
    """``config[key]`` (``default`` when absent and not None), which must be a positive
    integer.

    Raises:
        ConversionError: naming ``src``/config.json and the key.
    """
    value = config.get(key, default)
    if value is None:
        raise ConversionError(f"{src}/config.json: no {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConversionError(f"{src}/config.json: {key} must be a positive integer, "
                              f"got {value!r}")
    return value


def check_layer_count(state, prefix, n_layer, key, src):
    """Refuse, before anything is built, a config whose layer count ``key`` differs from the
    layers ``prefix{i}.*`` the weights hold."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if found != set(range(n_layer)):
        raise ConversionError(f"{src}/config.json: {key} is {n_layer}, but the weights hold "
                              f"{len(found)} layers ({prefix}*)")


def build_converted(cls, options, weights, src, dtype=torch.float32):
    """``cls(cls.config_class(**options))`` with ``weights`` loaded exactly: every parameter
    given, nothing left over, every shape the one the options imply. The names and shapes
    are checked on a model without memory (the meta device) before the real one is built, so
    a config.json that disagrees with its weights (a width of 8000 beside a small file)
    allocates nothing.

    Raises:
        ConversionError: options the class refuses, or naming the first missing or
            unexpected tensor, or a shape mismatch.
    """
    try:
        config = cls.config_class(**options)
        expected = cls(config, device="meta").state_dict()
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConversionError(f"{src}/config.json: does not build a {cls.__name__}: "
                              f"{first}") from None
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    if missing:
        raise ConversionError(f"{src}: tensor for {missing[0]} missing "
                              f"({len(missing)} missing in all)")
    if extra:
        raise ConversionError(f"{src}: unexpected tensor {extra[0]} ({len(extra)} in all; "
                              "layers our model does not have)")
    for k, t in weights.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise ConversionError(f"{src}: {k} has shape {tuple(t.shape)}, the config implies "
                                  f"{tuple(expected[k].shape)}")
    model = cls(config)
    model.load_state_dict({k: t.to(dtype) for k, t in weights.items()}, strict=True)
    return model.to(dtype).eval()


def leftover(state, used, src):
    """Refuse tensors of the source that no rule consumed (MLP, attention, extra norms)."""
    rest = sorted(k for k in state if k not in used)
    if rest:
        raise ConversionError(f"{src}: tensor {rest[0]} has no counterpart in our model "
                              f"({len(rest)} such; MLP, attention or LayerNorm layers?)")


def _layer_keys(n_layer, prefix):
    return [(f"{prefix}.layers.{i}.mixer.", f"backbone.layers.{i}.mixer.",
             f"{prefix}.layers.{i}.norm.weight", f"backbone.layers.{i}.norm.weight")
            for i in range(n_layer)]


def _lm_weights(state, embedding_key, n_layer, src, layer_key):
    """Our MambaLM's state dict from a published one whose backbone prefix is "backbone"
    (``layer_key``: the config.json key that gave ``n_layer``)."""
    check_layer_count(state, "backbone.layers.", n_layer, layer_key, src)
    pairs = {embedding_key: "embedding.weight", "backbone.norm_f.weight": "backbone.norm_f.weight"}
    weights = {}
    for src_mixer, dst_mixer, src_norm, dst_norm in _layer_keys(n_layer, "backbone"):
        weights.update(mixer_weights(state, src_mixer, dst_mixer))
        pairs[src_norm] = dst_norm
    weights.update({dst: state[k] for k, dst in pairs.items() if k in state})
    used = {embedding_key, "backbone.norm_f.weight", "lm_head.weight"}
    used |= {src_mixer + n for src_mixer, *_ in _layer_keys(n_layer, "backbone")
             for n in MIXER_TENSORS}
    used |= {src_norm for _, _, src_norm, _ in _layer_keys(n_layer, "backbone")}
    leftover(state, used, src)
    check_untied(state, embedding_key, "lm_head.weight", src)
    return weights


def _require(state, key, src):
    if key not in state:
        raise ConversionError(f"{src}: tensor {key} missing")


# -- transformers MambaForCausalLM ----------------------------------------------------------
def mamba_lm_from_hf(config, state, src="SRC", dtype=torch.float32):
    """``core.MambaLM`` with the weights of a transformers ``MambaForCausalLM``.

    Args:
        config (dict): its config.json.  state (dict): its tensors.
        src (str): named in errors.  dtype (torch.dtype, fp32): of the result.
    """
    if config.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{src}: hidden_act {config['hidden_act']!r} (our block uses silu)")
    if config.get("tie_word_embeddings", True) is False:
        raise ConversionError(f"{src}: tie_word_embeddings is false (our models tie them)")
    d_model = config_int(config, "hidden_size", src)
    expand = config_int(config, "expand", src, default=2)
    d_inner = config_int(config, "intermediate_size", src, default=expand * d_model)
    if d_inner != expand * d_model:
        if d_inner % d_model:
            raise ConversionError(f"{src}: intermediate_size {d_inner} is not a multiple of "
                                  f"hidden_size {d_model}")
        expand = d_inner // d_model
    dt_rank = config.get("time_step_rank", "auto")
    if dt_rank == "auto":
        dt_rank = math.ceil(d_model / 16)
    n_layer = config_int(config, "num_hidden_layers", src)
    _require(state, "backbone.embeddings.weight", src)
    options = dict(vocab_size=state["backbone.embeddings.weight"].shape[0], d_model=d_model,
                   n_layer=n_layer, d_state=config_int(config, "state_size", src, default=16),
                   d_conv=config_int(config, "conv_kernel", src, default=4), expand=expand,
                   norm_eps=config.get("layer_norm_epsilon", 1e-5), dt_rank=dt_rank,
                   conv_bias=config.get("use_conv_bias", True),
                   bias=config.get("use_bias", False))
    weights = _lm_weights(state, "backbone.embeddings.weight", n_layer, src, "num_hidden_layers")
    return build_converted(MambaLM, options, weights, src, dtype)


# -- mamba_ssm MambaLMHeadModel -------------------------------------------------------------
def padded_vocab_size(vocab_size, multiple):
    """mamba_ssm's padding of the vocabulary up to a multiple of ``multiple``."""
    return vocab_size if vocab_size % multiple == 0 else vocab_size + multiple - vocab_size % multiple


def ssm_options(ssm_cfg, src):
    """Our block's options from a mamba_ssm ``ssm_cfg``; refuses Mamba-2 and unknown keys."""
    ssm_cfg = dict(ssm_cfg or {})
    layer = ssm_cfg.pop("layer", "Mamba1")
    if layer != "Mamba1":
        raise ConversionError(f"{src}: ssm_cfg layer {layer!r} (only Mamba1 blocks map)")
    options = {k: ssm_cfg.pop(k) for k in ("d_state", "d_conv", "expand", "dt_rank",
                                           "conv_bias", "bias") if k in ssm_cfg}
    unknown = sorted(set(ssm_cfg) - _SSM_INIT_KEYS)
    if unknown:
        raise ConversionError(f"{src}: ssm_cfg option {unknown[0]!r} has no counterpart in our "
                              "Mamba block")
    return options


def mamba_lm_from_mamba_ssm(config, state, src="SRC", dtype=torch.float32):
    """``core.MambaLM`` with the weights of a mamba_ssm ``MambaLMHeadModel`` (padded
    vocabulary kept)."""
    if not config.get("rms_norm", True):
        raise ConversionError(f"{src}: rms_norm is false (LayerNorm; our blocks use RMSNorm)")
    if config.get("d_intermediate", 0):
        raise ConversionError(f"{src}: d_intermediate {config['d_intermediate']} adds MLP "
                              "layers, which our blocks do not have")
    if config.get("attn_layer_idx"):
        raise ConversionError(f"{src}: attn_layer_idx {config['attn_layer_idx']} adds "
                              "attention layers, which our backbone does not have")
    if config.get("tie_embeddings", True) is False:
        raise ConversionError(f"{src}: tie_embeddings is false (our models tie them)")
    options = ssm_options(config.get("ssm_cfg"), src)
    vocab = padded_vocab_size(config_int(config, "vocab_size", src),
                              config_int(config, "pad_vocab_size_multiple", src, default=1))
    n_layer = config_int(config, "n_layer", src)
    _require(state, "backbone.embedding.weight", src)
    weights = _lm_weights(state, "backbone.embedding.weight", n_layer, src, "n_layer")
    options = dict(vocab_size=vocab, d_model=config_int(config, "d_model", src),
                   n_layer=n_layer, norm_eps=config.get("norm_epsilon", 1e-5), **options)
    return build_converted(MambaLM, options, weights, src, dtype)


# -- writing a transformers folder ----------------------------------------------------------
def hf_mamba_config(lm):
    """The transformers ``MambaConfig`` (as a dict) of a ``core.MambaLM``."""
    c = lm.config
    block = lm.backbone.layers[0].mixer
    return {"architectures": ["MambaForCausalLM"], "model_type": "mamba",
            "vocab_size": c.vocab_size, "hidden_size": c.d_model,
            "num_hidden_layers": c.n_layer, "state_size": c.d_state,
            "conv_kernel": c.d_conv, "expand": c.expand,
            "intermediate_size": c.expand * c.d_model, "time_step_rank": block.dt_rank,
            "use_bias": c.bias, "use_conv_bias": c.conv_bias,
            "layer_norm_epsilon": c.norm_eps, "hidden_act": "silu",
            "residual_in_fp32": True, "tie_word_embeddings": True,
            "torch_dtype": str(lm.embedding.weight.dtype).removeprefix("torch.")}


def export_hf_mamba(lm, out):
    """Write ``lm`` (a ``core.MambaLM``) as a transformers ``MambaForCausalLM`` folder
    (config.json + model.safetensors; the tied head is stored once, as transformers does),
    atomically."""
    from safetensors.torch import save_file

    if not isinstance(lm, MambaLM):
        raise ConversionError(f"exporting to hf-mamba needs a MambaLM, got a {type(lm).__name__}")
    tensors = {"backbone.embeddings.weight": lm.embedding.weight}
    for k, t in lm.backbone.state_dict().items():
        tensors[f"backbone.{k}"] = t
    tensors = {k: t.detach().contiguous().cpu() for k, t in tensors.items()}

    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_mamba_config(lm), indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
