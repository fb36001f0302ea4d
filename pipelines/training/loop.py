"""The training loop every training subcommand shares.

    train(model, loss_fn, get_batch, cfg, eval_fn=None) -> summary dict

AdamW with weight-decay groups, linear warmup + cosine, gradient clipping, autocast
(bf16/fp16 on GPU, fp32 on CPU), gradient accumulation, sequence-length warmup stages,
tqdm progress, ``metrics.jsonl``, atomic checkpoints with exact resume, a loss plot, and
DistributedDataParallel under ``torchrun``. Outputs under ``cfg.out``:

    metrics.jsonl   one JSON record per log step ({"step", "loss", "lr", "grad_norm",
                    "tokens_per_s", "data_wait_s", "seq_len", "batch_size", "tokens",
                    "elapsed_s"}) and per validation ({"step", "val_loss", ...})
    loss.png        training and validation loss curves
    checkpoints/    step_XXXXXXX/ (the last ``keep_last``) and best/ (lowest val_loss)
    model/          the final model, via ``save_pretrained``

Resume is exact because a checkpoint holds every piece of state the loop reads (weights,
optimizer, scheduler, grad scaler, each rank's RNG states, counters) and because
``get_batch`` is a pure function of its arguments: the loop never holds a data iterator.
The batches of the next ``PREFETCH_STEPS`` steps are built in a background thread while the
current step runs (``Prefetcher``); ``data_wait_s`` is the mean time a step waited for its
batches.
"""
from __future__ import annotations

import contextlib
import json
import math
import queue
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from mambaseq.core.backbone import set_grad_checkpointing

from . import checkpoints as ckpt
from .distributed import (DistContext, all_gather_objects, all_reduce_mean, all_reduce_sum,
                          barrier, broadcast_object, init_distributed, shutdown, wrap_model)
from .config import TrainConfig, check_resume_options
from .run_lock import lock_run_dir
from .plotting import plot_metrics, read_metrics

# AdamW betas of the Mamba paper's language-model recipe (Gu & Dao 2023, App. E.2, after GPT-3).
ADAM_BETAS = (0.9, 0.95)
# Optimizer steps whose batches are built ahead of the one that runs (bench/data.py: with
# them, a loop whose step is a 5 ms sleep on 64 x 1 kb genome batches is busy 98% of its time).
PREFETCH_STEPS = 2

LossFn = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, int]"]
GetBatch = Callable[[int, int, int, int, int], Any]
EvalFn = Callable[[torch.nn.Module], "dict[str, float]"]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and numpy. Call it before building the
    model so that the initial weights are reproducible."""
    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases, norm weights (anything with fewer
    than 2 dims) and parameters flagged ``p._no_weight_decay = True`` (A_log, D)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # shared (tied) parameters are listed once
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based): linear warmup over
    ``warmup_steps``, then cosine from 1 down to ``min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None means plain fp32.

    Raises:
        ValueError: fp16 on CPU (no fp16 autocast there; use bf16 or fp32).
    """
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision fp16 needs a CUDA GPU; use fp32 or bf16 on CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _to_device(batch, device: torch.device):
    """Move every tensor in a (nested) tuple/list/dict batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _rng_state() -> dict:
    """This process's RNG states as tensors/ints (storable with weights_only)."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss}}


def _set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"],
                         n["has_gauss"], n["gauss"]))


def _pin(batch):
    """``batch`` with every tensor in page-locked memory (its copy to the GPU is async)."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: _pin(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_pin(v) for v in batch)
    return batch


class Prefetcher:
    """``get_batch`` called for the ``keys`` in order in a background thread, at most
    ``depth`` batches ahead of the consumer: ``next(key)`` returns the batch of ``key`` (the
    next of ``keys``), waiting only when the thread is behind. A batch stays the pure
    function of its key (the thread calls ``get_batch`` exactly as the loop would), so
    prefetched runs see the same batches as unprefetched, resumed and killed ones.

    Args:
        get_batch: the loop's ``get_batch(index, seq_len, batch_size, rank, world_size)``.
        keys: iterable of those argument tuples, in the order they will be asked for.
        depth (int): batches built ahead.
        pin (bool): pin each batch's tensors (for an asynchronous copy to a GPU).

    An error of ``get_batch`` is raised by the ``next`` that asks for that batch. Use as a
    context manager (or call ``close``) so that the thread stops.

    >>> with Prefetcher(lambda *key: key, [(i, 8, 2, 0, 1) for i in range(3)]) as batches:
    ...     [batches.next((i, 8, 2, 0, 1)) for i in range(3)]
    [(0, 8, 2, 0, 1), (1, 8, 2, 0, 1), (2, 8, 2, 0, 1)]
    """

    def __init__(self, get_batch: GetBatch, keys, depth: int = 2, pin: bool = False):
        self.get_batch, self.pin = get_batch, pin
        self.queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self.stopped = threading.Event()
        self.wait_s = 0.0           # seconds ``next`` spent waiting for the thread, in all
        self.thread = threading.Thread(target=self._work, args=(iter(keys),), daemon=True,
                                       name="mambaseq-prefetch")
        self.thread.start()

    def _work(self, keys) -> None:
        for key in keys:
            try:
                batch = self.get_batch(*key)
                item = (key, _pin(batch) if self.pin else batch, None)
            except Exception as err:                    # raised by the consumer's next()
                item = (key, None, err)
            while not self.stopped.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self.stopped.is_set() or item[2] is not None:
                return

    def next(self, key):
        """The batch of ``key``, which must be the next key given to the constructor."""
        t0 = time.perf_counter()
        got, batch, err = self.queue.get()
        self.wait_s += time.perf_counter() - t0
        if got != key:
            raise RuntimeError(f"prefetcher: batch {got} came where {key} was asked for")
        if err is not None:
            raise err
        return batch

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is building)."""
        self.stopped.set()
        self.thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop the records a killed run wrote after its last checkpoint (and any torn line)."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


class _Window:
    """Training metrics accumulated on this rank since the last flush."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self.loss_sum, self.micro_batches, self.tokens = 0.0, 0, 0
        self.steps, self.data_wait = 0, 0.0
        self.grad_norm, self.lr = float("nan"), float("nan")
        self.t0 = time.perf_counter()

    def add(self, loss_sum: float, tokens: int, grad_norm: float, lr: float, data_wait: float,
            micro_batches: int):
        self.loss_sum += loss_sum
        self.micro_batches += micro_batches
        self.tokens += tokens
        self.steps += 1
        self.data_wait += data_wait
        self.grad_norm, self.lr = grad_norm, lr

    def flush(self, run: "_Run", ctx: DistContext) -> dict:
        """Average over ranks, add the tokens to ``run.tokens``, restart; collective.

        Returns:
            ``{"loss", "lr", "grad_norm", "tokens_per_s", "data_wait_s"}`` of the window
            (empty if it was); ``data_wait_s``: mean seconds a step of a rank waited for its
            batches.
        """
        if not self.micro_batches:
            return {}
        loss_sum, micro_batches, tokens, steps, data_wait = all_reduce_sum(
            [self.loss_sum, self.micro_batches, self.tokens, self.steps, self.data_wait], ctx)
        run.tokens += int(tokens)
        metrics = {"loss": loss_sum / micro_batches, "lr": self.lr, "grad_norm": self.grad_norm,
                   "tokens_per_s": tokens / max(time.perf_counter() - self.t0, 1e-9),
                   "data_wait_s": data_wait / steps}
        self.restart()
        return metrics


def _log(ctx: DistContext, message: str) -> None:
    if ctx.is_main:
        tqdm.write(f"[mambaseq] {message}", file=sys.stderr)   # logs on stderr, results on stdout


class _Run:
    """The mutable state of one training run; ``train`` drives it."""

    def __init__(self, model, loss_fn, get_batch, cfg: TrainConfig, eval_fn, ctx: DistContext,
                 assets: dict | None = None):
        self.model, self.loss_fn, self.get_batch, self.eval_fn = model, loss_fn, get_batch, eval_fn
        self.cfg, self.ctx, self.assets = cfg, ctx, assets
        self.out = Path(cfg.out)
        self.ckpt_root = self.out / "checkpoints"
        self.metrics_path = self.out / "metrics.jsonl"
        self.amp_dtype = autocast_dtype(cfg.precision, ctx.device)

        model.to(ctx.device)
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                           betas=ADAM_BETAS)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, cfg))
        self.scaler = torch.amp.GradScaler(ctx.device.type,
                                           enabled=self.amp_dtype == torch.float16)
        self.step = 0            # optimizer steps done
        self.tokens = 0          # tokens trained on, all ranks
        self.best_val = None     # lowest val_loss so far
        self.bad_evals = 0       # validations since the best one
        self.last_train: dict = {}
        self.last_val: dict = {}
        self.batches: Prefetcher | None = None     # set by ``prefetch``

    def batch_keys(self, first: int):
        """The ``get_batch`` arguments of every micro-batch from step ``first`` on."""
        cfg, ctx = self.cfg, self.ctx
        for step in range(first, cfg.steps):
            seq_len, batch_size = cfg.shape_at(step)
            for micro in range(cfg.grad_accum):
                yield (step * cfg.grad_accum + micro, seq_len, batch_size, ctx.rank,
                       ctx.world_size)

    def prefetch(self) -> Prefetcher:
        """Start building the batches of the coming steps in the background."""
        self.batches = Prefetcher(self.get_batch, self.batch_keys(self.step),
                                  depth=PREFETCH_STEPS * self.cfg.grad_accum,
                                  pin=self.ctx.device.type == "cuda")
        return self.batches

    # -- state in and out -------------------------------------------------------------
    def state(self) -> dict:
        """Everything but the weights, for ``trainer_state.pt``; collective (all ranks call)."""
        return {"step": self.step, "tokens": self.tokens, "best_val": self.best_val,
                "bad_evals": self.bad_evals, "world_size": self.ctx.world_size,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "last_train": self.last_train, "last_val": self.last_val,
                "rng": all_gather_objects(_rng_state(), self.ctx)}

    def resume(self) -> None:
        """Load the newest checkpoint (rank 0 picks it); fresh start when there is none."""
        latest = None
        if self.ctx.is_main:
            latest = ckpt.latest_checkpoint(self.ckpt_root)
        latest = broadcast_object(None if latest is None else str(latest), self.ctx)
        if latest is None:
            _log(self.ctx, f"resume: no checkpoint in {self.ckpt_root}; starting at step 0")
            return
        saved_cfg = Path(latest) / "train_config.json"
        if saved_cfg.is_file():
            check_resume_options(json.loads(saved_cfg.read_text()), self.cfg.to_dict(),
                                 saved_cfg)
        state = ckpt.load_state(latest)
        ckpt.load_model_weights(self.model, latest)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.best_val, self.bad_evals = state["best_val"], state["bad_evals"]
        # what the summary reports when nothing is left to train (a finished run resumed)
        self.last_train, self.last_val = state.get("last_train", {}), state.get("last_val", {})
        if state["world_size"] == self.ctx.world_size:
            _set_rng_state(state["rng"][self.ctx.rank])
        else:  # another process count: the data shards differ anyway, so reseed per rank
            _log(self.ctx, f"resuming a {state['world_size']}-process run on "
                           f"{self.ctx.world_size} processes: not bitwise-reproducible")
            seed_everything(self.cfg.seed + 1000 * self.ctx.rank + self.step)
        if self.ctx.is_main:
            _truncate_metrics(self.metrics_path, self.step)
        _log(self.ctx, f"resumed from {latest} at step {self.step}")

    def diverged(self, what: str) -> FloatingPointError:
        """The error that ends a run whose ``what`` ("validation loss is nan") went
        non-finite at the current step; names the last good checkpoint, which is kept."""
        last = ckpt.latest_checkpoint(self.ckpt_root)
        kept = f"the last good checkpoint, {last}, is kept" if last else "no checkpoint yet"
        return FloatingPointError(
            f"{what} at step {self.step}: stopped without saving ({kept}); start again with "
            "a lower lr, a higher warmup_steps or precision fp32")

    def check_weights(self) -> None:
        """Raise ``diverged`` when a weight of the model is NaN or infinite (an optimizer step
        can break them after a finite loss); called before any checkpoint or model is saved."""
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise self.diverged(f"the weights are not finite ({len(bad)} tensors, e.g. {bad[0]})")

    def save(self, name: str) -> None:
        """Checkpoint ``name`` from rank 0; collective (the RNG states are gathered).

        Raises:
            FloatingPointError: a weight is NaN or infinite (nothing is written).
        """
        self.check_weights()
        state = self.state()
        if self.ctx.is_main:
            metrics = {"step": self.step, **self.last_train, **self.last_val}
            ckpt.write_checkpoint(self.ckpt_root, name, self.model, state,
                                  self.cfg.to_dict(), metrics, self.assets)
            ckpt.prune_checkpoints(self.ckpt_root, self.cfg.keep_last)

    # -- the steps ----------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.amp_dtype)

    def train_step(self, wrapped: torch.nn.Module) -> tuple[float, int, float, float, float]:
        """One optimizer step over ``grad_accum`` micro-batches (from ``self.batches``).

        Returns:
            (sum of the micro-batch losses, tokens of this rank, gradient norm before
            clipping, learning rate of the step, seconds waited for the batches)
        """
        cfg, ctx = self.cfg, self.ctx
        seq_len, batch_size = cfg.shape_at(self.step)
        loss_sum, tokens = 0.0, 0
        waited = self.batches.wait_s
        for micro in range(cfg.grad_accum):
            last = micro == cfg.grad_accum - 1
            batch = self.batches.next((self.step * cfg.grad_accum + micro, seq_len, batch_size,
                                       ctx.rank, ctx.world_size))
            batch = _to_device(batch, ctx.device)
            # DDP all-reduces gradients on the last micro-batch only.
            sync = contextlib.nullcontext() if last or not ctx.distributed else wrapped.no_sync()
            with sync:
                with self.autocast():
                    loss, n_tokens = self.loss_fn(wrapped, batch)
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"training loss is {value} at step {self.step + 1} (micro-batch "
                        f"{micro}); lower lr, raise warmup_steps or use precision fp32")
                self.scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum += value
            tokens += int(n_tokens)
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).item()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return loss_sum, tokens, grad_norm, lr, self.batches.wait_s - waited

    def evaluate(self) -> bool:
        """Validate, log, keep ``best``; returns True when early stopping says stop."""
        self.model.eval()
        with torch.no_grad(), self.autocast():
            metrics = self.eval_fn(self.model)
        self.model.train()
        metrics = all_reduce_mean(dict(metrics), self.ctx)
        self.last_val = metrics
        if self.ctx.is_main:
            _append_jsonl(self.metrics_path, {"step": self.step, **metrics})
        val = metrics.get("val_loss")
        if val is None:
            return False
        if not math.isfinite(val):
            raise self.diverged(f"the validation loss is {val}")
        if self.best_val is None or val < self.best_val:
            self.best_val, self.bad_evals = val, 0
            self.save(ckpt.BEST)
            return False
        self.bad_evals += 1
        return 0 < self.cfg.early_stop <= self.bad_evals


def train(model: torch.nn.Module, loss_fn: LossFn, get_batch: GetBatch, cfg: TrainConfig,
          eval_fn: EvalFn | None = None, assets: dict | None = None) -> dict:
    """Train ``model`` for ``cfg.steps`` optimizer steps, resuming if ``cfg.resume``.

    Args:
        model: a toolkit model (``save_pretrained(dir, extra_json=None)``), built (and seeded, see
            ``seed_everything``) by the caller; moved to the device here.
        loss_fn: ``loss_fn(model, batch) -> (loss, n_tokens)``: ``loss`` a scalar tensor
            (mean over the batch), ``n_tokens`` an int (for tokens/s). ``model`` may be
            DistributedDataParallel-wrapped: call it, do not read its attributes.
        get_batch: ``get_batch(index, seq_len, batch_size, rank, world_size) -> batch``, a
            deterministic function of its arguments giving this rank's shard. ``index`` is
            the micro-batch number, ``step * grad_accum + micro`` (the optimizer step when
            ``grad_accum`` is 1). ``batch``: a tensor or a tuple/list/dict of tensors, moved
            to the device here.
        cfg: the run's TrainConfig.
        eval_fn: ``eval_fn(model) -> {"val_loss": float, ...}`` on the held-out split, run
            under ``torch.no_grad``, autocast and ``model.eval()`` on every rank (metrics are
            averaged over ranks); ``val_loss`` decides ``best`` and early stopping.
        assets: JSON files written into every model folder (``model/``, each checkpoint)
            inside its atomic write, so that each one is self-contained:
            ``core.model_assets(tokenizer, classes)``.
    Returns:
        ``{"step", "loss", "tokens", "best_val_loss", "val", "stopped_early", "out",
        "model_dir"}``: last averaged training loss, last validation metrics, paths.
    Raises:
        FileExistsError: ``cfg.out`` already holds checkpoints and ``cfg.resume`` is off.
        ValueError: on resume, an option changed that the run cannot take (see
            ``options.RESUME_MAY_CHANGE``), or a checkpoint that cannot be trusted or read.
        run_lock.RunFolderBusy: another process is training in ``cfg.out``.
        FloatingPointError: the training or validation loss, or a weight, became NaN or
            infinite; nothing is saved from that step on (earlier checkpoints are kept).
    """
    ctx = init_distributed(cfg.device)
    try:
        with lock_run_dir(cfg.out) if ctx.is_main else contextlib.nullcontext():
            return _train(model, loss_fn, get_batch, cfg, eval_fn, ctx, assets)
    finally:
        shutdown(ctx)


def _train(model, loss_fn, get_batch, cfg, eval_fn, ctx: DistContext, assets) -> dict:
    out = Path(cfg.out)
    if ctx.is_main:
        ckpt.clean_stale(out / "checkpoints")
        ckpt.clean_stale(out)                 # a model/ swap cut short
    if not cfg.resume and broadcast_object(
            ctx.is_main and bool(ckpt.list_checkpoints(out / "checkpoints")), ctx):
        raise FileExistsError(f"{out / 'checkpoints'} already holds checkpoints; resume that "
                              "run (resume) or choose another out folder")
    torch.manual_seed(cfg.seed + 1000 * ctx.rank)  # dropout etc.; ranks draw differently

    if cfg.grad_checkpoint and not set_grad_checkpointing(model, True):
        raise ValueError(f"grad_checkpoint: a {type(model).__name__} has no backbone with "
                         "per-block checkpointing (the causal MambaBackbone has it)")
    run = _Run(model, loss_fn, get_batch, cfg, eval_fn, ctx, assets)
    if cfg.resume:
        run.resume()
    elif ctx.is_main:
        run.metrics_path.write_text("")
    wrapped = wrap_model(model, ctx)
    model.train()
    _log(ctx, f"device {ctx.device} x {ctx.world_size} process(es), precision "
              f"{run.amp_dtype or torch.float32}, {sum(p.numel() for p in model.parameters()):,} "
              f"parameters, steps {run.step}->{cfg.steps}")

    bar = tqdm(total=cfg.steps, initial=run.step, unit="step", disable=not ctx.is_main,
               dynamic_ncols=True)
    t_start = time.perf_counter()
    window = _Window()

    def log_window(done: int) -> None:
        """Flush the open window into metrics.jsonl and ``run.last_train``."""
        seq_len, batch_size = cfg.shape_at(done - 1)
        run.last_train = {**window.flush(run, ctx), "seq_len": seq_len,
                          "batch_size": batch_size, "tokens": run.tokens,
                          "elapsed_s": time.perf_counter() - t_start}
        if ctx.is_main:
            _append_jsonl(run.metrics_path, {"step": done, **run.last_train})
        bar.set_postfix(loss=f"{run.last_train['loss']:.4f}",
                        tok_s=f"{run.last_train['tokens_per_s']:.0f}", seq=seq_len)

    stop = False
    with run.prefetch():                  # the next steps' batches built in the background
        while run.step < cfg.steps and not stop:
            window.add(*run.train_step(wrapped), micro_batches=cfg.grad_accum)
            bar.update(1)
            done = run.step
            final = done == cfg.steps
            checkpoint_due = (cfg.save_every and done % cfg.save_every == 0) or final
            # A checkpoint closes the window: its steps are logged, never lost on resume.
            if done % cfg.log_every == 0 or checkpoint_due:
                log_window(done)
            if eval_fn is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or final):
                stop = run.evaluate()
                if stop:
                    _log(ctx, f"early stop at step {done}: no better val_loss in "
                              f"{cfg.early_stop} validations (best {run.best_val:.4f})")
            if checkpoint_due or stop:
                if window.micro_batches:
                    log_window(done)
                run.save(ckpt.step_dir_name(done))
    bar.close()

    model_dir = out / "model"
    run.check_weights()
    if ctx.is_main:
        model.save_pretrained(model_dir, extra_json=assets)
        plot_metrics(run.metrics_path, out / "loss.png")
        _log(ctx, f"done at step {run.step}: model in {model_dir}, curves in {out / 'loss.png'}")
    barrier(ctx)
    return {"step": run.step, "loss": run.last_train.get("loss"), "tokens": run.tokens,
            "best_val_loss": run.best_val, "val": run.last_val, "stopped_early": stop,
            "out": str(out), "model_dir": str(model_dir)}
