"""``TrainConfig``: what the training loop needs, the base of every training job's config;
and the rules a resumed run follows.

A training job's config extends it (``PretrainGenomeConfig(TrainConfig)``), so that one
object carries the run's options: the loop reads its own fields, the job the rest, and
``config.json`` of the run folder records them all. A job changes a default by redeclaring
the field (``steps: int = option(500, ...)``).
"""
from __future__ import annotations

import dataclasses

from .fields import (Config, non_negative_float, non_negative_int, option, positive_float,
                     positive_int, seed_int, share)


def parse_seq_len_schedule(text: str) -> tuple[tuple[int, int, int], ...]:
    """Parse ``"100:1024:8,200:4096:2"`` into ``((100, 1024, 8), (200, 4096, 2))``.

    Each stage is ``steps:seq_len:batch_size``: the first 100 optimizer steps use sequences
    of 1024 in batches of 8, the next 200 use 4096 x 2, and the steps after the last stage
    use ``seq_len`` x ``batch_size``. An empty string means no warmup stages.

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


# Options that may differ on resume: they change how long the run goes, what it writes or
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
        raise ValueError(f"resume: {key} is {now.get(key)!r} but the run in {where} used "
                         f"{saved.get(key)!r}; resume with the run's own options (only "
                         f"{', '.join(RESUME_MAY_CHANGE)} may change) or start a new run in "
                         "another out folder")


def check_resume_split(saved: list[str], now: list[str], where, inputs: str) -> None:
    """Refuse a resume whose split, derived again from its inputs, is not the run's own.

    Args:
        saved: the split the run started with, one line per item (a region, a file), as
            read from ``where``.
        now: the same lines derived from the inputs of this invocation.
        where: the run's split file, for the message.
        inputs: the options the split comes from ("fasta/bed"), for the message.
    Raises:
        ValueError: naming an item that left the split or joined it, and the counts.
    """
    if saved == now:
        return
    gone, new = set(saved) - set(now), set(now) - set(saved)
    change = "; ".join(
        [f"{len(gone)} gone, e.g. {min(gone)}"] * bool(gone)
        + [f"{len(new)} new, e.g. {min(new)}"] * bool(new)) or "the same items in another order"
    raise ValueError(f"resume: the split derived from {inputs} is not the run's own {where} "
                     f"({change}); the inputs changed since the run started: restore them, or "
                     "start a new run in another out folder")


class ScheduleRule:
    """The rule of ``seq_len_schedule``: text that :func:`parse_seq_len_schedule` reads."""

    what = "comma-separated steps:seq_len:batch_size stages"

    def check(self, value) -> None:
        parse_seq_len_schedule(value)

    def parse(self, text: str) -> str:
        self.check(text)
        return text


@dataclasses.dataclass(kw_only=True)
class TrainConfig(Config):
    """Everything the training loop needs; the base of every training job's config."""

    OPTIONS_GROUP = "training"
    out: str = option(help="output folder: config.json, metrics.jsonl, loss.png, "
                           "checkpoints/, model/", metavar="DIR")
    steps: int = option(1000, rule=positive_int, metavar="N",
                        help="optimizer steps in the whole run")
    batch_size: int = option(8, rule=positive_int,
                             help="sequences per micro-batch on each process")
    seq_len: int = option(1024, rule=positive_int,
                          help="tokens (or samples) per training sequence")
    lr: float = option(1e-3, rule=positive_float, help="peak learning rate of AdamW")
    weight_decay: float = option(0.1, rule=non_negative_float,
                                 help="AdamW weight decay (never applied to norms, biases, "
                                      "A_log, D)")
    warmup_steps: int = option(100, rule=non_negative_int,
                               help="linear learning-rate warmup steps, then cosine decay")
    min_lr_ratio: float = option(0.1, rule=share,
                                 help="learning rate at the end of the cosine, as a fraction "
                                      "of lr (0 to 1)")
    grad_clip: float = option(1.0, rule=non_negative_float,
                              help="clip the global gradient norm to this (0 = no clipping)")
    grad_accum: int = option(1, rule=positive_int,
                             help="micro-batches accumulated per optimizer step")
    save_every: int = option(500, rule=non_negative_int, metavar="N",
                             help="write a checkpoint every N steps (0 = only at the end)")
    eval_every: int = option(500, rule=non_negative_int, metavar="N",
                             help="validate every N steps and at the end (0 = only at the end)")
    keep_last: int = option(3, rule=positive_int, metavar="K",
                            help="keep the K newest checkpoints (plus the best one)")
    early_stop: int = option(0, rule=non_negative_int, metavar="P",
                             help="stop after P validations without a better val_loss "
                                  "(0 = never)")
    log_every: int = option(10, rule=positive_int, metavar="N",
                            help="append averaged training metrics to metrics.jsonl every N "
                                 "steps")
    seed: int = option(0, rule=seed_int, help="seed of the model init, data and dropout")
    device: str = option("auto", choices=("auto", "cpu", "cuda"),
                         help="auto = cuda when available, else cpu")
    precision: str = option("auto", choices=("auto", "fp32", "bf16", "fp16"),
                            help="autocast dtype; auto = bf16 on GPUs that support it (else "
                                 "fp16), fp32 on CPU")
    resume: bool = option(False, help="continue from the newest checkpoint in "
                                      "out/checkpoints, with the run's own options: only "
                                      + ", ".join(RESUME_MAY_CHANGE) + " may change")
    grad_checkpoint: bool = option(False, help="recompute each Mamba block's activations in "
                                               "the backward pass instead of storing them "
                                               "(less memory at long seq_len; one more forward "
                                               "per block: x1.65 the step time measured on a "
                                               "CPU)")
    seq_len_schedule: str = option("", rule=ScheduleRule(), metavar="STAGES",
                                   help="sequence-length warmup, comma-separated "
                                        "steps:seq_len:batch_size stages run before seq_len x "
                                        "batch_size, e.g. '100:1024:8,200:4096:2'")

    @property
    def stages(self) -> tuple[tuple[int, int, int], ...]:
        """``seq_len_schedule`` parsed: ``((steps, seq_len, batch_size), ...)``."""
        return parse_seq_len_schedule(self.seq_len_schedule)

    def shape_at(self, step: int) -> tuple[int, int]:
        """``(seq_len, batch_size)`` of optimizer step ``step`` (0-based) under the schedule."""
        end = 0
        for stage_steps, seq_len, batch_size in self.stages:
            end += stage_steps
            if step < end:
                return seq_len, batch_size
        return self.seq_len, self.batch_size

    def train_fields(self) -> dict:
        """The fields of :class:`TrainConfig` alone (what a checkpoint's train_config.json
        holds), whatever job config extends it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
