"""mamba_ssm MambaLMHeadModel and Caduceus-Ph/PS checkpoints -> our models, checked against
independent forwards written from the published code's semantics (tests/mamba_reference.py):
padded vocabularies, tied heads, Caduceus's character ids and its fused add-norm half swap."""
import json

import pytest
import torch
from safetensors.torch import save_file

from mambaseq.core import MambaLM, SequenceClassifier, SequenceClassifierConfig, load_pretrained
from mambaseq.core.hub import ConversionError
from mambaseq.mamba_bio.heads import MaskedLM
from mambaseq.mamba_bio.hub_caduceus import caduceus_token_ids
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines import ConvertConfig, convert
from mamba_reference import caduceus_masked_lm, mamba_lm_head_model

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def _convert(src, out, **options):
    return convert(ConvertConfig(src=str(src), out=str(out), **options))


def _refused(src, out) -> str:
    """The one-line reason why converting ``src`` is refused; nothing is written."""
    with pytest.raises(ConversionError) as err:
        _convert(src, out)
    assert not out.exists() and "\n" not in str(err.value)
    return str(err.value)


def _mixer(prefix, d_model, d_state=4, d_conv=4, expand=2, bias=False, with_proj=True):
    """Random tensors of one Mamba mixer under ``prefix`` (mamba_ssm names and shapes)."""
    E, R = expand * d_model, -(-d_model // 16)
    t = {"conv1d.weight": torch.randn(E, 1, d_conv) * 0.5, "conv1d.bias": torch.randn(E) * 0.1,
         "x_proj.weight": torch.randn(R + 2 * d_state, E) * 0.3,
         "dt_proj.weight": torch.randn(E, R) * 0.5, "dt_proj.bias": torch.randn(E) - 3,
         "A_log": torch.log(torch.rand(E, d_state) * 4 + 0.5), "D": torch.randn(E)}
    if with_proj:
        t.update({"in_proj.weight": torch.randn(2 * E, d_model) * 0.3,
                  "out_proj.weight": torch.randn(d_model, E) * 0.3})
        if bias:
            t.update({"in_proj.bias": torch.randn(2 * E) * 0.1,
                      "out_proj.bias": torch.randn(d_model) * 0.1})
    return {prefix + k: v for k, v in t.items()}


def _save(folder, config, state, pickled=False):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.clone().contiguous() for k, v in state.items()}
    if pickled:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"))
    return folder


# -- mamba_ssm --------------------------------------------------------------------------------
def _mamba_ssm(n_layer=2, d_model=8, vocab=13, multiple=8, bias=True):
    padded = -(-vocab // multiple) * multiple
    config = {"d_model": d_model, "d_intermediate": 0, "n_layer": n_layer, "vocab_size": vocab,
              "ssm_cfg": {"d_state": 4, "bias": bias, "dt_min": 0.001}, "rms_norm": True,
              "residual_in_fp32": True, "fused_add_norm": True,
              "pad_vocab_size_multiple": multiple, "tie_embeddings": True}
    state = {"backbone.embedding.weight": torch.randn(padded, d_model),
             "backbone.norm_f.weight": 1 + 0.3 * torch.randn(d_model)}
    for i in range(n_layer):
        state.update(_mixer(f"backbone.layers.{i}.mixer.", d_model, bias=bias))
        state[f"backbone.layers.{i}.norm.weight"] = 1 + 0.3 * torch.randn(d_model)
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    return config, state


def test_mamba_ssm_layout_converts_with_padded_vocab_and_reference_logits(tmp_path):
    config, state = _mamba_ssm()
    src = _save(tmp_path / "ssm", config, state, pickled=True)
    result = _convert(src, tmp_path / "ours")
    assert result.model_class == "MambaLM" and result.target_format == "mambaseq"
    ours = load_pretrained(tmp_path / "ours")
    assert isinstance(ours, MambaLM) and ours.config.vocab_size == 16   # 13 padded to 16
    assert result.parameters == sum(p.numel() for p in ours.parameters())
    ids = torch.randint(0, 13, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), mamba_lm_head_model(state, 2, ids), rtol=0,
                                   atol=1e-5)


@pytest.mark.parametrize("change, reason", [
    ({"rms_norm": False}, "LayerNorm"), ({"d_intermediate": 32}, "MLP"),
    ({"attn_layer_idx": [1]}, "attention"), ({"ssm_cfg": {"layer": "Mamba2"}}, "Mamba2"),
    ({"tie_embeddings": False}, "tie_embeddings is false")])
def test_mamba_ssm_configs_that_cannot_map_are_refused(tmp_path, change, reason):
    config, state = _mamba_ssm()
    src = _save(tmp_path / "ssm", {**config, **change}, state)
    assert reason in _refused(src, tmp_path / "o")


def test_extra_layers_and_untied_heads_are_refused(tmp_path):
    config, state = _mamba_ssm()
    mlp = {**state, "backbone.layers.0.mlp.fc1.weight": torch.randn(4, 8)}
    assert "backbone.layers.0.mlp.fc1.weight has no counterpart" in _refused(
        _save(tmp_path / "a", config, mlp), tmp_path / "o")
    untied = {**state, "lm_head.weight": torch.randn_like(state["lm_head.weight"])}
    assert "not tied" in _refused(_save(tmp_path / "b", config, untied), tmp_path / "o")


# -- Caduceus ---------------------------------------------------------------------------------
CADUCEUS_COMPLEMENT = {str(i): i for i in range(16)} | {"10": 13, "11": 12, "12": 11, "13": 10}


def _caduceus(rcps, fused, n_layer=2, d_model=8):
    config = {"model_type": "caduceus", "d_model": d_model, "n_layer": n_layer,
              "vocab_size": 12, "pad_vocab_size_multiple": 8, "rms_norm": True,
              "fused_add_norm": fused, "residual_in_fp32": True, "rcps": rcps,
              "bidirectional": True, "bidirectional_strategy": "add",
              "bidirectional_weight_tie": True, "complement_map": CADUCEUS_COMPLEMENT,
              "ssm_cfg": {"d_state": 4, "d_conv": 4, "expand": 2, "dt_rank": "auto",
                          "conv_bias": True, "bias": False, "use_fast_path": True}}
    p = "caduceus.backbone."
    emb = torch.randn(16, d_model)
    state = {p + ("embeddings.word_embeddings.embedding.weight" if rcps
                  else "embeddings.word_embeddings.weight"): emb}
    norm = "norm.weight" if (fused or not rcps) else "norm.submodule.weight"
    for i in range(n_layer):
        mixer = f"{p}layers.{i}.mixer." + ("submodule." if rcps else "")
        state.update(_mixer(mixer + "mamba_fwd.", d_model))
        state.update(_mixer(mixer + "mamba_rev.", d_model, with_proj=False))
        for proj in ("in_proj.weight", "out_proj.weight"):     # tied, stored twice as HF does
            state[mixer + "mamba_rev." + proj] = state[mixer + "mamba_fwd." + proj]
        state[f"{p}layers.{i}.{norm}"] = 1 + 0.3 * torch.randn(d_model)
    state[p + ("norm_f.weight" if (fused or not rcps) else "norm_f.submodule.weight")] = \
        1 + 0.3 * torch.randn(d_model)
    if rcps:
        state["lm_head.lm_head.weight"] = emb
        state["lm_head.complement_map"] = torch.tensor([int(v) for v in
                                                        CADUCEUS_COMPLEMENT.values()])
    else:
        state["lm_head.weight"] = emb
    return config, state


@pytest.mark.parametrize("rcps, fused, n_layer", [(False, True, 2), (True, True, 4),
                                                 (True, False, 2)])
def test_caduceus_converts_with_reference_logits_on_our_token_ids(tmp_path, rcps, fused,
                                                                   n_layer):
    config, state = _caduceus(rcps, fused, n_layer)
    src = _save(tmp_path / "cad", config, state)
    assert _convert(src, tmp_path / "ours").model_class == "MaskedLM"
    ours = MaskedLM.from_pretrained(tmp_path / "ours")
    assert ours.config.rc_equivariant == rcps
    tok = CharTokenizer.load(tmp_path / "ours")
    ids = torch.stack([tok.encode("ACGTNACGGTTACAGN"), tok.encode("TTGACNAGCATGCAAC")])
    rows = caduceus_token_ids()
    with torch.no_grad():
        expected = caduceus_masked_lm(state, config, rows[ids])[..., rows]
        torch.testing.assert_close(ours(ids), expected, rtol=0, atol=1e-5)
        if rcps:   # still exactly RC-equivariant after the half-swap folding
            rc = tok.reverse_complement_ids(ids)
            torch.testing.assert_close(ours(rc), ours(ids).flip(1)[..., tok.complement_map],
                                       rtol=0, atol=1e-5)
    # and it initialises a classifier as classify-species --init-from does
    clf = SequenceClassifier(SequenceClassifierConfig(
        vocab_size=9, d_model=ours.config.d_model, n_layer=n_layer, num_classes=3,
        bidirectional=True, rc_equivariant=rcps, d_state=ours.config.d_state,
        complement=tok.complement_map.tolist() if rcps else None))
    clf.embedding.load_state_dict(ours.embedding.state_dict())
    clf.backbone.load_state_dict(ours.backbone.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(clf.hidden(ids), ours.backbone(ours.embedding(ids)))


def test_caduceus_configs_that_cannot_map_are_refused(tmp_path):
    config, state = _caduceus(True, True, n_layer=3)
    assert "odd n_layer" in _refused(_save(tmp_path / "a", config, state), tmp_path / "o")
    config, state = _caduceus(False, True)
    for change, reason in [({"bidirectional_strategy": "ew_multiply"}, "ew_multiply"),
                           ({"rms_norm": False}, "LayerNorm")]:
        folder = _save(tmp_path / reason, {**config, **change}, state)
        assert reason in _refused(folder, tmp_path / "o")
    bad = {**CADUCEUS_COMPLEMENT, "10": 11}
    folder = _save(tmp_path / "comp", {**_caduceus(True, True)[0], "complement_map": bad},
                   _caduceus(True, True)[1])
    assert "complement_map" in _refused(folder, tmp_path / "o")


def test_sharded_safetensors_and_dtype_option(tmp_path):
    config, state = _mamba_ssm(bias=False)
    src = tmp_path / "sharded"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(config))
    names = sorted(k for k in state if k != "lm_head.weight")
    shards = {"model-00001-of-00002.safetensors": names[:5],
              "model-00002-of-00002.safetensors": names[5:]}
    for shard, keys in shards.items():
        save_file({k: state[k].clone() for k in keys}, str(src / shard))
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    _convert(src, tmp_path / "bf16", source_format="mamba-ssm", dtype="bfloat16")
    ours = load_pretrained(tmp_path / "bf16")
    assert ours.embedding.weight.dtype == torch.bfloat16
    assert torch.equal(ours.embedding.weight, state["backbone.embedding.weight"].bfloat16())
