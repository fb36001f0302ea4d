"""Loss curves of a run, drawn from its ``metrics.jsonl`` into a PNG (no display needed)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` file; a torn last line (killed writer) is skipped."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_metrics(metrics_path: str | os.PathLike, png_path: str | os.PathLike) -> Path | None:
    """Plot training ``loss`` and validation ``val_loss`` against ``step``.

    Args:
        metrics_path: a ``metrics.jsonl`` with records like ``{"step": 10, "loss": 2.3}``
            and ``{"step": 100, "val_loss": 2.1}``.
        png_path: where the PNG goes.
    Returns:
        ``png_path``, or None when there is nothing to plot.

    >>> records = [{"step": 10, "loss": 2.3}, {"step": 20, "loss": 2.0},
    ...            {"step": 20, "val_loss": 2.1}]
    >>> _ = Path("metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in records))
    >>> png = plot_metrics("metrics.jsonl", "loss.png"); png.name, png.read_bytes()[1:4]
    ('loss.png', b'PNG')
    >>> plot_metrics("no-such-run/metrics.jsonl", "empty.png") is None   # nothing to plot
    True
    """
    # Figure + Agg canvas instead of pyplot: no global state, no display, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)
    curves = {key: [(r["step"], r[key]) for r in records if key in r and "step" in r]
              for key in ("loss", "val_loss")}
    if not any(curves.values()):
        return None
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, label, style in (("loss", "train loss", "-"), ("val_loss", "validation loss", "o-")):
        if curves[key]:
            steps, values = zip(*curves[key])
            ax.plot(steps, values, style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=120)
    return png_path
