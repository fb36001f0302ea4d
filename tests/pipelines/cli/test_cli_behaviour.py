"""The command line as a terminal sees it: the subcommand listing, an error after a progress
bar, SIGTERM, and a reader of stdout that goes away."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from mambaseq.pipelines.training import checkpoints as ckpt
from mambaseq.pipelines import cli

TINY = ["--seq-len", "64", "--batch-size", "2", "--d-model", "16", "--n-layer", "1",
        "--device", "cpu", "--val-bases", "1000"]


def _genome(tmp_path):
    """A random 6 kb FASTA (no shared data needed)."""
    rng = random.Random(0)
    path = tmp_path / "g.fa"
    path.write_text(">g\n" + "".join(rng.choice("ACGT") for _ in range(6000)) + "\n")
    return path


def _mambaseq(*args):
    return [sys.executable, "-m", "mambaseq.pipelines", *map(str, args)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_the_listing_keeps_every_name_apart_from_its_summary():
    lines = cli._top_help().splitlines()
    for name in cli.COMMANDS:
        (line,) = [line for line in lines if line.startswith(f"  {name} ")]
        assert re.match(rf"  {name}  +\S", line), line
    columns = {len(re.match(r"  \S+ +", line).group()) for line in lines
               if line.startswith("  ") and line.split()[0] in cli.COMMANDS}
    assert len(columns) == 1                                  # one column for the summaries


BARRED = '''
from tqdm.auto import tqdm

from mambaseq.pipelines.training import Config

HELP = "fails halfway through a progress bar"
CONFIG = Config

def run(config):
    bar = tqdm(total=10, unit="step")
    bar.update(4)
    raise ValueError("input x.fa is empty at record 3")
'''


def test_an_error_is_printed_after_the_progress_bar_on_a_line_of_its_own(tmp_path,
                                                                          monkeypatch, capsys):
    (tmp_path / "barcmds").mkdir()
    (tmp_path / "barcmds" / "__init__.py").write_text("")
    (tmp_path / "barcmds" / "cmd_barred.py").write_text(BARRED)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "barred", "barcmds.cmd_barred")
    assert cli.main(["barred"]) == 1
    err = capsys.readouterr().err
    assert "4/10" in err                                      # the bar was drawn
    assert err.endswith("\nmambaseq barred: error: input x.fa is empty at record 3\n"), err


NESTED = '''
import dataclasses, os, signal
from mambaseq.pipelines import cli
from mambaseq.pipelines.training import Config, option

HELP = "runs another command, as demo does"
ran = []

@dataclasses.dataclass(kw_only=True)
class NestedConfig(Config):
    signal: str = option("SIGTERM", help="the signal the inner command sends itself")
    inner: bool = option(False, help="be the inner command")

CONFIG = NestedConfig

def run(config):
    if config.inner:
        os.kill(os.getpid(), getattr(signal, config.signal))
        ran.append("inner went on")
    else:
        cli.main(["inner", "--inner", "--signal", config.signal])
        ran.append("outer went on")
'''


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_a_command_and_the_command_that_runs_it(tmp_path, monkeypatch, capsys,
                                                               sig, code):
    (tmp_path / "nestcmds").mkdir()
    (tmp_path / "nestcmds" / "__init__.py").write_text("")
    (tmp_path / "nestcmds" / "cmd_nested.py").write_text(NESTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("outer", "inner"):
        monkeypatch.setitem(cli.COMMANDS, name, "nestcmds.cmd_nested")
    monkeypatch.delitem(sys.modules, "nestcmds.cmd_nested", raising=False)

    def not_taken(*_):
        pytest.fail("the command did not take SIGTERM")        # rather than kill pytest

    before = signal.signal(signal.SIGTERM, not_taken)
    # Ctrl-C raises KeyboardInterrupt, as in a terminal (a shell starts background jobs, CI's
    # among them, with SIGINT ignored)
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli.main(["outer", "--signal", sig]) == code
        assert signal.getsignal(signal.SIGTERM) is not_taken            # handed back
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, before_int)
    assert sys.modules["nestcmds.cmd_nested"].ran == []            # nobody went on
    stopped = "interrupted by SIGTERM" if sig == "SIGTERM" else "interrupted"
    assert capsys.readouterr().err == f"mambaseq outer: error: {stopped}\n"


def test_sigterm_stops_a_training_run_as_ctrl_c_does_and_it_resumes(tmp_path):
    fasta, out = _genome(tmp_path), tmp_path / "lm"
    run = subprocess.Popen(_mambaseq("pretrain-genome", "--fasta", fasta, "--out", out,
                                     "--steps", 100000, "--save-every", 5, *TINY),
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while ckpt.latest_checkpoint(out / "checkpoints") is None:
        assert run.poll() is None, run.communicate()[1][-2000:]
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.endswith("\nmambaseq pretrain-genome: error: interrupted by SIGTERM "
                           "(continue with --resume)\n"), stderr[-2000:]
    assert not (out / "model").exists()
    stopped_at = ckpt.load_state(ckpt.latest_checkpoint(out / "checkpoints"))["step"]

    resumed = subprocess.run(
        _mambaseq("pretrain-genome", "--fasta", fasta, "--out", out, "--resume",
                  "--steps", stopped_at + 2, "--save-every", 5, *TINY),
        env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {stopped_at}" in resumed.stderr                 # the resume log line
    assert (out / "model").is_dir() and (out / "report.json").is_file()


def _closed_pipe():
    """The write end of a pipe whose reader has already gone (``| head -0``)."""
    read, write = os.pipe()
    os.close(read)
    return write


def test_a_reader_of_stdout_that_went_away_loses_no_file(tmp_path):
    out = tmp_path / "lm"
    stdout = _closed_pipe()
    try:
        run = subprocess.run(_mambaseq("pretrain-genome", "--fasta", _genome(tmp_path),
                                       "--out", out, "--steps", 2, *TINY),
                             env=ENV, stdout=stdout, stderr=subprocess.PIPE, text=True,
                             timeout=300)
    finally:
        os.close(stdout)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Broken pipe" not in run.stderr and "BrokenPipeError" not in run.stderr
    assert (out / "report.json").is_file() and (out / "model").is_dir()


def test_the_listing_into_a_closed_pipe_exits_quietly():
    stdout = _closed_pipe()
    try:
        run = subprocess.run(_mambaseq("--help"), stdout=stdout, stderr=subprocess.PIPE,
                             text=True, timeout=60)
    finally:
        os.close(stdout)
    assert run.returncode == 0 and run.stderr == ""
