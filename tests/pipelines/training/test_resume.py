"""A run killed with SIGKILL mid-training and resumed ends bitwise-equal to an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from mambaseq.pipelines.training import checkpoints as ckpt

SCRIPT = Path(__file__).with_name("test_trainer.py")
ARGS = ["--steps", "40", "--batch-size", "4", "--seq-len", "16", "--lr", "1e-2",
        "--warmup-steps", "3", "--save-every", "8", "--eval-every", "6", "--log-every", "3",
        "--keep-last", "2", "--grad-accum", "2", "--seq-len-schedule", "5:8:8",
        "--device", "cpu", "--delay", "0.01"]


def _start(out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out), *ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def _losses(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records]


def test_sigkill_then_resume_is_bitwise_equal(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = _start(whole)
    victim = _start(killed)
    deadline = time.time() + 60
    while ckpt.latest_checkpoint(killed / "checkpoints") is None:
        assert victim.poll() is None, victim.communicate()[0].decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared within 60 s"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "model").exists(), "the run finished before the kill"
    killed_at = int(ckpt.latest_checkpoint(killed / "checkpoints").name.split("_")[1])
    assert killed_at < 40

    resumed = _start(killed, "--resume")
    out_resumed = resumed.communicate(timeout=120)[0].decode()
    out_reference = reference.communicate(timeout=120)[0].decode()
    assert resumed.returncode == 0, out_resumed[-3000:]
    assert reference.returncode == 0, out_reference[-3000:]
    assert f"at step {killed_at}" in out_resumed

    a = load_file(whole / "model" / "model.safetensors")
    b = load_file(killed / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    state_a = ckpt.load_state(whole / "checkpoints" / "step_0000040")
    state_b = ckpt.load_state(killed / "checkpoints" / "step_0000040")
    assert state_a["tokens"] == state_b["tokens"]
    for sa, sb in zip(state_a["optimizer"]["state"].values(), state_b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert _losses(whole) == _losses(killed)        # metrics after the checkpoint were redone
    assert ckpt.load_state(killed / "checkpoints" / "best")["best_val"] == state_a["best_val"]
