"""demo: the main jobs end to end on data the toolkit makes itself, in minutes on a CPU.

    mambaseq demo --out runs/demo [--jobs pretrain-genome,classify-species] [--steps 60]

Generated genomes and speech-like audio, then pretrain-genome -> classify-species ->
train-audio -> generate-audio, each into ``<out>/<job>/``; ``<out>/demo.json`` sums up (see
``pipelines.demos``). Exit code 1 when a job did not succeed.
"""
from mambaseq.pipelines.demos import DemoConfig, demo

HELP = "run pretrain-genome, classify-species, train-audio and generate-audio on generated data"
CONFIG = DemoConfig


def run(config: DemoConfig) -> int:
    result = demo(config)
    print(f"\n[demo] finished in {result.seconds:.0f} s; summary in {result.summary_file}")
    for name, job in result.jobs.items():
        print(f"  {name:<18}{job.status:<12}{job.seconds if job.seconds is not None else ''}")
    return 0 if result.ok else 1
