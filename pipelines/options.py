"""Options shared by every training subcommand, and the ``TrainConfig`` they parse into.

Every numeric option and config field has a ``Number`` rule (kind, range, finite): the
option's argparse type and the field's check in ``__post_init__`` are the same object.

A training subcommand's ``add_arguments`` calls ``add_training_args(parser)``, then adds its
own options; it may change a shared default with ``parser.set_defaults(seq_len=16000)``
(the help then shows the new default). ``run(args)`` builds ``TrainConfig.from_args(args)``
and hands it to ``pipelines.trainer.train``.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field, fields


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


class Number:
    """The rule of a numeric option or config field: its kind (int or float) and its range.

    One object serves both the command line and the configs: called on the text of an
    option it is an argparse ``type`` (argparse refuses a bad value naming the option, and
    ``--config`` files go through it too); ``check(value, where)`` applies the same rule to
    a value a Python caller set, e.g. in a config dataclass's ``__post_init__``. A float must
    be finite (nan and inf are refused); an int must be an int (a bool is not).

    Args:
        name: the name argparse shows for the type (``invalid positive_int value``).
        kind: ``int`` or ``float``.
        low, high: the bounds (None: unbounded on that side).
        low_open, high_open: the bound itself is excluded.
        what: the description in messages ("a positive integer"); default from the range.
    """

    def __init__(self, name: str, kind: type, low=None, high=None, *, low_open: bool = False,
                 high_open: bool = False, what: str | None = None):
        self.__name__, self.kind = name, kind
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.what = what or self._describe()

    def _describe(self) -> str:
        noun = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            return (f"{noun} in {'(' if self.low_open else '['}{self.low}, "
                    f"{self.high}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high}"
        return noun

    def fits(self, value) -> bool:
        """Whether ``value`` (a Python number) follows the rule."""
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int
                                                     else (int, float)):
            return False
        if self.kind is float and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return self.high is None or not (value > self.high
                                         or self.high_open and value == self.high)

    def check(self, value, where: str):
        """``value`` unchanged, or ValueError "``where`` must be <rule>, got <value>"."""
        if not self.fits(value):
            raise ValueError(f"{where} must be {self.what}, got {value!r}")
        return value

    def __call__(self, text: str):
        """argparse type: the text as ``kind``, refused when it breaks the rule."""
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if value is None or not self.fits(value):
            raise argparse.ArgumentTypeError(f"must be {self.what}, got {text}")
        return value

    def __repr__(self) -> str:
        return f"<{self.__name__}: {self.what}>"


# The rules options and configs share (argparse types as well, see ``Number``).
positive_int = Number("positive_int", int, 1, what="a positive integer")
non_negative_int = Number("non_negative_int", int, 0)
positive_float = Number("positive_float", float, 0, low_open=True)
non_negative_float = Number("non_negative_float", float, 0)
fraction = Number("fraction", float, 0, 1, low_open=True, high_open=True)   # a share, (0, 1)
share = Number("share", float, 0, 1)                                        # [0, 1]
share_below_one = Number("share_below_one", float, 0, 1, high_open=True)    # [0, 1)
probability_mass = Number("probability_mass", float, 0, 1, low_open=True)  # (0, 1]
seed_int = Number("seed_int", int, 0, 2 ** 32 - 1)        # numpy's seed range
quantizer_bits = Number("quantizer_bits", int, 1, 16)     # mamba_audio.quantize's range


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


def check_resume_split(saved: list[str], now: list[str], where, inputs: str) -> None:
    """Refuse a resume whose split, derived again from its inputs, is not the run's own.

    Args:
        saved: the split the run started with, one line per item (a region, a file), as
            read from ``where``.
        now: the same lines derived from the inputs of this invocation.
        where: the run's split file, for the message.
        inputs: the options the split comes from ("--fasta/--bed"), for the message.
    Raises:
        ValueError: naming an item that left the split or joined it, and the counts.
    """
    if saved == now:
        return
    gone, new = set(saved) - set(now), set(now) - set(saved)
    change = "; ".join(
        [f"{len(gone)} gone, e.g. {min(gone)}"] * bool(gone)
        + [f"{len(new)} new, e.g. {min(new)}"] * bool(new)) or "the same items in another order"
    raise ValueError(f"--resume: the split derived from {inputs} is not the run's own {where} "
                     f"({change}); the inputs changed since the run started: restore them, or "
                     "start a new run in another --out")


def _rule(name: str) -> Number:
    """The ``Number`` rule of ``TrainConfig.<name>``: the type of its command-line option."""
    return TrainConfig.__dataclass_fields__[name].metadata["rule"]


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Add the options every training subcommand shares (an argument group "training");
    the numeric ones take their rule (type and range) from ``TrainConfig``'s fields."""
    g = parser.add_argument_group("training")
    g.add_argument("--out", metavar="DIR", required=True,
                   help="output directory: config.json, metrics.jsonl, loss.png, "
                        "checkpoints/, model/")
    g.add_argument("--steps", type=_rule("steps"), default=1000, metavar="N",
                   help="optimizer steps in the whole run")
    g.add_argument("--batch-size", type=_rule("batch_size"), default=8,
                   help="sequences per micro-batch on each process")
    g.add_argument("--seq-len", type=_rule("seq_len"), default=1024,
                   help="tokens (or samples) per training sequence")
    g.add_argument("--lr", type=_rule("lr"), default=1e-3, help="peak learning rate of AdamW")
    g.add_argument("--weight-decay", type=_rule("weight_decay"), default=0.1,
                   help="AdamW weight decay (never applied to norms, biases, A_log, D)")
    g.add_argument("--warmup-steps", type=_rule("warmup_steps"), default=100,
                   help="linear learning-rate warmup steps, then cosine decay")
    g.add_argument("--min-lr-ratio", type=_rule("min_lr_ratio"), default=0.1,
                   help="learning rate at the end of the cosine, as a fraction of --lr (0 to 1)")
    g.add_argument("--grad-clip", type=_rule("grad_clip"), default=1.0,
                   help="clip the global gradient norm to this (0 = no clipping)")
    g.add_argument("--grad-accum", type=_rule("grad_accum"), default=1,
                   help="micro-batches accumulated per optimizer step")
    g.add_argument("--d-model", type=_rule("d_model"), default=128, help="model width D")
    g.add_argument("--n-layer", type=_rule("n_layer"), default=4, help="number of Mamba layers")
    g.add_argument("--save-every", type=_rule("save_every"), default=500, metavar="N",
                   help="write a checkpoint every N steps (0 = only at the end)")
    g.add_argument("--eval-every", type=_rule("eval_every"), default=500, metavar="N",
                   help="validate every N steps and at the end (0 = only at the end)")
    g.add_argument("--keep-last", type=_rule("keep_last"), default=3, metavar="K",
                   help="keep the K newest checkpoints (plus the best one)")
    g.add_argument("--early-stop", type=_rule("early_stop"), default=0, metavar="P",
                   help="stop after P validations without a better val_loss (0 = never)")
    g.add_argument("--log-every", type=_rule("log_every"), default=10, metavar="N",
                   help="append averaged training metrics to metrics.jsonl every N steps")
    g.add_argument("--seed", type=_rule("seed"), default=0,
                   help="seed of the model init, data and dropout")
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


def _ruled(default, rule: Number):
    """A config field whose values must follow ``rule`` (checked in ``__post_init__``; the
    command line uses ``rule`` as the option's type)."""
    return field(default=default, metadata={"rule": rule})


@dataclass
class TrainConfig:
    """Everything the training loop needs; built from the parsed command line.

    ``d_model`` and ``n_layer`` are not used by the loop: they are here so that the saved
    training config records the model size the subcommand built.
    """
    out: str
    steps: int = _ruled(1000, positive_int)
    batch_size: int = _ruled(8, positive_int)
    seq_len: int = _ruled(1024, positive_int)
    lr: float = _ruled(1e-3, positive_float)
    weight_decay: float = _ruled(0.1, non_negative_float)
    warmup_steps: int = _ruled(100, non_negative_int)
    min_lr_ratio: float = _ruled(0.1, share)
    grad_clip: float = _ruled(1.0, non_negative_float)    # 0 = no clipping
    grad_accum: int = _ruled(1, positive_int)
    d_model: int = _ruled(128, positive_int)
    n_layer: int = _ruled(4, positive_int)
    save_every: int = _ruled(500, non_negative_int)
    eval_every: int = _ruled(500, non_negative_int)
    keep_last: int = _ruled(3, positive_int)
    early_stop: int = _ruled(0, non_negative_int)
    log_every: int = _ruled(10, positive_int)
    seed: int = _ruled(0, seed_int)
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
            if "rule" in f.metadata:
                f.metadata["rule"].check(value, f"TrainConfig.{f.name}")
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
