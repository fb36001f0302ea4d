"""``bench.gpu_check`` on a machine without a GPU: its arguments, its refusal, and its
numerics checks run on tiny shapes under the Triton interpreter (set before the kernels
are imported, as in tests/test_triton_scan.py)."""
import os

os.environ["TRITON_INTERPRET"] = "1"

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mambaseq.bench import gpu_check  # noqa: E402
from mambaseq.kernels import triton_scan  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
TINY_SCAN = [(1, 4, 5, 40, 2)]     # (batch, d_inner, d_state, length, groups): N padded, grouped
TINY_STEP = [(2, 4, 4, 2)]         # (batch, d_inner, d_state, groups)


def test_refuses_without_a_gpu_in_one_line(tmp_path):
    out = tmp_path / "check.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run([sys.executable, "-m", "mambaseq.bench.gpu_check", "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); "
        "run it on a machine with an NVIDIA GPU"]
    assert not out.exists()


def test_refuses_under_the_interpreter(tmp_path):
    assert gpu_check.main(["--out", str(tmp_path / "x.json")]) == 1
    assert gpu_check.refusal().startswith("gpu_check: TRITON_INTERPRET is set")


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "0"], "--lengths must be >= 1"),
    (["--d-inner", "100"], "--d-inner a multiple of 64"),
    (["--train-log2-length", "30"], "--train-log2-length must be in 10..24"),
    (["--out", "no/such/folder/x.json"], "folder no/such/folder does not exist"),
    (["--lengths", "two"], "invalid int value"),
])
def test_bad_arguments_are_named(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_parse(tmp_path):
    args = gpu_check.parse_args(["--out", str(tmp_path / "x.json")])
    assert args.lengths == [2048, 8192, 32768, 65536] and args.train_log2_length == 20
    assert not args.skip_timings and not args.skip_train


@pytest.mark.parametrize("dtype", ["fp32", pytest.param("bf16", marks=pytest.mark.slow)])
def test_numerics_pass_for_the_kernels_on_cpu(dtype):
    rows = gpu_check.numerics("cpu", (dtype,), TINY_SCAN, TINY_STEP)
    whats = {(r["kernel"], r["what"]) for r in rows}
    assert {("scan", "y"), ("scan", "final_state"), ("scan", "dinitial_state"),
            ("scan", "dB"), ("scan", "chunked_state"), ("state_update", "state"),
            ("state_update", "steps_vs_scan_y")} <= whats
    assert len(rows) == len(TINY_SCAN) * 13 + len(TINY_STEP) * 4
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]


def test_numerics_catch_a_wrong_kernel(monkeypatch):
    """A scan whose output is 1% off fails the fp32 check of y (not of the final state)."""
    exact = triton_scan.selective_scan

    def off_by_one_percent(*args, **kwargs):
        y, h = exact(*args, **kwargs)
        return y * 1.01, h

    monkeypatch.setattr(triton_scan, "selective_scan", off_by_one_percent)
    rows = gpu_check.numerics("cpu", ("fp32",), TINY_SCAN, [])
    failed = {r["what"] for r in rows if not r["ok"]}
    assert "y" in failed and "final_state" not in failed
    assert torch.isfinite(torch.tensor([r["error"] for r in rows])).all()
