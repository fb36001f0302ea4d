"""Benchmarks: the baseline Transformer and the bench plumbing.

Nothing here is timed as a pass/fail criterion; the plumbing runs on tiny sizes.
"""
import json

import pytest
import torch

from mambaseq.bench.report import loglog_slope, markdown_table, time_call
from mambaseq.bench.transformer import TransformerLM, count_parameters, matched_transformer
from mambaseq.core import MambaLM, MambaLMConfig
from mambaseq.pipelines import BenchConfig, run_benchmarks
from mambaseq.pipelines.cli import main as cli_main


@pytest.mark.parametrize("d_model,n_layer", [(64, 2), (128, 4), (256, 8)])
def test_matched_transformer_parameter_count(d_model, n_layer):
    lm = MambaLM(MambaLMConfig(vocab_size=16, d_model=d_model, n_layer=n_layer))
    tf = matched_transformer(lm)
    assert tf.config.d_model == d_model
    assert abs(count_parameters(tf) / count_parameters(lm) - 1) < 0.03


def test_kv_cache_generation_equals_full_forward():
    torch.manual_seed(0)
    tf = TransformerLM(16, 32, 2, n_head=2, d_mlp=64).eval()
    ids = torch.randint(0, 16, (3, 30))
    with torch.no_grad():
        full = tf(ids)
        cache = tf.allocate_cache(3, max_len=32)
        prefill = tf(ids[:, :10], cache=cache)          # causal prefill
        chunk = tf(ids[:, 10:18], cache=cache)          # chunk after a prefix (masked)
        steps = torch.stack([tf.step(ids[:, t], cache) for t in range(18, 30)], 1)
    assert cache.length == 30
    torch.testing.assert_close(torch.cat([prefill, chunk, steps], 1), full,
                               atol=1e-5, rtol=1e-5)


def test_kv_cache_is_causal():
    torch.manual_seed(0)
    tf = TransformerLM(16, 32, 1, n_head=2, d_mlp=64).eval()
    ids = torch.randint(0, 16, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 16
    with torch.no_grad():
        torch.testing.assert_close(tf(ids)[:, :8], tf(changed)[:, :8])


def test_kv_cache_overflow_is_an_error():
    tf = TransformerLM(16, 32, 1, n_head=2, d_mlp=64)
    cache = tf.allocate_cache(1, max_len=4)
    with pytest.raises(ValueError, match="KV cache holds 4"):
        tf(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_report_helpers():
    t = time_call(lambda: None, repeats=3, warmup=1)
    assert len(t["raw_s"]) == 3 and t["median_s"] >= 0
    assert loglog_slope([1, 2, 4, 8], [3, 6, 12, 24]) == pytest.approx(1.0)
    assert markdown_table(["a", "b"], [[1, 0.5]]).splitlines()[2] == "| 1 | 0.5 |"


def test_bench_all_smoke_writes_json_markdown_png(tmp_path):
    result = run_benchmarks(BenchConfig(which="all", smoke=True, out=str(tmp_path)))
    assert result.benchmarks == ["scan", "train", "generate", "scaling", "audio_generate"]
    assert result.markdown == {n: tmp_path / f"{n}.md" for n in result.benchmarks}
    assert result.readme == tmp_path / "README.md"
    for name in ("scan", "train", "generate", "scaling", "audio_generate"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["meta"]["torch"] == torch.__version__
        assert "load_average_1_5_15" in data["meta"]
        assert (tmp_path / f"{name}.md").read_text().startswith("###")
    gen = json.loads((tmp_path / "generate.json").read_text())
    assert {r["model"] for r in gen["rows"]} == {"mamba_step", "transformer_kv"}
    assert all(len(r["raw_s"]) == r["repeats"] for r in gen["rows"])
    assert "| context | batch |" in (tmp_path / "generate.md").read_text()
    train = json.loads((tmp_path / "train.json").read_text())
    assert {r["model"] for r in train["rows"]} == {"mamba", "transformer"}
    assert all(r["tokens_per_s"] > 0 for r in train["rows"])
    scaling = json.loads((tmp_path / "scaling.json").read_text())
    assert set(scaling["slopes"]) == {"backbone_time", "backbone_memory", "embed_time",
                                      "embed_memory"}
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    audio = json.loads((tmp_path / "audio_generate.json").read_text())
    assert audio["n_samples"] == 240 and audio["step_vs_forward_max_abs_diff"] < 1e-3
    assert set(audio["forward_seconds"]) == {"120", "240"} and audio["rerun_over_generation"] > 0
    assert (tmp_path / "README.md").exists()
    assert json.loads((tmp_path / "config.json").read_text())["which"] == "all"


def test_bench_command_line_smoke(tmp_path):
    """One benchmark through the command line: its files, its options in config.json."""
    assert cli_main(["bench", "scan", "--smoke", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "scan.json").read_text())["smoke"]["median_s"] > 0
    assert (tmp_path / "scan.md").read_text().startswith("### CPU selective scan (smoke)")
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "command": "bench", "which": "scan", "device": "cpu", "quick": False, "threads": 1,
        "out": str(tmp_path), "smoke": True, "size": 3.1e9, "json": None}
    assert not (tmp_path / "README.md").exists()


@pytest.mark.slow
def test_bench_data_smoke(tmp_path, monkeypatch):
    """``bench data`` through the command line on a tiny genome: every case, its files."""
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(tmp_path / "cache"))
    out, extra = tmp_path / "data", tmp_path / "extra.json"
    assert cli_main(["bench", "data", "--smoke", "--out", str(out), "--json", str(extra)]) == 0
    data = json.loads((out / "data.json").read_text())
    assert json.loads(extra.read_text()) == data
    genome = tmp_path / "cache" / "bench-data" / "human_like_4000000.fa"
    assert data["genome"] == str(genome) and genome.read_text().count(">") == 24
    assert [(c["window"], c["batch"]) for c in data["batches"]["cases"]] == [
        (1024, 64), (16384, 8), (131072, 2)]
    assert all(c["tokens_per_s"] > 0 for c in data["batches"]["cases"])
    assert 0 < data["stub"]["stub_busy"] <= 1 and data["first_use"]["first_use_s"] > 0
    assert data["audio"]["crops_per_s"] > 0 and set(data["met"]) == {
        "tokens_per_s_1k", "tokens_per_s_128k", "stub_busy", "first_use_s", "rss_flat"}
    assert "| 1024 | 64 |" in (out / "data.md").read_text()
