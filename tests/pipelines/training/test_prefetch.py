"""The training loop builds the next steps' batches in a background thread: the batches are
the same as without it, errors surface at their step, and metrics.jsonl says how long each
step waited for its batch (``data_wait_s``)."""
import json
import threading
import time

import pytest
import torch

from mambaseq.pipelines.training.loop import Prefetcher, train

from test_trainer import TinyLM, get_batch, loss_fn, make_eval_fn, tiny_cfg


def _train_rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_prefetched_batches_equal_unprefetched(tmp_path, seeded_one_thread):
    received, built_on = [], set()

    def batches(*key):
        built_on.add(threading.current_thread().name)
        return get_batch(*key)

    def recording_loss(model, batch):
        received.append(batch.clone())
        return loss_fn(model, batch)

    cfg = tiny_cfg(tmp_path, steps=9, grad_accum=2, seq_len_schedule="3:4:8")
    train(TinyLM(), recording_loss, batches, cfg, eval_fn=make_eval_fn())
    expected = []
    for step in range(9):
        seq_len, batch_size = cfg.shape_at(step)
        expected += [get_batch(step * 2 + micro, seq_len, batch_size, 0, 1) for micro in (0, 1)]
    assert len(received) == len(expected) == 18
    assert all(torch.equal(a, b) for a, b in zip(received, expected))
    assert built_on == {"mambaseq-prefetch"}          # never in the training thread


def test_data_wait_s_logged_for_every_training_row(tmp_path, seeded_one_thread):
    def slow_batches(*key):
        time.sleep(0.05)
        return get_batch(*key)

    train(TinyLM(), loss_fn, slow_batches, tiny_cfg(tmp_path / "slow", steps=6, log_every=2,
                                                    eval_every=0, save_every=0))
    rows = _train_rows(tmp_path / "slow")
    assert [r["step"] for r in rows] == [2, 4, 6]
    # the step takes ~1 ms, the batch 50 ms: each step waits for most of it
    assert all(0.03 < r["data_wait_s"] < 0.5 for r in rows[1:]), rows

    def slow_loss(model, batch):
        time.sleep(0.03)
        return loss_fn(model, batch)
    train(TinyLM(), slow_loss, get_batch, tiny_cfg(tmp_path / "fast", steps=6, log_every=2,
                                                   eval_every=0, save_every=0))
    rows = _train_rows(tmp_path / "fast")
    assert all(0 <= r["data_wait_s"] < 0.01 for r in rows[1:]), rows   # built ahead


def test_a_batch_error_is_raised_at_its_step(tmp_path, seeded_one_thread):
    def failing(index, *rest):
        if index == 4:
            raise ValueError("genome.fa: no region holds a window of 16 bases")
        return get_batch(index, *rest)

    with pytest.raises(ValueError, match="no region holds a window"):
        train(TinyLM(), loss_fn, failing, tiny_cfg(tmp_path, steps=8, save_every=2,
                                                   eval_every=0))
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == ["step_0000002", "step_0000004"]      # steps 0-3 ran, step 4 did not
    assert not any(t.name == "mambaseq-prefetch" for t in threading.enumerate())


def test_prefetcher_stays_a_bounded_number_of_batches_ahead():
    built = []

    def record(*key):
        built.append(key[0])
        return key[0]

    keys = [(i, 4, 2, 0, 1) for i in range(100)]
    with Prefetcher(record, keys, depth=3) as batches:
        assert batches.next(keys[0]) == 0
        time.sleep(0.3)
        assert len(built) <= 1 + 3 + 1      # the one consumed, the queue, one in hand
        with pytest.raises(RuntimeError, match=r"batch \(1, 4, 2, 0, 1\) came where"):
            batches.next(keys[2])
    assert not batches.thread.is_alive()
