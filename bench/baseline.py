"""Time the recurrent step of an older checkout beside this one, in the same benchmark run.

    from mambaseq.bench.baseline import time_baseline_step
    raw = time_baseline_step("/tmp/base-step", "lm", lm, batch=1, tokens=16, repeats=5)

The older checkout (e.g. ``git worktree add /tmp/base-step c6272ea``) runs in a child Python
with ``PYTHONPATH`` set to it, so both versions import as ``mambaseq`` without clashing; the
child builds the same model class from the same config (through the older checkout's
constructor: keyword arguments before the configs redesign, its config since), loads the very
same weights, sets the same number of threads and times greedy decoding exactly as the parent
times its own (argmax fed back, one ``step`` per token).

Both clocks are kept: wall time, and the process's CPU time, which on a shared machine
leaves out the time the scheduler gave to other processes (a one-thread run's CPU time is
its wall time on an idle machine); ``median_s`` is wall, ``cpu_median_s`` CPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CHILD = r"""
import inspect, json, sys, time, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
if args["kind"] == "lm":
    from mambaseq.core import MambaLM as cls
else:
    from mambaseq.mamba_audio.model import AudioLM as cls
config = args["config"]
if "config" in inspect.signature(cls.__init__).parameters:      # Model(config) checkouts
    model = cls(cls.config_class(**config))
else:                                                          # Model(**arguments) checkouts
    # the level width growth was called "expand" before it was "width_growth"
    config = {("expand" if k == "width_growth" else k): v for k, v in config.items()}
    known = inspect.signature(cls.__init__).parameters
    model = cls(**{k: v for k, v in config.items() if k in known})
model.eval()
model.load_state_dict(torch.load(args["weights"], weights_only=True))
torch.manual_seed(0)
with torch.no_grad():
    cache = model.allocate_cache(args["batch"])
    if args["random_state"]:
        for s in getattr(cache, "layers", cache):    # a list of block states before InferenceCache
            s.ssm.normal_(std=0.1)
            s.conv.normal_()
    tok = torch.zeros(args["batch"], dtype=torch.long)
    for _ in range(args["warmup"] * args["tokens"]):   # as time_wall_and_cpu's warmup call
        tok = model.step(tok, cache).argmax(-1)
    wall, cpu = [], []
    for _ in range(args["repeats"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(args["tokens"]):
            tok = model.step(tok, cache).argmax(-1)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
import mambaseq.core
print(json.dumps(dict(wall=wall, cpu=cpu, source=mambaseq.core.__file__)))
"""


def timing(wall, cpu, warmup=1):
    """The timing dict of the benchmarks from raw wall and CPU seconds."""
    return dict(median_s=statistics.median(wall), raw_s=wall,
                cpu_median_s=statistics.median(cpu), cpu_raw_s=cpu, warmup=warmup,
                repeats=len(wall))


def time_wall_and_cpu(fn, repeats, warmup=1):
    """Wall and CPU seconds of ``fn()`` over ``repeats`` calls after ``warmup`` (``timing``)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return timing(wall, cpu, warmup)


def time_baseline_step(checkout, kind, model, batch, tokens, repeats, warmup=1,
                       random_state=None):
    """Seconds of ``tokens`` greedy steps of ``model``'s class as the older ``checkout`` has
    it, with ``model``'s weights, ``repeats`` times (a ``timing`` dict: wall and CPU).

    Args:
        checkout (str): a source checkout of mambaseq (its root folder).
        kind (str): "lm" (``core.MambaLM``) or "audio" (``mamba_audio.model.AudioLM``).
        model: this checkout's model; its config and state_dict are handed over.
        random_state (bool): start from a random recurrent state (default: for "lm").
    Raises:
        RuntimeError: the child failed; the message holds its last lines.
    """
    root = Path(checkout)
    if not (root / "mambaseq" / "__init__.py").is_file():
        raise ValueError(f"--baseline {checkout}: not a mambaseq checkout "
                         "(no mambaseq/__init__.py)")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pt"
        torch.save(model.state_dict(), weights)
        args = dict(kind=kind, config=dataclasses.asdict(model.config), weights=str(weights),
                    batch=batch, tokens=tokens, repeats=repeats, warmup=warmup,
                    threads=torch.get_num_threads(),
                    random_state=kind == "lm" if random_state is None else random_state)
        env = dict(os.environ, PYTHONPATH=str(root))
        # cwd: `python -c` puts the working folder first on sys.path, before PYTHONPATH;
        # from any other checkout it would import that checkout's mambaseq
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env,
                              cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise RuntimeError(f"baseline step in {checkout} failed:\n{tail}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(raw["source"]).resolve().parents[1] != root.resolve():
        raise RuntimeError(f"baseline child imported {raw['source']}, not {checkout}")
    return timing(raw["wall"], raw["cpu"], warmup)
