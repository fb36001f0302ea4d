"""transformers' MambaForCausalLM <-> core.MambaLM: a tiny random model saved with
save_pretrained converts with logits equal to 1e-5 and the same greedy continuation, and
the exported folder loads back into transformers with the same logits."""
import json

import pytest
import torch

from mambaseq.core import MambaLM, load_pretrained
from mambaseq.core.hub import ConversionError
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines import ConvertConfig, convert
from mambaseq.pipelines.cli import main

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def _hf_model(tmp_path, **overrides):
    kw = dict(vocab_size=37, hidden_size=16, num_hidden_layers=2, state_size=4, conv_kernel=3,
              expand=2, time_step_rank=3, use_bias=True, use_conv_bias=True)
    kw.update(overrides)
    model = transformers.MambaForCausalLM(transformers.MambaConfig(**kw)).eval()
    with torch.no_grad():   # non-trivial values where the init leaves ones and zeros
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", "bias", ".D")):
                p.add_(0.3 * torch.randn_like(p))
    src = tmp_path / "hf"
    model.save_pretrained(src)
    return model, src


def test_hf_mamba_converts_with_equal_logits_and_greedy_continuation(tmp_path):
    hf, src = _hf_model(tmp_path)
    result = convert(ConvertConfig(src=str(src), out=str(tmp_path / "ours")))
    assert result.out == tmp_path / "ours" and result.model_class == "MambaLM"
    ours = load_pretrained(tmp_path / "ours")
    assert isinstance(ours, MambaLM)
    assert ours.config.bias and ours.config.d_conv == 3 and ours.config.dt_rank == 3
    ids = torch.randint(0, 37, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=0, atol=1e-5)
    prompt = ids[:, :9]
    ours_greedy = ours.generate(prompt, 12, temperature=0)
    hf_greedy = hf.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                            pad_token_id=0)
    assert torch.equal(ours_greedy, hf_greedy)


def test_export_to_hf_mamba_loads_in_transformers_with_equal_logits(tmp_path, capsys):
    """Through the command line (its smoke test): --to, --char-tokenizer, --dtype."""
    hf, src = _hf_model(tmp_path, use_bias=False, use_conv_bias=False, time_step_rank="auto")
    ours = tmp_path / "ours"
    assert main(["convert", str(src), "--out", str(ours), "--from", "hf-mamba"]) == 0
    assert capsys.readouterr().out.startswith("MambaLM (")
    assert main(["convert", str(ours), "--out", str(tmp_path / "back"), "--to", "hf-mamba"]) == 0
    assert f"-> {tmp_path / 'back'} (hf-mamba)" in capsys.readouterr().out
    back = transformers.MambaForCausalLM.from_pretrained(tmp_path / "back").eval()
    ids = torch.randint(0, 37, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(back(ids).logits, load_pretrained(ours)(ids), rtol=0,
                                   atol=1e-5)
    # back again, marked as reading the nucleotide ids: the genomics commands find its tokenizer
    again = tmp_path / "again"
    assert main(["convert", str(tmp_path / "back"), "--out", str(again), "--char-tokenizer"]) == 0
    assert CharTokenizer.load(again).vocab_size == 9
    assert main(["convert", str(again), "--out", str(tmp_path / "copy"), "--dtype",
                 "bfloat16"]) == 0                   # a toolkit folder keeps its tokenizer
    assert CharTokenizer.load(tmp_path / "copy").vocab_size == 9


def test_untied_or_non_mamba_configs_are_refused_with_a_reason(tmp_path):
    _, src = _hf_model(tmp_path, tie_word_embeddings=False)
    with pytest.raises(ConversionError, match="tie_word_embeddings is false"):
        convert(ConvertConfig(src=str(src), out=str(tmp_path / "o")))
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "mamba2"}))
    with pytest.raises(ConversionError, match="not a Mamba-1"):
        convert(ConvertConfig(src=str(src), out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConversionError, match="no config.json"):
        from mambaseq.core.hub import read_hub_folder
        read_hub_folder(tmp_path / "nowhere")
