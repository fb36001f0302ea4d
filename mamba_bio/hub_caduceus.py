"""Caduceus-Ph and Caduceus-PS checkpoints (``CaduceusForMaskedLM``, Schiff et al. 2024) ->
``mamba_bio.heads.MaskedLM``.

Dimension names: V vocabulary, W the width of one mixer (Caduceus ``d_model``), D the hidden
width (W, or 2W for the RC-equivariant PS models).

What maps, and how:
- BiMamba layers with tied in/out projections and the "add" strategy are our ``BiMamba``;
  RMSNorm pre-norm residual blocks and the final RMSNorm are ours.
- Caduceus-PS (``rcps: true``): the embedding [E(ids) | flip(E(complement ids))], the mixer
  applied to each channel half (the second one reverse-complemented) and the RC head are our
  ``rc_equivariant`` embedding, backbone and head.
- Caduceus's *fused* add-norm path for PS (``fused_add_norm: true``, as published) normalises
  the second channel half as the forward strand and the first as the reverse one, so every
  layer swaps the halves of the residual stream: layer i computes ours(swap(R)). Since
  ours_F(swap(R)) = swap(ours_G(R)) with G = RC.F.RC, the swaps cancel in pairs when layers
  0, 2, 4, ... are given the RC-conjugated weights of G: the two directions exchange their
  conv/x/dt/A/D tensors, in_proj's input columns and out_proj's output rows are reversed, and
  the norm weight is reversed. An odd number of such layers leaves one swap before the final
  norm, which a tied model cannot absorb: refused.
- Token ids: Caduceus's character tokenizer puts 10 specials first ([CLS] [EOS] [SEP] [REF]
  [MUT] [BOS] [MASK] [PAD] [RESERVED] [UNK]) and the characters from id 10, in a vocabulary
  padded to a multiple of 8. The embedding rows of our ``CharTokenizer``'s 9 tokens are
  picked out, so the converted model reads our ids and its logits are Caduceus's logits at
  the same tokens.
"""
from __future__ import annotations

import torch

from mambaseq.core.hub import (MIXER_TENSORS, ConversionError, build_converted,
                               check_layer_count, check_untied, config_int, leftover,
                               mixer_weights, ssm_options)
from .heads import MaskedLM
from .tokenizers import CharTokenizer

CADUCEUS_TOKENIZER = "tokenizer_config.json"
CADUCEUS_SPECIALS = ("[CLS]", "[EOS]", "[SEP]", "[REF]", "[MUT]", "[BOS]", "[MASK]", "[PAD]",
                     "[RESERVED]", "[UNK]")
DEFAULT_CHARACTERS = ("A", "C", "G", "T", "N")


def caduceus_token_ids(tokenizer_config=None):
    """Caduceus id of each token of our ``CharTokenizer`` vocabulary: (9,) long."""
    characters = tuple((tokenizer_config or {}).get("characters", DEFAULT_CHARACTERS))
    vocab = {t: i for i, t in enumerate(CADUCEUS_SPECIALS)}
    vocab.update({c: len(CADUCEUS_SPECIALS) + i for i, c in enumerate(characters)})
    missing = [t for t in CharTokenizer.vocab if t not in vocab]
    if missing:
        raise ConversionError(f"the Caduceus tokenizer has no token {missing[0]!r} "
                              f"(characters {list(characters)})")
    return torch.tensor([vocab[t] for t in CharTokenizer.vocab])


def _check_config(config, src):
    checks = [(config.get("rms_norm", True), "rms_norm is false (LayerNorm; ours is RMSNorm)"),
              (config.get("bidirectional", True), "bidirectional is false"),
              (config.get("bidirectional_strategy", "add") in ("add", None),
               f"bidirectional_strategy {config.get('bidirectional_strategy')!r} (ours adds)"),
              (config.get("bidirectional_weight_tie", True),
               "bidirectional_weight_tie is false (ours shares in/out projections)")]
    for ok, why in checks:
        if not ok:
            raise ConversionError(f"{src}: {why}")
    options = ssm_options(config.get("ssm_cfg"), src)
    width = config_int(config, "d_model", src)
    auto_rank = -(-width // 16)
    if options.pop("dt_rank", "auto") not in ("auto", auto_rank):
        raise ConversionError(f"{src}: ssm_cfg dt_rank is not auto ({auto_rank}), which our "
                              "BiMamba layers assume")
    if options.pop("conv_bias", True) is not True or options.pop("bias", False) is not False:
        raise ConversionError(f"{src}: ssm_cfg conv_bias/bias differ from Mamba's defaults, "
                              "which our BiMamba layers assume")
    return options


def _prefix(state, src):
    for prefix in ("caduceus.backbone.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            return prefix
    raise ConversionError(f"{src}: no caduceus.backbone.* tensors")


def _first_present(state, keys, src):
    for k in keys:
        if k in state:
            return k
    raise ConversionError(f"{src}: tensor {keys[0]} missing")


def _conjugated(direction_a, direction_b, shared):
    """RC-conjugate a BiMamba's tensors (see the module docstring): the directions exchange
    their own tensors; in_proj input columns and out_proj output rows are reversed."""
    out = {}
    for name, t in direction_b.items():
        out["fwd." + name] = t
    for name, t in direction_a.items():
        out["rev." + name] = t
    for name, t in shared.items():
        if name == "in_proj.weight":
            t = t.flip(1)
        elif name.startswith("out_proj."):
            t = t.flip(0)
        out["fwd." + name] = out["rev." + name] = t
    return out


def masked_lm_from_caduceus(config, state, tokenizer_config=None, src="SRC",
                            dtype=torch.float32):
    """``mamba_bio.heads.MaskedLM`` with the weights of a ``CaduceusForMaskedLM``.

    Args:
        config (dict): its config.json.  state (dict): its tensors.
        tokenizer_config (dict, optional): its tokenizer_config.json (for ``characters``).
        src (str): named in errors.  dtype (torch.dtype, fp32): of the result.
    """
    options = _check_config(config, src)
    rcps, n_layer = bool(config.get("rcps", False)), config_int(config, "n_layer", src)
    width = config_int(config, "d_model", src)
    fused_swap = rcps and config.get("fused_add_norm", True)
    if fused_swap and n_layer % 2:
        raise ConversionError(f"{src}: Caduceus-PS with fused_add_norm and an odd n_layer "
                              f"({n_layer}) ends with its channel halves swapped, which a "
                              "tied model cannot absorb")
    ids = caduceus_token_ids(tokenizer_config)
    ours = CharTokenizer()
    complement = ours.complement_map
    if rcps:
        theirs = {int(k): int(v) for k, v in (config.get("complement_map") or {}).items()}
        if any(theirs.get(int(i), int(i)) != int(ids[c]) for i, c in zip(ids, complement)):
            raise ConversionError(f"{src}: complement_map does not pair the bases as A-T, C-G")

    p = _prefix(state, src)
    check_layer_count(state, p + "layers.", n_layer, "n_layer", src)
    emb_key = _first_present(state, [p + "embeddings.word_embeddings.embedding.weight",
                                     p + "embeddings.word_embeddings.weight"], src)
    if int(ids.max()) >= state[emb_key].shape[0]:
        raise ConversionError(f"{src}: the embedding has {state[emb_key].shape[0]} rows, fewer "
                              "than the tokenizer's ids")
    norm_f = _first_present(state, [p + "norm_f.weight", p + "norm_f.submodule.weight"], src)
    weights = {"embedding.embedding.weight" if rcps else "embedding.weight": state[emb_key][ids],
               "backbone.norm_f.weight": state[norm_f]}
    used = {emb_key, norm_f, p + "embeddings.word_embeddings.complement_map",
            "lm_head.weight", "lm_head.lm_head.weight", "lm_head.complement_map"}
    for i in range(n_layer):
        mixer = f"{p}layers.{i}.mixer." + ("submodule." if rcps else "")
        norm = _first_present(state, [f"{p}layers.{i}.norm.weight",
                                      f"{p}layers.{i}.norm.submodule.weight"], src)
        fwd = mixer_weights(state, mixer + "mamba_fwd.", "")
        rev = mixer_weights(state, mixer + "mamba_rev.", "")
        shared = {n: fwd.pop(n) for n in list(fwd) if n.split(".")[0] in ("in_proj", "out_proj")}
        for n in list(rev):
            if n.split(".")[0] in ("in_proj", "out_proj"):
                if not torch.equal(rev.pop(n), shared.get(n, torch.empty(0))):
                    raise ConversionError(f"{src}: layer {i}: the reverse direction's {n} "
                                          "differs from the forward one's (untied)")
        if fused_swap and i % 2 == 0:
            layer, norm_weight = _conjugated(fwd, rev, shared), state[norm].flip(0)
        else:
            layer = {**{"fwd." + n: t for n, t in {**fwd, **shared}.items()},
                     **{"rev." + n: t for n, t in {**rev, **shared}.items()}}
            norm_weight = state[norm]
        weights.update({f"backbone.layers.{i}.mixer.{n}": t for n, t in layer.items()})
        weights[f"backbone.layers.{i}.norm.weight"] = norm_weight
        used |= {norm} | {mixer + d + n for d in ("mamba_fwd.", "mamba_rev.")
                          for n in MIXER_TENSORS}
    leftover(state, used, src)
    for head in ("lm_head.weight", "lm_head.lm_head.weight"):
        check_untied(state, emb_key, head, src)
    options = dict(vocab_size=len(ours.vocab), d_model=width * (2 if rcps else 1),
                   n_layer=n_layer, norm_eps=config.get("norm_epsilon", 1e-5),
                   rc_equivariant=rcps, complement=complement.tolist() if rcps else None,
                   **options)
    return build_converted(MaskedLM, options, weights, src, dtype)
