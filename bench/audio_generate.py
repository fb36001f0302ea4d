"""Audio generation benchmark: the SaShiMi-Mamba ``AudioLM``'s recurrent step against its full
forward.

    python -m mambaseq.bench.audio_generate [--quick] [--preset paper] [--sample-rate 16000] \
        [--seconds 1] [--batch 1] [--baseline /tmp/base-step] [--out bench/results]

On one model (the preset with random weights, or ``--model DIR``: a step costs the same
whatever the weights), it measures:

- agreement: max |step logits - forward logits| over the first ``--check`` samples of a
  random clip fed by teacher forcing; the clip spans many windows of every pooled level, so
  the pooled stages (which step only every p, p*q samples) are checked too;
- generation of ``--seconds`` of audio at ``--sample-rate``, one ``AudioLM.step`` per sample
  (``mamba_audio.sampler.generate``): the time of every step, and the mean of the last 1000
  over the first 1000 (about 1: a step's cost does not grow along the clip);
- with ``--baseline CHECKOUT``: ms per sample of ``AudioLM.step`` here and in an older
  checkout, same weights and threads, the same greedy loop (argmax fed back) timed on both
  sides, the older one in a child process (``bench.baseline``);
- the alternative, re-running the full forward over the t samples so far for every new
  sample: forward time at several t up to the clip length, each against the mean step
  time, and the whole clip's re-run cost integrated over t (piecewise linear in t through
  0 at t = 0, an underestimate) against the generation's total time.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from mambaseq.bench.baseline import time_baseline_step, time_wall_and_cpu
from mambaseq.bench.report import (bench_parser, fmt, machine_info, machine_line, markdown_table,
                                   time_call, write_results)
from mambaseq.mamba_audio.model import AudioLM
from mambaseq.mamba_audio.sampler import generate

QUICK = dict(preset="small", seconds=0.25, check=2000, forward_points=3, repeats=2)
FULL = dict(preset="paper", seconds=1.0, check=4000, forward_points=5, repeats=3)
EDGE = 1000            # samples averaged at each end of the clip for the constant-time check


@torch.no_grad()
def step_vs_forward(model, n_samples, seed=0):
    """Max |step logits - forward logits| and the logits' scale over ``n_samples`` samples."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.quantizer.n_classes, (1, n_samples), generator=gen)
    full = model(tokens)[0]                                               # (L, C)
    cache = model.allocate_cache(1)
    stepped = torch.stack([model.step(tokens[:, t], cache)[0] for t in range(n_samples)])
    return float((stepped - full).abs().max()), float(full.abs().max())


@torch.no_grad()
def forward_times(model, lengths, batch, repeats):
    """Median seconds of ``model(tokens (batch, t))`` for each t in ``lengths``."""
    out = {}
    for t in lengths:
        tokens = torch.randint(0, model.quantizer.n_classes, (batch, t))
        out[t] = time_call(lambda: model(tokens), repeats=repeats)["median_s"]
        print(f"  forward over {t} samples: {out[t]:.3f} s", flush=True)
    return out


@torch.no_grad()
def greedy_step_seconds(model, batch, samples, repeats):
    """Wall and CPU seconds of ``samples`` greedy steps (argmax fed back) from a warmed cache,
    ``repeats`` times (``bench.baseline.timing``): the loop ``bench.baseline`` runs on an
    older checkout."""
    cache = model.allocate_cache(batch)
    tok = torch.zeros(batch, dtype=torch.long)

    def run():
        nonlocal tok
        for _ in range(samples):
            tok = model.step(tok, cache).argmax(-1)
    return time_wall_and_cpu(run, repeats)


def rerun_cost(times, n_samples):
    """Seconds to re-run the forward over samples [0, t) for every t in 1..n_samples, with
    the forward time interpolated linearly between the measured lengths and from 0 s at
    t = 0 (which leaves out the fixed cost of a call: an underestimate)."""
    ts = [0, *sorted(times)]
    per_t = np.interp(np.arange(1, n_samples + 1), ts, [0.0, *(times[t] for t in ts[1:])])
    return float(per_t.sum())


def run(args):
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model = AudioLM.from_pretrained(args.model)
        rate = model.sample_rate
    else:
        torch.manual_seed(0)
        rate = args.sample_rate
        model = AudioLM.from_preset(args.preset, sample_rate=rate)
    model.eval()
    n_samples = int(round(args.seconds * rate))
    params = sum(p.numel() for p in model.parameters())
    print(f"audio generate: {args.model or args.preset} ({params:,} params), "
          f"{n_samples} samples at {rate} Hz, batch {args.batch}", flush=True)

    max_diff, scale = step_vs_forward(model, min(args.check, n_samples))
    versus = None
    if args.baseline:
        steps_n = min(args.baseline_samples, n_samples)
        ours = greedy_step_seconds(model, args.batch, steps_n, args.repeats)
        base = time_baseline_step(args.baseline, "audio", model, args.batch, steps_n,
                                  args.repeats)
        versus = dict(checkout=args.baseline, samples=steps_n, repeats=args.repeats,
                      ours_ms=ours["median_s"] / steps_n * 1e3,
                      base_ms=base["median_s"] / steps_n * 1e3,
                      ours_cpu_ms=ours["cpu_median_s"] / steps_n * 1e3,
                      base_cpu_ms=base["cpu_median_s"] / steps_n * 1e3, ours=ours, base=base)
        versus["speedup"] = versus["base_cpu_ms"] / versus["ours_cpu_ms"]
        print(f"  step per sample: {versus['ours_cpu_ms']:.2f} ms CPU vs "
              f"{versus['base_cpu_ms']:.2f} in {args.baseline}: {versus['speedup']:.1f}x",
              flush=True)
    gen = generate(model, args.batch, n_samples, top_p=0.95, seed=0, progress=args.progress)
    steps = gen.step_seconds.numpy()
    edge = min(EDGE, n_samples // 2)
    first, last = float(steps[:edge].mean()), float(steps[-edge:].mean())
    mean_step = float(steps.mean())
    lengths = sorted({int(n_samples * (i + 1) / args.forward_points)
                      for i in range(args.forward_points)})
    fwd = forward_times(model, lengths, args.batch, args.repeats)
    rerun = rerun_cost(fwd, n_samples)
    result = dict(
        model=str(args.model or args.preset), parameters=params, sample_rate=rate,
        n_samples=n_samples, batch=args.batch, check_samples=min(args.check, n_samples),
        step_vs_forward_max_abs_diff=max_diff, forward_logit_max_abs=scale,
        generation_seconds=float(steps.sum()), samples_per_second=gen.samples_per_second,
        step_ms_mean=mean_step * 1e3, step_ms_first=first * 1e3, step_ms_last=last * 1e3,
        edge_samples=edge, last_over_first=last / first,
        forward_seconds={str(t): s for t, s in fwd.items()},
        forward_over_step={str(t): s / mean_step for t, s in fwd.items()},
        rerun_seconds_estimate=rerun, rerun_over_generation=rerun / float(steps.sum()),
        threads=torch.get_num_threads(), versus_baseline=versus, meta=machine_info("cpu"))
    md = markdown(result)
    write_results(args.out, args.name, result, md)
    print(md)
    return result


def markdown(r):
    rows = [[t, r["forward_seconds"][t], r["forward_over_step"][t]] for t in r["forward_seconds"]]
    return "\n".join([
        f"### Audio generation: {r['model']} AudioLM ({r['parameters']:,} params), "
        f"{r['n_samples']} samples at {r['sample_rate']} Hz, batch {r['batch']}", "",
        f"- step vs forward (teacher forcing, {r['check_samples']} samples, pooled stages "
        f"included): max |logit diff| {fmt(r['step_vs_forward_max_abs_diff'])} "
        f"(logits up to {fmt(r['forward_logit_max_abs'])})",
        f"- generation: {r['generation_seconds']:.1f} s, {r['samples_per_second']:.0f} samples/s, "
        f"{r['step_ms_mean']:.2f} ms/step; first {r['edge_samples']} steps "
        f"{r['step_ms_first']:.2f} ms, last {r['edge_samples']} {r['step_ms_last']:.2f} ms: "
        f"last/first **{r['last_over_first']:.2f}**",
        *([versus_line(r["versus_baseline"], r)] if r.get("versus_baseline") else []),
        f"- re-running the full forward for every sample instead: about "
        f"{r['rerun_seconds_estimate']:.0f} s for the clip, **{r['rerun_over_generation']:.0f}x** "
        f"the generation's time", "",
        markdown_table(["forward over t samples", "seconds", "x one step"], rows), "",
        machine_line(r["meta"]), ""])


def versus_line(v, r):
    """The Markdown line of the --baseline comparison."""
    return (f"- step per sample, greedy loop, batch {r['batch']}, {r['threads']} thread(s): "
            f"{v['ours_cpu_ms']:.2f} ms CPU ({v['ours_ms']:.2f} wall) here vs "
            f"{v['base_cpu_ms']:.2f} ms CPU ({v['base_ms']:.2f} wall) in {v['checkout']} "
            f"(same weights, {v['samples']} samples per timing, median of {v['repeats']}): "
            f"**{v['speedup']:.1f}x** in CPU time")


def add_arguments(p):
    p.add_argument("--preset", default=None, help="AudioLM preset (default: paper; quick: small)")
    p.add_argument("--model", default=None, metavar="DIR", help="a trained model instead")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--seconds", type=float, default=None, help="length generated")
    p.add_argument("--batch", type=int, default=1, help="clips generated together")
    p.add_argument("--check", type=int, default=None, help="samples of the step == forward check")
    p.add_argument("--forward-points", type=int, default=None,
                   help="clip lengths at which the full forward is timed")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--progress", action="store_true", help="progress bar while generating")
    p.add_argument("--baseline", default=None, metavar="CHECKOUT",
                   help="also time AudioLM.step of an older source checkout, same weights")
    p.add_argument("--baseline-samples", type=int, default=1024,
                   help="samples per timing of the --baseline comparison")
    p.add_argument("--name", default="audio_generate", help="result file name")


def main(argv=None):
    args = bench_parser(__doc__, add_arguments).parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
