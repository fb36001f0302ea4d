"""demo: the main jobs end to end on data the toolkit makes itself, in minutes on a CPU.

    python -m mambaseq.pipelines demo --out runs/demo

1. data: simulated genomes (``mamba_bio.simulate``, one FASTA per species along a known
   tree) and speech-like audio (``mamba_audio.synth``, wavs of a few synthetic speakers);
2. jobs, each through the command line exactly as a user would type it:
   pretrain-genome -> classify-species -> train-audio -> generate-audio.

Each job writes to ``<out>/<job>/``; a job whose subcommand is missing or fails is reported
and the others still run (a job that needs its output is skipped). ``<out>/demo.json``
records what ran, how long it took and the exit codes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import cli
from .options import positive_int, seed_int

HELP = "run pretrain-genome, classify-species, train-audio and generate-audio on generated data"

JOBS = ("pretrain-genome", "classify-species", "train-audio", "generate-audio")


def add_arguments(parser):
    parser.add_argument("--out", default="runs/demo", metavar="DIR",
                        help="folder for the generated data and every job's outputs")
    parser.add_argument("--jobs", default=",".join(JOBS),
                        help="comma-separated subset of: " + ", ".join(JOBS))
    parser.add_argument("--steps", type=positive_int, default=60,
                        help="optimizer steps of each training job")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device of every job")
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seed of the data and the jobs")


@dataclass
class Job:
    """One subcommand run. Options are (candidate option strings, value); the first string
    the subcommand accepts is used. A value is a scalar, a list (several values after the
    option) or True (a flag). ``required`` options must match, ``tuning`` ones are left out
    when a subcommand does not take them."""
    command: str
    required: list[tuple[tuple[str, ...], object]]
    tuning: list[tuple[tuple[str, ...], object]] = field(default_factory=list)
    needs: str | None = None


def _training(steps: int, seq_len: int, batch_size: int, device: str, seed: int,
              d_model: int = 32, n_layer: int = 2) -> list:
    """The shared training options, sized for a laptop CPU."""
    return [(("--steps",), steps), (("--seq-len",), seq_len), (("--batch-size",), batch_size),
            (("--d-model",), d_model), (("--n-layer",), n_layer), (("--warmup-steps",), max(1, steps // 10)),
            (("--lr",), 3e-3), (("--eval-every",), steps), (("--save-every",), steps),
            (("--log-every",), max(1, steps // 20)), (("--device",), device),
            (("--seed",), seed)]


def plan(out: Path, steps: int, device: str, seed: int) -> dict[str, Job]:
    """The demo's jobs keyed by subcommand, reading the data under ``out/data`` and the
    outputs of the jobs done so far (call it again before each job)."""
    genomes, audio = out / "data" / "genomes", out / "data" / "audio"
    return {
        "pretrain-genome": Job(
            "pretrain-genome",
            required=[(("--fasta",), genomes / "ape_a.fa"), (("--out",), out / "pretrain-genome")],
            tuning=_training(steps, 256, 8, device, seed) + [(("--val-bases",), 5000)]),
        "classify-species": Job(
            "classify-species",
            required=[(("--species",), [f"{p.stem}={p}" for p in sorted(genomes.glob("*.fa"))]),
                      (("--out",), out / "classify-species")],
            # 6-mer embeddings (--ngram 6) pick up the lineages' repeat families; with the
            # other jobs' 60 steps of 8 windows, and no n-gram embedding, it predicted one
            # species for every window. From scratch: one wider layer learns faster here
            # than pretrain-genome's model would fine-tune.
            tuning=_training(4 * steps, 256, 16, device, seed, d_model=64, n_layer=1)
            + [(("--causal",), True), (("--ngram",), 6), (("--kmer",), 3)]),
        "train-audio": Job(
            "train-audio",
            required=[(("--data", "--audio-dir", "--data-dir", "--wav-dir"), audio),
                      (("--out",), out / "train-audio")],
            tuning=_training(steps, 1024, 4, device, seed)),
        "generate-audio": Job(
            "generate-audio",
            required=[(("--model", "--model-dir", "--checkpoint"), out / "train-audio" / "model"),
                      (("--out",), out / "generate-audio")],
            tuning=[(("--n-clips", "--num-clips", "--clips"), 2),
                    (("--seconds", "--duration"), 0.5), (("--device",), device),
                    (("--seed",), seed)],
            needs="train-audio"),
    }


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


# The figures of a job's report.json that demo.json repeats.
FIGURES = {"classify-species": ("accuracy", "baseline_accuracy", "chance"),
           "pretrain-genome": ("val",)}


def job_figures(job_out: Path, name: str) -> dict:
    """{"figures": {...}} from ``job_out/report.json`` (empty when there is none)."""
    report = job_out / "report.json"
    if name not in FIGURES or not report.is_file():
        return {}
    data = json.loads(report.read_text())
    return {"figures": {k: data[k] for k in FIGURES[name] if k in data}}


def job_argv(job: Job) -> list[str]:
    """``[command, --option, value, ...]`` for ``job``, using the options its parser takes.

    Raises:
        cli.CommandUnavailable: the subcommand cannot be loaded.
        ValueError: the subcommand takes none of a required option's names.
    """
    parser = cli.build_parser(job.command, cli.load_command(job.command))
    known = parser._option_string_actions
    argv = [job.command]
    for candidates, value in job.required + job.tuning:
        name = next((c for c in candidates if c in known), None)
        if name is None and (candidates, value) in job.required:
            raise ValueError(f"{job.command} takes none of {', '.join(candidates)}; "
                             "update pipelines/cmd_demo.py")
        if name is None:
            continue
        if value is True:
            argv.append(name)
        elif isinstance(value, (list, tuple)):
            argv += [name, *map(str, value)]
        else:
            argv += [name, str(value)]
    return argv


def run(args) -> int:
    out = Path(args.out)
    selected = [j.strip() for j in args.jobs.split(",") if j.strip()]
    unknown = sorted(set(selected) - set(JOBS))
    if unknown:
        raise ValueError(f"--jobs: unknown job(s) {', '.join(unknown)}; choose from {', '.join(JOBS)}")
    t0 = time.perf_counter()
    print(f"[demo] generating data under {out / 'data'}", flush=True)
    make_data(out, args.seed)
    results = {}
    for name in selected:
        job, started = plan(out, args.steps, args.device, args.seed)[name], time.perf_counter()
        if (out / name / "checkpoints").is_dir():  # a demo run again continues (or just ends)
            job.tuning.append((("--resume",), True))
        if job.needs and results.get(job.needs, {}).get("status", "ok") != "ok":
            results[name] = {"status": f"skipped: {job.needs} did not succeed"}
        else:
            try:
                argv = job_argv(job)
            except (cli.CommandUnavailable, ValueError) as e:
                results[name] = {"status": f"unavailable: {e}"}
            else:
                print(f"\n[demo] mambaseq {' '.join(argv)}", flush=True)
                try:
                    code = cli.main(argv)
                except SystemExit as e:  # argparse rejected the options
                    code = e.code if isinstance(e.code, int) else 2
                results[name] = {"status": "ok" if code == 0 else f"failed (exit code {code})",
                                 "argv": argv, "seconds": round(time.perf_counter() - started, 1),
                                 "out": str(out / name), **job_figures(out / name, name)}
        print(f"[demo] {name}: {results[name]['status']}", flush=True)
    (out / "demo.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n[demo] finished in {time.perf_counter() - t0:.0f} s; summary in {out / 'demo.json'}")
    for name, r in results.items():
        print(f"  {name:<18}{r['status']:<12}{r.get('seconds', '')}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1
