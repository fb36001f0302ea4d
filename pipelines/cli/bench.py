"""bench {scan,train,generate,scaling,audio_generate,data,all}: the performance benchmarks.

    mambaseq bench generate --quick --out bench/results
    mambaseq bench all --out bench/results
    mambaseq bench data --size 3.1e9 --out bench/results/data

Each writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (see ``pipelines.benchmarks``).
"""
from mambaseq.pipelines.benchmarks import BenchConfig, run_benchmarks

HELP = ("benchmarks: selective scan, training and generation vs a Transformer, scaling to "
        "2^20, audio generation step vs forward, data loading from a human-sized genome")
CONFIG = BenchConfig


def run(config: BenchConfig) -> None:
    run_benchmarks(config)
