"""Ahead-of-time compiles of the Triton kernels for real GPUs (``bench.triton_aot``), no GPU.

The compiles run in a subprocess without TRITON_INTERPRET: other test modules switch the
interpreter on at import, and triton decides between compiled and interpreted kernels
when they are defined.
"""
import json
import os
import subprocess
import sys

import pytest

from mambaseq.kernels import triton_scan, triton_state_update

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def run_aot(*args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "mambaseq.bench.triton_aot", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_aot_enumerates_every_scan_configuration_the_launcher_can_choose():
    listed = {config for _, _, config in triton_scan.scan_configs()}
    for d_state in range(1, triton_scan.MAX_D_STATE + 1):
        for channels_per_group in (1, 2, 3, 4, 6, 12, 16, 48, 1536):
            assert triton_scan.scan_config(d_state, channels_per_group) in listed
    for d_state, channels_per_group, config in triton_scan.scan_configs():
        assert triton_scan.scan_config(d_state, channels_per_group) == config


def test_aot_enumerates_every_step_configuration_the_launcher_can_choose():
    listed = {config for _, _, config in triton_state_update.state_update_configs()}
    for d_state in range(1, triton_scan.MAX_D_STATE + 1, 7):
        for d_inner in (1, 3, 5, 8, 24, 100, 2048):
            assert triton_state_update.state_update_config(d_inner, d_state) in listed


def test_scan_tiles_stay_within_the_register_budget():
    """The budgets that kept every compile free of spills (bench/results/triton_aot.json)."""
    for _, _, c in triton_scan.scan_configs():
        assert c.block_e_fwd * c.block_n * c.chunk <= triton_scan.TILE_ELEMENTS_FWD
        assert c.block_e_bwd * c.block_n * c.chunk <= triton_scan.TILE_ELEMENTS_BWD


def test_too_large_a_state_is_refused():
    with pytest.raises(ValueError, match="d_state <= 256, got 257"):
        triton_scan.scan_config(257, 4)
    with pytest.raises(ValueError, match="d_state <= 256"):
        triton_state_update.state_update_config(64, 512)


def test_ptxas_log_is_parsed():
    from mambaseq.bench.triton_aot import parse_ptxas_log

    log = ("ptxas info    : Compiling entry function '_scan_bwd_kernel' for 'sm_90a'\n"
           "ptxas info    : Function properties for _scan_bwd_kernel\n"
           "    528 bytes stack frame, 612 bytes spill stores, 608 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 528 bytes cumulative stack size\n")
    assert parse_ptxas_log(log) == (255, 612, 528)
    with pytest.raises(RuntimeError, match="no register/spill figures"):
        parse_ptxas_log("ptxas info    : Compiling entry function")


def test_default_configurations_compile_for_sm90_without_spills(tmp_path):
    """The configurations the launchers choose for core.Mamba's defaults (d_state 16),
    fp32 and bf16, compiled for an H100: no failure, no spill, registers within 255."""
    out = tmp_path / "aot.json"
    result = run_aot("--arch", "sm_90", "--configs", "default", "--dtype", "fp32", "bf16",
                     "--json", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert {(r["kernel"], r["dtype"]) for r in rows} == {
        (k, d) for k in ("scan_fwd", "scan_bwd", "state_update") for d in ("fp32", "bf16")}
    for row in rows:
        assert set(row) >= {"kernel", "arch", "dtype", "meta", "n_regs", "n_spills", "shared",
                            "ok"}
        assert row["ok"] and row["arch"] == "sm_90", row
        assert row["n_spills"] == 0 and 0 < row["n_regs"] <= 255, row
        assert row["shared"] <= 227 * 1024, row        # an H100's shared memory per block
    assert "6 compiles: 0 failed, 0 spill" in result.stdout


@pytest.mark.slow
def test_every_configuration_compiles_without_spills(tmp_path):
    """The full sweep: every configuration, dtype and architecture (about 40 minutes on
    the 2-core development machine)."""
    out = tmp_path / "aot.json"
    result = run_aot("--json", str(out), timeout=7200)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = json.loads(out.read_text())
    assert rows and all(r["ok"] and r["n_spills"] == 0 for r in rows), \
        [r for r in rows if not (r["ok"] and r["n_spills"] == 0)]


def test_refuses_under_the_interpreter(monkeypatch):
    """Kernels defined under TRITON_INTERPRET=1 are not JITFunctions and cannot be compiled."""
    from mambaseq.bench import triton_aot

    monkeypatch.setattr(triton_scan, "_scan_fwd_kernel", object())
    with pytest.raises(SystemExit, match="triton_aot: TRITON_INTERPRET is set"):
        triton_aot.main(["--configs", "default"])


def test_json_in_a_missing_folder_is_named(capsys):
    from mambaseq.bench import triton_aot

    with pytest.raises(SystemExit) as exit_info:
        triton_aot.parse_args(["--json", "no/such/folder/aot.json"])
    assert exit_info.value.code == 2
    assert "--json no/such/folder/aot.json: folder no/such/folder does not exist" in \
        capsys.readouterr().err
