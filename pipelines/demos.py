"""The demo as a job: the main jobs end to end on data the toolkit makes itself, in minutes
on a CPU.

    from mambaseq.pipelines import DemoConfig, demo
    result = demo(DemoConfig(out="runs/demo", jobs="pretrain-genome,classify-species"))
    result.jobs["classify-species"].figures       # accuracy, baseline_accuracy, chance

1. data: simulated genomes (``mamba_bio.simulate``, one FASTA per species along a known
   tree) and speech-like audio (``mamba_audio.synth``, wavs of a few synthetic speakers),
   under ``<out>/data`` (kept when already there);
2. jobs, each called as a function with its config: :func:`pretrain_genome` ->
   :func:`train_species_classifier` -> :func:`train_audio` -> :func:`generate_audio`.

Each job writes to ``<out>/<job>/``; a job that fails is reported and the others still run
(generate-audio is skipped when train-audio failed). A demo run again continues its
training runs (``resume``). ``<out>/demo.json`` records what ran, with which options, how
long it took and the headline figures.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .audio import GenerateAudioConfig, TrainAudioConfig, generate_audio, train_audio
from .genome import PretrainGenomeConfig, pretrain_genome
from .species import ClassifySpeciesConfig, train_species_classifier
from .training import Config, ConfigError, option, positive_int, run_folder, seed_int

JOBS = ("pretrain-genome", "classify-species", "train-audio", "generate-audio")
SUMMARY_FILE = "demo.json"

# The figures of a job's report that demo.json repeats.
FIGURES = {"classify-species": ("accuracy", "baseline_accuracy", "chance"),
           "pretrain-genome": ("val",)}

# A job that needs another's output, and is skipped when that one did not succeed.
NEEDS = {"generate-audio": "train-audio"}


@dataclasses.dataclass(kw_only=True)
class DemoConfig(Config):
    """Options of :func:`demo` (and of ``mambaseq demo``)."""

    OPTIONS_GROUP = "demo"
    out: str = option("runs/demo", metavar="DIR",
                      help="folder for the generated data and every job's outputs")
    jobs: str = option(",".join(JOBS), help="comma-separated subset of: " + ", ".join(JOBS))
    steps: int = option(60, rule=positive_int, help="optimizer steps of each training job")
    device: str = option("auto", choices=("auto", "cpu", "cuda"), help="device of every job")
    seed: int = option(0, rule=seed_int, help="seed of the data and the jobs")

    def __post_init__(self):
        super().__post_init__()
        unknown = sorted(set(self.selected()) - set(JOBS))
        if unknown:
            raise ConfigError(type(self).__name__, "jobs",
                              f"names unknown job(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(JOBS)}")

    def selected(self) -> list[str]:
        """The jobs to run, in the order given."""
        return [j.strip() for j in self.jobs.split(",") if j.strip()]


@dataclasses.dataclass
class JobOutcome:
    """One job of the demo: ``status`` ("ok", "failed: <error>" or "skipped: <why>"), its
    folder, the options it ran with, its seconds, the figures demo.json repeats, and the
    job's own result (e.g. a ``PretrainResult``); None where the job did not run or fail."""

    status: str
    out: Path | None = None
    config: dict | None = None
    seconds: float | None = None
    figures: dict | None = None
    result: Any = None

    def to_json(self) -> dict:
        """The entry of demo.json."""
        entry = {"status": self.status}
        if self.config is not None:
            entry.update(config=self.config, seconds=self.seconds, out=str(self.out))
        if self.figures is not None:
            entry["figures"] = self.figures
        return entry


@dataclasses.dataclass
class DemoResult:
    """What :func:`demo` ran: the folder, demo.json, the seconds of the whole run and each
    selected job's :class:`JobOutcome` (in the order run)."""

    out: Path
    summary_file: Path
    seconds: float
    jobs: dict[str, JobOutcome]

    @property
    def ok(self) -> bool:
        """Every selected job succeeded."""
        return all(j.status == "ok" for j in self.jobs.values())


def make_data(out: Path, seed: int) -> None:
    """Simulated genomes (6 species x 2 chromosomes x 20 kb) and 4 speakers x 10 clips of
    1 s speech-like audio at 8 kHz, under ``out/data``; kept when already there."""
    genomes, audio = out / "data" / "genomes", out / "data" / "audio"
    if not genomes.is_dir():
        from mambaseq.mamba_bio.simulate import simulate_genomes, write_species_fastas
        # composition_sd: each lineage drifts in base composition; repeat_fraction: each
        # lineage carries its own repeat families (as real genomes do), a signal longer than
        # the baseline's k-mers. Both let species be told apart in regions the classifier
        # never saw (see mamba_bio.simulate).
        write_species_fastas(genomes, simulate_genomes(length=20_000, n_chromosomes=2,
                                                       composition_sd=1.0, repeat_fraction=0.3,
                                                       seed=seed))
    if not audio.is_dir():
        from mambaseq.mamba_audio.synth import write_demo_corpus
        write_demo_corpus(audio, n_speakers=4, clips_per_speaker=10, seconds=1.0,
                          sample_rate=8000, seed=seed)


def _training(steps: int, seq_len: int, batch_size: int, device: str, seed: int,
              d_model: int = 32, n_layer: int = 2) -> dict:
    """The shared training options, sized for a laptop CPU."""
    return dict(steps=steps, seq_len=seq_len, batch_size=batch_size, d_model=d_model,
                n_layer=n_layer, warmup_steps=max(1, steps // 10), lr=3e-3, eval_every=steps,
                save_every=steps, log_every=max(1, steps // 20), device=device, seed=seed)


def job_plan(config: DemoConfig, name: str) -> tuple[Callable, Config]:
    """The job function of demo job ``name`` and its config, reading the data under
    ``<out>/data`` and the outputs of the jobs before it."""
    out = Path(config.out)
    genomes, audio, job_out = out / "data" / "genomes", out / "data" / "audio", out / name
    steps, device, seed = config.steps, config.device, config.seed
    resume = (job_out / "checkpoints").is_dir()    # a demo run again continues (or just ends)
    if name == "pretrain-genome":
        return pretrain_genome, PretrainGenomeConfig(
            fasta=[str(genomes / "ape_a.fa")], out=str(job_out), val_bases=5000,
            resume=resume, **_training(steps, 256, 8, device, seed))
    if name == "classify-species":
        # 6-mer embeddings (ngram 6) pick up the lineages' repeat families; with the other
        # jobs' 60 steps of 8 windows, and no n-gram embedding, it predicted one species
        # for every window. From scratch: one wider layer learns faster here than
        # pretrain-genome's model would fine-tune.
        return train_species_classifier, ClassifySpeciesConfig(
            species=[f"{p.stem}={p}" for p in sorted(genomes.glob("*.fa"))], out=str(job_out),
            causal=True, ngram=6, kmer=3, resume=resume,
            **_training(4 * steps, 256, 16, device, seed, d_model=64, n_layer=1))
    if name == "train-audio":
        return train_audio, TrainAudioConfig(data=str(audio), out=str(job_out), resume=resume,
                                             **_training(steps, 1024, 4, device, seed))
    return generate_audio, GenerateAudioConfig(
        model=str(out / "train-audio" / "model"), out=str(job_out), n=2, seconds=0.5,
        device=device, seed=seed)


def _figures(name: str, result) -> dict | None:
    report = getattr(result, "report", None)
    if name not in FIGURES or not isinstance(report, dict):
        return None
    return {k: report[k] for k in FIGURES[name] if k in report}


def demo(config: DemoConfig) -> DemoResult:
    """Make the demo's data, then run the selected jobs on it, each into ``<out>/<job>``.

        result = demo(DemoConfig(out="runs/demo", steps=60))
        result.ok, result.jobs["pretrain-genome"].result.report["val"]

    A job that raises is recorded as failed (its error in one line) and the next one runs;
    Ctrl-C stops the demo.

    Raises:
        out_folder.OutRefused: ``out`` is not a folder this job may write.
    """
    started = time.perf_counter()
    with run_folder(config, "demo", training=False) as out:
        print(f"[demo] generating data under {out / 'data'}", file=sys.stderr, flush=True)
        make_data(out, config.seed)
        outcomes: dict[str, JobOutcome] = {}
        for name in config.selected():
            need = NEEDS.get(name)
            if need and outcomes.get(need, JobOutcome("ok")).status != "ok":
                outcomes[name] = JobOutcome(f"skipped: {need} did not succeed")
            else:
                outcomes[name] = _run_job(config, name)
            print(f"[demo] {name}: {outcomes[name].status}", file=sys.stderr, flush=True)
        summary_file = out / SUMMARY_FILE
        summary_file.write_text(json.dumps({k: v.to_json() for k, v in outcomes.items()},
                                           indent=2) + "\n")
    return DemoResult(out=out, summary_file=summary_file,
                      seconds=time.perf_counter() - started, jobs=outcomes)


def _run_job(config: DemoConfig, name: str) -> JobOutcome:
    """Run demo job ``name``; a failure becomes its outcome."""
    started = time.perf_counter()
    job, job_config = job_plan(config, name)
    print(f"\n[demo] {name} -> {job_config.out}", file=sys.stderr, flush=True)
    try:
        result = job(job_config)
    except Exception as e:               # noqa: BLE001 - reported, and the demo goes on
        status, result = f"failed: {type(e).__name__}: {e}", None
    else:
        status = "ok"
    return JobOutcome(status, out=Path(job_config.out), config=job_config.to_dict(),
                      seconds=round(time.perf_counter() - started, 1),
                      figures=_figures(name, result), result=result)
