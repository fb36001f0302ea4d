"""Options shared by every training subcommand, and the ``TrainConfig`` they parse into.

A training subcommand's ``add_arguments`` calls ``add_training_args(parser)``, then adds its
own options; it may change a shared default with ``parser.set_defaults(seq_len=16000)``
(the help then shows the new default). ``run(args)`` builds ``TrainConfig.from_args(args)``
and hands it to ``pipelines.trainer.train``.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, fields


def parse_seq_len_schedule(text: str) -> tuple[tuple[int, int, int], ...]:
    """Parse ``"100:1024:8,200:4096:2"`` into ``((100, 1024, 8), (200, 4096, 2))``.

    Each stage is ``steps:seq_len:batch_size``: the first 100 optimizer steps use sequences
    of 1024 in batches of 8, the next 200 use 4096 x 2, and the steps after the last stage
    use ``--seq-len`` x ``--batch-size``. An empty string means no warmup stages.

    Raises:
        ValueError: a stage that is not three positive integers.
    """
    stages = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            steps, seq_len, batch_size = (int(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(f"sequence-length stage {part!r} is not steps:seq_len:batch_size "
                             "(three integers, e.g. 100:1024:8)") from None
        if min(steps, seq_len, batch_size) <= 0:
            raise ValueError(f"sequence-length stage {part!r} must have positive numbers")
        stages.append((steps, seq_len, batch_size))
    return tuple(stages)


def _schedule_arg(text: str) -> str:
    """argparse type: validates a schedule early and keeps it as text (so it saves to JSON)."""
    try:
        parse_seq_len_schedule(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# argparse types: a bad value is refused with the option's name by argparse itself.

def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type: a share strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def regex(text: str) -> str:
    """argparse type: a valid Python regular expression (kept as text)."""
    try:
        re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"not a valid regular expression: {err}") from None
    return text


# Options that may differ on --resume: they change how long the run goes, what it writes or
# the memory it takes, not what it learns from (every other option must be the run's own).
RESUME_MAY_CHANGE = ("steps", "save_every", "eval_every", "log_every", "keep_last",
                     "early_stop", "device", "grad_checkpoint")
_NOT_AN_OPTION_OF_THE_RUN = ("resume", "out", "command")   # the folder may have moved


def check_resume_options(saved: dict, now: dict, where) -> None:
    """Refuse a resume whose options differ from the run's own, except ``RESUME_MAY_CHANGE``.

    Args:
        saved: the options the run was started with (its config.json / train_config.json).
        now: the options of this invocation, same keys (dest names).
        where: the file ``saved`` comes from, for the message.
    Raises:
        ValueError: naming the first option that changed, both values and the file.
    """
    for key in sorted(set(saved) & set(now)):   # an option added since is not a change
        if (key in RESUME_MAY_CHANGE or key in _NOT_AN_OPTION_OF_THE_RUN
                or saved.get(key) == now.get(key)):
            continue
        option = "--" + key.replace("_", "-")
        raise ValueError(f"--resume: {option} is {now.get(key)!r} but the run in {where} used "
                         f"{saved.get(key)!r}; resume with the run's own options (only "
                         f"{', '.join('--' + k.replace('_', '-') for k in RESUME_MAY_CHANGE)} "
                         "may change) or start a new run in another --out")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (refuses nan and inf)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Add the options every training subcommand shares (an argument group "training")."""
    g = parser.add_argument_group("training")
    g.add_argument("--out", metavar="DIR", required=True,
                   help="output directory: config.json, metrics.jsonl, loss.png, "
                        "checkpoints/, model/")
    g.add_argument("--steps", type=positive_int, default=1000, metavar="N",
                   help="optimizer steps in the whole run")
    g.add_argument("--batch-size", type=positive_int, default=8,
                   help="sequences per micro-batch on each process")
    g.add_argument("--seq-len", type=positive_int, default=1024,
                   help="tokens (or samples) per training sequence")
    g.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate of AdamW")
    g.add_argument("--weight-decay", type=float, default=0.1,
                   help="AdamW weight decay (never applied to norms, biases, A_log, D)")
    g.add_argument("--warmup-steps", type=non_negative_int, default=100,
                   help="linear learning-rate warmup steps, then cosine decay")
    g.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="learning rate at the end of the cosine, as a fraction of --lr")
    g.add_argument("--grad-clip", type=float, default=1.0,
                   help="clip the global gradient norm to this (0 = no clipping)")
    g.add_argument("--grad-accum", type=positive_int, default=1,
                   help="micro-batches accumulated per optimizer step")
    g.add_argument("--d-model", type=positive_int, default=128, help="model width D")
    g.add_argument("--n-layer", type=positive_int, default=4, help="number of Mamba layers")
    g.add_argument("--save-every", type=non_negative_int, default=500, metavar="N",
                   help="write a checkpoint every N steps (0 = only at the end)")
    g.add_argument("--eval-every", type=non_negative_int, default=500, metavar="N",
                   help="validate every N steps and at the end (0 = only at the end)")
    g.add_argument("--keep-last", type=positive_int, default=3, metavar="K",
                   help="keep the K newest checkpoints (plus the best one)")
    g.add_argument("--early-stop", type=non_negative_int, default=0, metavar="P",
                   help="stop after P validations without a better val_loss (0 = never)")
    g.add_argument("--log-every", type=positive_int, default=10, metavar="N",
                   help="append averaged training metrics to metrics.jsonl every N steps")
    g.add_argument("--seed", type=int, default=0, help="seed of the model init, data and dropout")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = cuda when available, else cpu")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast dtype; auto = bf16 on GPUs that support it (else fp16), "
                        "fp32 on CPU")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --out/checkpoints, with the "
                        "run's own options: only --steps, --save-every, --eval-every, "
                        "--log-every, --keep-last, --early-stop, --device and "
                        "--grad-checkpoint may change")
    g.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute each Mamba block's activations in the backward pass "
                        "instead of storing them (less memory at long --seq-len; one more "
                        "forward per block: x1.65 the step time measured on a CPU)")
    g.add_argument("--seq-len-schedule", type=_schedule_arg, default="", metavar="STAGES",
                   help="sequence-length warmup, comma-separated steps:seq_len:batch_size "
                        "stages run before --seq-len x --batch-size, e.g. "
                        "'100:1024:8,200:4096:2'")


_FIELD_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


@dataclass
class TrainConfig:
    """Everything the training loop needs; built from the parsed command line.

    ``d_model`` and ``n_layer`` are not used by the loop: they are here so that the saved
    training config records the model size the subcommand built.
    """
    out: str
    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    d_model: int = 128
    n_layer: int = 4
    save_every: int = 500
    eval_every: int = 500
    keep_last: int = 3
    early_stop: int = 0
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    resume: bool = False
    seq_len_schedule: tuple[tuple[int, int, int], ...] = ()  # ((steps, seq_len, batch_size), ...)
    grad_checkpoint: bool = False     # per-block activation checkpointing in the backbone

    def __post_init__(self):
        if isinstance(self.seq_len_schedule, str):
            self.seq_len_schedule = parse_seq_len_schedule(self.seq_len_schedule)
        self.seq_len_schedule = tuple(tuple(int(x) for x in s) for s in self.seq_len_schedule)
        for f in fields(self):
            value, kind = getattr(self, f.name), _FIELD_TYPES.get(f.type)
            if kind is not None and (isinstance(value, bool) != (kind is bool)
                                     or not isinstance(value, kind)):
                raise ValueError(f"TrainConfig.{f.name} must be {f.type}, got {value!r}")
        if self.steps <= 0 or self.batch_size <= 0 or self.seq_len <= 0 or self.grad_accum <= 0:
            raise ValueError("steps, batch_size, seq_len and grad_accum must be positive")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        """Take every field that ``args`` has (others keep their defaults); ignore the rest."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def shape_at(self, step: int) -> tuple[int, int]:
        """``(seq_len, batch_size)`` of optimizer step ``step`` (0-based) under the schedule."""
        end = 0
        for stage_steps, seq_len, batch_size in self.seq_len_schedule:
            end += stage_steps
            if step < end:
                return seq_len, batch_size
        return self.seq_len, self.batch_size
