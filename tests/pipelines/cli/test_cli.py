"""The command line: registry, lazy imports, --config with overrides, config.json, errors."""
import json
import textwrap

import pytest

from mambaseq.pipelines import cli

FAKE = '''
import dataclasses
import json

from mambaseq.pipelines.training import TrainConfig, option, positive_int, run_folder

HELP = "a fake training subcommand"


@dataclasses.dataclass(kw_only=True)
class FakeConfig(TrainConfig):
    seq_len: int = option(4000, rule=positive_int, help="tokens per sequence")
    fasta: str = option(help="input FASTA")
    mode: str = option("a", choices=("a", "b"), help="a mode")
    flag: bool = option(False, help="a flag")


CONFIG = FakeConfig


def run(config):
    if config.fasta == "boom":
        raise ValueError("genome boom.fa is empty")
    with run_folder(config, "fake", training=True) as out:
        with open(out / "seen.json", "w") as f:
            json.dump({"cfg": {"lr": config.lr, "batch_size": config.batch_size,
                               "seq_len": config.seq_len, "steps": config.steps,
                               "schedule": [list(s) for s in config.stages]},
                       "fasta": config.fasta, "mode": config.mode, "flag": config.flag}, f)
    return 3 if config.mode == "b" else None
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Registers ``fake`` (a working subcommand) and ``broken`` (fails on import)."""
    pkg = tmp_path / "fakecmds"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cmd_fake.py").write_text(FAKE)
    (pkg / "cmd_broken.py").write_text('HELP = "broken on import"\nimport not_a_real_module_xyz\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "fake", "fakecmds.cmd_fake")
    monkeypatch.setitem(cli.COMMANDS, "broken", "fakecmds.cmd_broken")
    monkeypatch.setitem(cli.COMMANDS, "missing", "fakecmds.cmd_missing")
    return tmp_path


def _seen(out):
    return json.loads((out / "seen.json").read_text())


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_help_of_every_subcommand(name, capsys):
    """Every registered subcommand: one whose module is gone fails here, not silently."""
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert f"mambaseq {name}" in text and "--config" in text


def test_top_level_help_lists_every_subcommand(fake, capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in text
    assert "a fake training subcommand" in text
    assert "broken on import" in text            # listed without being imported


def test_config_file_then_command_line_override(fake, capsys):
    out = fake / "run"
    config = fake / "job.yaml"
    config.write_text(textwrap.dedent(f"""\
        out: {out}
        fasta: from_config.fa
        lr: 3e-4          # YAML reads this as a string; argparse's type converts it
        batch-size: 2
        flag: true
        seq_len_schedule: "10:128:4"
        """))
    assert cli.main(["fake", "--config", str(config), "--batch-size", "5"]) == 0
    seen = _seen(out)
    assert seen["cfg"] == {"lr": 3e-4, "batch_size": 5, "seq_len": 4000, "steps": 1000,
                           "schedule": [[10, 128, 4]]}
    assert seen["fasta"] == "from_config.fa" and seen["flag"] is True

    saved = json.loads((out / "config.json").read_text())
    assert saved["command"] == "fake" and saved["batch_size"] == 5 and saved["lr"] == 3e-4
    assert "config" not in saved and "debug" not in saved
    # the saved config is itself a valid --config (JSON), overridable again
    assert cli.main(["fake", "--config", str(out / "config.json"), "--mode", "b"]) == 3
    assert _seen(out)["cfg"]["batch_size"] == 5 and _seen(out)["mode"] == "b"


@pytest.mark.parametrize("content, message", [
    ({"fasta": "x.fa", "no_such_option": 1}, "unknown option 'no_such_option'"),
    ({"fasta": "x.fa", "steps": "many"}, "invalid value 'many'"),
    ({"fasta": "x.fa", "mode": "c"}, "'c' is not one of"),
    ({"fasta": "x.fa", "flag": "yes"}, "expected true or false"),
    ({"fasta": "x.fa", "steps": True}, "option 'steps': expected a single positive_int"),
    ({"fasta": "x.fa", "seq_len": 128.7}, "option 'seq_len': invalid value 128.7"),
    ({"fasta": "x.fa", "lr": "nan"}, "option 'lr': invalid value 'nan': must be a finite"),
    ({"fasta": "x.fa", "batch_size": [2]}, "option 'batch_size': expected a single"),
    ({"command": "train-audio"}, "is for subcommand 'train-audio'"),
    ([1, 2], "must hold a mapping"),
])
def test_bad_config_is_one_clear_line(fake, capsys, content, message):
    config = fake / "bad.json"
    config.write_text(json.dumps(content))
    assert cli.main(["fake", "--config", str(config), "--out", str(fake / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.startswith("mambaseq fake: error:")


def test_missing_and_broken_subcommands_only_affect_themselves(fake, capsys):
    assert cli.main(["missing", "--help"]) == 2
    assert "fakecmds.cmd_missing is not written yet" in capsys.readouterr().err
    assert cli.main(["broken"]) == 2
    assert "not_a_real_module_xyz" in capsys.readouterr().err
    assert cli.main(["nope"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err
    assert cli.main(["fake", "--out", str(fake / "o"), "--fasta", "x.fa"]) == 0


def test_errors_are_one_line_unless_debug(fake, capsys):
    args = ["fake", "--out", str(fake / "o"), "--fasta", "boom"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err == "mambaseq fake: error: genome boom.fa is empty\n"
    assert cli.main(args + ["--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_unwritable_out_dir(fake, capsys):
    blocker = fake / "a_file"
    blocker.write_text("")
    assert cli.main(["fake", "--out", str(blocker / "run"), "--fasta", "x.fa"]) == 1
    assert "is not writable" in capsys.readouterr().err




@pytest.mark.parametrize("argv, option", [
    (["pretrain-genome", "--fasta", "x.fa", "--out", "o", "--lr", "nan"], "--lr"),
    (["pretrain-genome", "--fasta", "x.fa", "--out", "o", "--val-fraction", "1.5"],
     "--val-fraction"),
    (["train-audio", "--data", "d", "--out", "o", "--speaker-regex", "(unclosed"],
     "--speaker-regex"),
    (["generate-audio", "--model", "m", "--out", "o", "--n", "0"], "--n"),
    (["generate-audio", "--model", "m", "--out", "o", "--seconds", "-1"], "--seconds"),
    (["eval-genome", "--model", "m", "--fasta", "x.fa", "--chunk-len", "0"], "--chunk-len"),
])
def test_bad_option_values_are_refused_by_name(argv, option, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_device_cuda_without_a_gpu_is_named(capsys, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert cli.main(["eval-genome", "--model", str(tmp_path), "--fasta", "x.fa",
                     "--device", "cuda"]) == 1
    assert "device cuda was given but no CUDA GPU is visible" in capsys.readouterr().err


def test_the_top_level_help_imports_no_job_nor_torch():
    """``mambaseq --help`` lists the commands from their sources, without importing torch."""
    import subprocess
    import sys
    code = ("import sys\nfrom mambaseq.pipelines import cli\nassert cli.main(['--help']) == 0\n"
            "print(sorted(m for m in ('torch', 'numpy', 'mambaseq.pipelines.genome') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
