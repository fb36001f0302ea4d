"""The shared training loop on a tiny next-token model (no dependency on core's models).

Run as a script, this file is also the training job that test_resume.py kills and resumes
and that test_distributed.py starts under torchrun:

    python tests/pipelines/training/test_trainer.py --out DIR --steps 40 [--resume] [--dump-weights FILE]
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseq.pipelines.training import checkpoints as ckpt
from mambaseq.pipelines.cli.options import add_config_options, config_from_args
from mambaseq.pipelines.training import non_negative_float, option
from mambaseq.pipelines.training.config import TrainConfig, parse_seq_len_schedule
from mambaseq.pipelines.training.loop import lr_factor, param_groups, seed_everything, train

VOCAB = 16


class TinyLM(nn.Module):
    """Embedding -> dropout -> LayerNorm -> Linear (tied), with an ``A_log``-like parameter
    flagged ``_no_weight_decay``; dropout makes the RNG part of the state to restore."""

    def __init__(self, d_model: int = 16):
        super().__init__()
        self.d_model = d_model
        self.embed = nn.Embedding(VOCAB, d_model)
        self.mix = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.A_log = nn.Parameter(torch.zeros(d_model, 4))
        self.A_log._no_weight_decay = True
        self.drop = nn.Dropout(0.1)

    def forward(self, x):                                     # (B, L) -> (B, L, VOCAB)
        h = self.drop(self.embed(x))
        h = h + torch.tanh(self.mix(h)) * self.A_log.exp().mean(-1)
        return self.norm(h) @ self.embed.weight.T

    def save_pretrained(self, path, extra_json=None):
        """What a toolkit model writes: config.json, the weights, the ``extra_json`` files."""
        from safetensors.torch import save_model
        Path(path).mkdir(parents=True, exist_ok=True)
        for name, obj in {"config.json": {"d_model": self.d_model}, **(extra_json or {})}.items():
            Path(path, name).write_text(json.dumps(obj))
        save_model(self, str(Path(path, "model.safetensors")))


def get_batch(index, seq_len, batch_size, rank, world_size, delay=0.0):
    """Counting sequences ``(start + i) % VOCAB``, a pure function of the arguments."""
    time.sleep(delay)
    g = torch.Generator().manual_seed(index * world_size + rank)
    start = torch.randint(0, VOCAB, (batch_size, 1), generator=g)
    return (start + torch.arange(seq_len + 1)) % VOCAB        # (B, L + 1)


def loss_fn(model, batch):
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1)), batch[:, 1:].numel()


def make_eval_fn():
    val = get_batch(10 ** 6, 16, 8, 0, 1)
    return lambda model: {"val_loss": loss_fn(model, val)[0].item()}


def tiny_cfg(out, **kw):
    base = dict(out=str(out), steps=12, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=2,
                save_every=5, eval_every=4, keep_last=2, log_every=3, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_param_groups_skip_norms_biases_and_flagged():
    m = TinyLM()
    groups = param_groups(m, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(m.embed.weight), id(m.mix.weight)}
    assert groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in groups[1]["params"]} == {id(m.mix.bias), id(m.norm.weight),
                                                    id(m.norm.bias), id(m.A_log)}


def test_lr_warmup_then_cosine_to_floor():
    cfg = tiny_cfg("x", steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.55)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    factors = [lr_factor(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_seq_len_schedule_stages():
    assert parse_seq_len_schedule("100:1024:8, 200:4096:2") == ((100, 1024, 8), (200, 4096, 2))
    cfg = tiny_cfg("x", seq_len_schedule="2:4:8,3:8:4", seq_len=16, batch_size=2)
    assert [cfg.shape_at(s) for s in range(7)] == [(4, 8), (4, 8), (8, 4), (8, 4), (8, 4),
                                                   (16, 2), (16, 2)]
    with pytest.raises(ValueError, match="steps:seq_len:batch_size"):
        parse_seq_len_schedule("100:1024")


def test_train_writes_artifacts_and_learns(tmp_path):
    seed_everything(0)
    model = TinyLM()
    seen = []

    def batches(index, seq_len, batch_size, rank, world_size):
        seen.append((index, seq_len, batch_size))
        return get_batch(index, seq_len, batch_size, rank, world_size)

    cfg = tiny_cfg(tmp_path, steps=30, seq_len_schedule="4:4:8", grad_accum=2, early_stop=0)
    result = train(model, loss_fn, batches, cfg, eval_fn=make_eval_fn())

    assert result["step"] == 30
    assert seen[:3] == [(0, 4, 8), (1, 4, 8), (2, 4, 8)] and seen[8] == (8, 16, 4)
    assert len(seen) == 60                                    # 30 steps x 2 micro-batches
    assert result["tokens"] == 4 * 2 * 8 * 4 + 26 * 2 * 4 * 16
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "loss" in r]
    # every log step (3) and every checkpoint (5) closes a window: no step's loss is dropped
    assert [r["step"] for r in train_recs] == sorted({*range(3, 31, 3), *range(5, 31, 5)})
    assert train_recs[-1]["loss"] < train_recs[0]["loss"]
    assert {"lr", "grad_norm", "tokens_per_s", "seq_len"} <= set(train_recs[0])
    val_recs = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in val_recs] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert result["best_val_loss"] == min(r["val_loss"] for r in val_recs) < val_recs[0]["val_loss"]
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "model" / "model.safetensors").is_file()
    steps = [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert steps == [25, 30]                                  # keep_last=2
    best = json.loads((tmp_path / "checkpoints" / "best" / "metrics.json").read_text())
    assert best["val_loss"] == result["best_val_loss"]


def test_early_stop_and_existing_checkpoints_need_resume(tmp_path):
    seed_everything(0)
    # lr 1e-30 (TrainConfig refuses 0): the updates vanish in fp32, val_loss never improves
    cfg = tiny_cfg(tmp_path, steps=50, lr=1e-30, warmup_steps=0, eval_every=1, early_stop=2)
    result = train(TinyLM(), loss_fn, get_batch, cfg, eval_fn=make_eval_fn())
    assert result["stopped_early"] and result["step"] == 3
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step_0000003"
    with pytest.raises(FileExistsError, match="already holds checkpoints; resume that run"):
        train(TinyLM(), loss_fn, get_batch, cfg)


def test_resume_refuses_a_changed_run_and_keeps_the_summary(tmp_path):
    seed_everything(0)
    cfg = tiny_cfg(tmp_path, steps=5)
    done = train(TinyLM(), loss_fn, get_batch, cfg, eval_fn=make_eval_fn())
    with pytest.raises(ValueError, match=r"resume: lr is 0.5 but the run in .*"
                                         r"step_0000005/train_config.json used 0.01"):
        train(TinyLM(), loss_fn, get_batch, tiny_cfg(tmp_path, steps=5, lr=0.5, resume=True))
    with pytest.raises(ValueError, match=r"model.safetensors: the weights do not fit"):
        train(TinyLM(d_model=8), loss_fn, get_batch, tiny_cfg(tmp_path, steps=5, resume=True))
    again = train(TinyLM(), loss_fn, get_batch, tiny_cfg(tmp_path, steps=5, resume=True),
                  eval_fn=make_eval_fn())          # nothing left to train: same figures
    assert again["loss"] == done["loss"] is not None and again["val"] == done["val"] != {}


def test_nan_loss_is_one_clear_error(tmp_path):
    def nan_loss(model, batch):
        return model(batch[:, :-1]).sum() * float("nan"), 1

    with pytest.raises(FloatingPointError, match="step 1"):
        train(TinyLM(), nan_loss, get_batch, tiny_cfg(tmp_path))


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        train(TinyLM(), loss_fn, get_batch, tiny_cfg(tmp_path, precision="fp16"))


def test_checkpoint_write_is_atomic(tmp_path):
    """A writer that fails midway leaves nothing; what a killed one leaves (a .tmp- folder,
    a swapped-out .old- folder) is ignored by resume and cleaned."""
    class Dying(TinyLM):
        def save_pretrained(self, path, extra_json=None):
            Path(path, "config.json").write_text("{}")
            raise KeyboardInterrupt  # stands in for an interrupt in the middle of the write

    root = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        ckpt.write_checkpoint(root, ckpt.step_dir_name(5), Dying(), {"step": 5}, {}, {})
    assert list(root.iterdir()) == []
    (root / ".tmp-step_0000010-999").mkdir()                 # a SIGKILLed writer's leftovers
    (root / ".tmp-step_0000010-999" / "config.json").write_text("{}")
    assert ckpt.latest_checkpoint(root) is None
    ckpt.write_checkpoint(root, "step_0000005", TinyLM(), {"step": 5}, {}, {})
    os.rename(root / "step_0000005", root / ".old-step_0000005-999")   # killed mid-swap
    ckpt.clean_stale(root)
    assert [p.name for p in root.iterdir()] == ["step_0000005"]
    assert ckpt.load_state(ckpt.latest_checkpoint(root)) == {"step": 5}


@dataclasses.dataclass(kw_only=True)
class TinyJobConfig(TrainConfig):
    """The options of this module's training job: TrainConfig's and two of its own."""

    delay: float = option(0.0, rule=non_negative_float, help="seconds of sleep per batch")
    dump_weights: str | None = option(None, help="every rank saves its weights here")


def main(argv=None):
    """The training job of test_resume.py / test_distributed.py (see the module docstring)."""
    parser = argparse.ArgumentParser()
    add_config_options(parser, TinyJobConfig)
    cfg = config_from_args(TinyJobConfig, parser.parse_args(argv))
    torch.set_num_threads(1)
    seed_everything(cfg.seed)
    model = TinyLM()
    train(model, loss_fn,
          lambda i, s, b, r, w: get_batch(i, s, b, r, w, delay=cfg.delay), cfg,
          eval_fn=make_eval_fn())
    if cfg.dump_weights:  # RANK is set by torchrun
        torch.save(model.state_dict(), f"{cfg.dump_weights}.rank{os.environ.get('RANK', '0')}")


if __name__ == "__main__":
    sys.exit(main())
