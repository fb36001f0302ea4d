"""The embedding binning benchmark's plumbing on tiny simulated genomes (no timing)."""
import json

import numpy as np

from mambaseq import core
from mambaseq.bench.embedding_binning import genome_regions, main
from mambaseq.mamba_bio.bed import SplitRegion, write_split_bed
from mambaseq.mamba_bio.datasets import split_regions
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.simulate import simulate_genomes, write_species_fastas
from mambaseq.mamba_bio.tokenizers import CharTokenizer


def test_binning_bench_scores_seen_and_unseen_genomes_beside_tnf(tmp_path):
    genomes = simulate_genomes("((a:0.05,b:0.05):0.1,(c:0.05,d:0.05):0.1);", length=12000,
                               n_chromosomes=1, seed=1, composition_sd=1.0)
    fastas = write_species_fastas(tmp_path / "data", genomes)
    rows = [SplitRegion(split, name, str(fastas[name]), w) for name in ("a", "c")
            for split, ws in split_regions(open_sequences(fastas[name]), by="position").items()
            for w in ws]
    split_bed = write_split_bed(tmp_path / "split.bed", rows)
    regions = genome_regions(tmp_path / "data", split_bed, (0.8, 0.1, 0.1))
    assert [g["seen"] for g in regions.values()] == [True, False, True, False]
    assert regions["b"]["test"] == [("chr1", 10800, 12000)]       # cut by the same rule
    tok = CharTokenizer()
    model = core.MambaLM(core.MambaLMConfig(vocab_size=tok.vocab_size, d_model=16, n_layer=1))
    model.save_pretrained(tmp_path / "lm", extra_json=core.model_assets(tok))
    out = tmp_path / "res"
    main(["--split-bed", str(split_bed), "--model", f"lm={tmp_path / 'lm'}", "--data",
          str(tmp_path / "data"), "--windows", "300", "--picture-window", "300", "--split",
          "test", "--k", "3", "--out", str(out)])
    table = json.loads((out / "binning_test.json").read_text())
    scores = table["results"]["300"]
    assert table["genomes"] == {"seen": ["a", "c"], "unseen": ["b", "d"]}
    for set_name in ("seen", "unseen"):
        assert set(scores[set_name]) == {"lm", "TNF", "6-mer"}
        tnf = scores[set_name]["TNF"]
        assert tnf["queries"] == 8 and tnf["references"] == 2 * 32       # 1200 / 300, 9600 / 300
        assert 0 <= tnf["knn_accuracy"] <= 1 and -1 <= tnf["ari"] <= 1
    assert (out / "pca_test.png").stat().st_size > 0
    assert "| 0.3 kb | TNF |" in (out / "binning_test.md").read_text()
    assert np.isfinite(scores["seen"]["lm"]["knn_accuracy"])
