"""What every benchmark shares: machine description, timing, isolated runs, JSON/Markdown/PNG.

Timing rule (issue 8): one or more warm-up calls, then ``repeats`` timed calls; the median is
the figure, every raw time is kept in the JSON, and ratios are taken between measurements
made in the same run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

__all__ = ["bench_parser", "machine_info", "time_call", "peak_rss_gb", "run_isolated", "write_results",
           "markdown_table", "loglog_slope", "loglog_plot", "fmt"]


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info(device="cpu"):
    """The machine and software a result was measured on, including the load average (the
    CPU may be shared with other jobs, which slows every figure down)."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
                cpu=_cpu_model(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                memory_gb=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
                load_average_1_5_15=list(os.getloadavg()), python=platform.python_version(),
                torch=torch.__version__, triton=triton_version, platform=platform.platform(),
                git_commit=_git_commit(), device=device,
                gpu=torch.cuda.get_device_name() if device == "cuda" else None)
    return info


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, repeats=5, warmup=1, device="cpu"):
    """Median seconds of ``fn()`` over ``repeats`` timed calls after ``warmup`` untimed ones.

    Returns:
        dict(median_s, raw_s (list of every timed call), warmup, repeats).
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    raw = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        raw.append(time.perf_counter() - start)
    return dict(median_s=statistics.median(raw), raw_s=raw, warmup=warmup, repeats=repeats)


def peak_rss_gb():
    """Peak resident memory of this process so far, in GiB.

    Linux's VmHWM, not ``getrusage``'s ru_maxrss: the latter survives exec, so a child
    started by a big parent reports the parent's peak (seen here: 2 GB for a 0.6 GB run).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20                    # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def run_isolated(module, args, timeout=None):
    """Run ``python -m module *args`` in a fresh process (so that its peak RSS is its own)
    and return the JSON object it prints on its last stdout line.

    Raises:
        RuntimeError: the process failed; the message holds its last stderr lines.
    """
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{module} {' '.join(map(str, args))} failed "
                           f"(exit {proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(x, digits=3):
    """A number for a Markdown cell: 3 significant digits, '-' for None."""
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0 or not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"
    return str(x)


def markdown_table(header, rows):
    """Markdown table from a header list and rows of cells (already formatted or numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(meta):
    load = ", ".join(f"{x:.1f}" for x in meta["load_average_1_5_15"])
    return (f"Machine: {meta['cpu']}, {meta['cpu_count']} cores, torch {meta['torch']} "
            f"({meta['torch_threads']} threads), load average {load}"
            + (f", GPU {meta['gpu']}" if meta.get("gpu") else "") + f"; {meta['date']}.")


def write_results(out, name, data, markdown):
    """Write ``out/name.json`` (data, indented) and ``out/name.md``; returns both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def loglog_slope(xs, ys):
    """Least-squares slope of log(y) against log(x) (1 = linear scaling)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx if sxx else float("nan")


def loglog_plot(path, panels, title=None):
    """Save a PNG of log-log panels: ``panels`` is a list of dict(ylabel, xlabel, series) with
    series = {label: (xs, ys)}. A dotted slope-1 guide is drawn through each first series."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, (label, (xs, ys)) in enumerate(panel["series"].items()):
            ax.loglog(xs, ys, "o-", label=label, base=2)
            if i == 0 and xs:
                ax.loglog(xs, [ys[0] * x / xs[0] for x in xs], ":", color="grey",
                          label="slope 1", base=2)
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def bench_parser(doc, add_arguments, single_metavar=None):
    """The parser of ``python -m mambaseq.bench.NAME``: the options every benchmark shares, then the
    benchmark's own (``add_arguments``). ``single_metavar`` adds the hidden ``--single A B``
    that runs one case in a fresh process (see ``run_isolated``)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, a few minutes on a CPU")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="bench/results")
    if single_metavar:
        p.add_argument("--single", nargs=2, metavar=single_metavar, help=argparse.SUPPRESS)
    add_arguments(p)
    return p
