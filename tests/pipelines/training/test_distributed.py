"""``torchrun --nproc_per_node=2`` with gloo on CPU: both ranks end with the same weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("test_trainer.py")


def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(SCRIPT), "--out", str(out), "--steps", "12", "--batch-size", "4", "--seq-len", "16",
           "--save-every", "5", "--eval-every", "4", "--log-every", "2", "--grad-accum", "2",
           "--device", "cpu", "--dump-weights", str(tmp_path / "weights")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    w0 = torch.load(tmp_path / "weights.rank0", weights_only=True)
    w1 = torch.load(tmp_path / "weights.rank1", weights_only=True)
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == [2, 4, 5, 6, 8, 10, 12]             # written once, by rank 0
    # tokens are summed over both ranks: 12 steps x 2 micro-batches x 4 x 16 x 2 ranks
    assert train_steps and [r for r in records if "loss" in r][-1]["tokens"] == 12 * 2 * 4 * 16 * 2
    assert (out / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "best", "step_0000005", "step_0000010", "step_0000012"]
