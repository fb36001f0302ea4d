"""Runs you can trust (issue 17): self-contained model folders, resume that refuses a changed
run, nothing written before the checks, a lock on the run folder, a full disk and a
tampered checkpoint reported by name. Tiny models through the real command line."""
import errno
import importlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from mambaseq import core
from mambaseq.core.model_folder import read_classes
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines.training import checkpoints as ckpt
from mambaseq.pipelines import genome, species
from mambaseq.pipelines.training import distributed
from mambaseq.pipelines.cli import main
from species_data import simulated_species

TINY = ["--d-model", "16", "--n-layer", "1", "--seq-len", "128", "--batch-size", "2",
        "--save-every", "10", "--d-state", "4", "--warmup-steps", "1", "--log-every", "5",
        "--device", "cpu"]
MODEL_FOLDERS = ("model", "checkpoints/step_0000010", "checkpoints/best")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulated_species(tmp_path_factory.mktemp("sim"))[1]


def pretrain(sim, out, *extra, steps=10):
    return main(["pretrain-genome", "--fasta", str(sim["a"]), "--out", str(out),
                 "--steps", str(steps), "--val-bases", "300", *TINY, *extra])


@pytest.fixture(scope="module")
def run10(sim, tmp_path_factory):
    """A finished 10-step pretrain-genome run (clm)."""
    out = tmp_path_factory.mktemp("run") / "lm"
    assert pretrain(sim, out) == 0
    return out


def _tiny_lm():
    return core.MambaLM(core.MambaLMConfig(vocab_size=9, d_model=8, n_layer=1, d_state=4))


def snapshot(out):
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


# -- 7: every model folder is self-contained ----------------------------------------------

def test_every_model_folder_carries_its_tokenizer(run10, tmp_path, sim, capsys):
    for folder in MODEL_FOLDERS:
        path = run10 / folder
        assert CharTokenizer.load(path).to_config() == {"type": "char", "strict": False,
                                                        "uppercase": True}, folder
        assert isinstance(core.load_pretrained(path), core.MambaLM)
    # a folder without its tokenizer is refused by name, never read with a default one
    bare = tmp_path / "bare"
    core.load_pretrained(run10 / "model").save_pretrained(bare)
    assert main(["eval-genome", "--model", str(bare), "--fasta", str(sim["b"])]) == 1
    assert f"{bare / 'tokenizer.json'}: missing" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        CharTokenizer.load(bare)


def test_classifier_folders_carry_class_names(sim, tmp_path):
    out = tmp_path / "cls"
    species = [f"{k}={v}" for k, v in sim.items()]
    assert main(["classify-species", "--species", *species, "--out", str(out), "--steps", "10",
                 "--eval-every", "10", "--eval-per-class", "2", "--baseline-per-class", "4",
                 "--kmer", "1", *TINY]) == 0
    for folder in MODEL_FOLDERS:
        assert read_classes(out / folder) == ["a", "b", "c"], folder
        assert CharTokenizer.load(out / folder).strict is False
    (out / "model" / "classes.json").write_text('["a", "a"]')
    with pytest.raises(ValueError, match="classes.json: expected a non-empty list of distinct"):
        read_classes(out / "model")


# -- 1, 2, 3: resume and reruns ------------------------------------------------------------

@pytest.mark.parametrize("change, option", [(["--seq-len", "64"], "--seq-len"),
                                            (["--d-model", "32"], "--d-model"),
                                            (["--lr", "0.01"], "--lr"),
                                            (["--seed", "3"], "--seed")])
def test_resume_with_other_options_is_refused_before_any_write(run10, sim, capsys, change,
                                                               option):
    before = snapshot(run10)
    assert pretrain(sim, run10, "--resume", *change) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"resume: {option[2:].replace('-', '_')} is" in err
    assert str(run10 / "config.json") in err and "(only steps, save_every" in err
    assert snapshot(run10) == before                          # config.json not overwritten


def test_resume_refuses_another_fasta(run10, sim, capsys):
    before = snapshot(run10)
    assert main(["pretrain-genome", "--fasta", str(sim["b"]), "--out", str(run10), "--steps",
                 "10", "--val-bases", "300", "--resume", *TINY]) == 1
    assert "resume: fasta is" in capsys.readouterr().err
    assert snapshot(run10) == before


def test_new_run_on_an_existing_run_writes_nothing(run10, sim, capsys):
    before = snapshot(run10)
    assert pretrain(sim, run10, "--lr", "0.01") == 1
    assert "already holds checkpoints; resume that run" in capsys.readouterr().err
    assert snapshot(run10) == before


def test_resume_of_a_finished_run_keeps_the_report(run10, sim):
    """Also what a kill after the last checkpoint leaves: no model/, no report yet."""
    import shutil
    before = json.loads((run10 / "report.json").read_text())
    assert pretrain(sim, run10, "--resume") == 0
    after = json.loads((run10 / "report.json").read_text())
    assert after["train_loss"] is not None and after["train_loss"] == before["train_loss"]
    shutil.rmtree(run10 / "model")
    (run10 / "report.json").unlink()
    assert pretrain(sim, run10, "--resume") == 0
    assert CharTokenizer.load(run10 / "model").strict is False
    after = json.loads((run10 / "report.json").read_text())
    assert after["train_loss"] is not None and after["train_loss"] == before["train_loss"]
    assert after["val"] == before["val"] != {}


def test_resume_may_raise_steps(sim, tmp_path, capsys):
    out = tmp_path / "lm"
    assert pretrain(sim, out) == 0
    capsys.readouterr()
    assert pretrain(sim, out, "--resume", steps=12) == 0
    captured = capsys.readouterr()
    assert "at step 10" in captured.out + captured.err
    assert json.loads((out / "report.json").read_text())["steps"] == 12
    assert json.loads((out / "config.json").read_text())["steps"] == 12


# -- 4: one run per folder ----------------------------------------------------------------

def test_second_run_on_a_locked_folder_refuses_at_once(sim, tmp_path, capsys):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from mambaseq.pipelines.training.run_lock import lock_run_dir\n"
         f"with lock_run_dir({str(out)!r}):\n"
         "    print('locked', flush=True)\n"
         "    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert pretrain(sim, out) == 1
        err = capsys.readouterr().err
        assert f"run folder {out.resolve()} is in use by pid {holder.pid}" in err
        assert not (out / "config.json").exists() and not (out / "checkpoints").exists()
    finally:
        holder.communicate("")
    assert pretrain(sim, out, steps=1) == 0                   # released when the holder ends


# -- 5: a full disk ----------------------------------------------------------------------

def test_disk_full_during_a_checkpoint_names_the_path(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    model = _tiny_lm()
    ckpt.write_checkpoint(root, "step_0000005", model, {"step": 5}, {}, {})
    before = snapshot(root)

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(OSError, match=f"no space left on device while writing "
                                      f"{root / 'step_0000010'}"):
        ckpt.write_checkpoint(root, "step_0000010", model, {"step": 10}, {}, {})
    monkeypatch.undo()
    assert snapshot(root) == before                           # no .tmp-, old one intact
    assert ckpt.load_state(ckpt.latest_checkpoint(root)) == {"step": 5}


def _mount_tmpfs(path, size):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                                            "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("needs root and mount to fill a real filesystem")


def test_real_full_filesystem(tmp_path):
    """On a 256 KiB tmpfs: the safetensors write and the state write both run out of space."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "256k")
    try:
        root = disk / "checkpoints"
        ckpt.write_checkpoint(root, "step_0000005", _tiny_lm(), {"step": 5}, {}, {})
        before = snapshot(root)
        big = core.MambaLM(core.MambaLMConfig(vocab_size=9, d_model=256, n_layer=2))
        for model, state in ((big, {"step": 10}),
                             (_tiny_lm(), {"step": 10, "big": torch.zeros(100_000)})):
            with pytest.raises(OSError, match="no space left on device while writing"):
                ckpt.write_checkpoint(root, "step_0000010", model, state, {}, {})
            assert snapshot(root) == before
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# -- 9: a tampered trainer state -----------------------------------------------------------

class Payload:
    """Stands in for an object a stranger's pickle would rebuild (and run code with)."""


def test_tampered_trainer_state_is_not_trusted(run10, sim, capsys, tmp_path):
    import shutil
    out = tmp_path / "tampered"
    shutil.copytree(run10, out)
    state = out / "checkpoints" / "step_0000010" / ckpt.STATE_FILE
    torch.save({"step": 10, "evil": Payload()}, state)
    with pytest.raises(ValueError, match="not trusted") as info:
        ckpt.load_state(state.parent)
    assert str(state) in str(info.value) and "weights_only" not in str(info.value)
    assert pretrain(sim, out, "--resume", steps=12) == 1
    err = capsys.readouterr().err
    assert f"{state}: checkpoint not trusted" in err and "weights_only" not in err


# -- 6: only the main process writes -------------------------------------------------------

def test_only_the_main_process_writes_reports(sim, tmp_path, monkeypatch):
    run_folder = importlib.import_module("mambaseq.pipelines.training.run_folders")
    for module in (distributed, run_folder, genome, species):
        monkeypatch.setattr(module, "is_main_process", lambda: False)
    out = tmp_path / "rank1"
    assert pretrain(sim, out, steps=1) == 0
    assert not (out / "config.json").exists() and not (out / "report.json").exists()
    cls = tmp_path / "cls_rank1"
    assert main(["classify-species", "--species", f"a={sim['a']}", f"b={sim['b']}", "--out",
                 str(cls), "--steps", "1", "--eval-per-class", "2", "--baseline-per-class",
                 "4", "--kmer", "1", *TINY]) == 0
    assert not (cls / "report.json").exists() and not (cls / "confusion.png").exists()


# -- 12: errors in the right place ---------------------------------------------------------

def test_strict_names_the_file_and_record_of_a_bad_validation_base(tmp_path, capsys):
    rng = np.random.default_rng(0)
    bases = "".join(rng.choice(list("ACGT"), 3000))
    fasta = tmp_path / "iupac.fa"
    fasta.write_text(f">chrQ\n{bases[:2900]}R{bases[2900:]}\n")     # R in the val split
    assert main(["pretrain-genome", "--fasta", str(fasta), "--out", str(tmp_path / "o"),
                 "--strict", "--split-by", "position", "--val-bases", "3000", "--steps", "1",
                 *TINY]) == 1
    err = capsys.readouterr().err
    assert f"unknown base 'R' at position 199 in {fasta}:chrQ:2701" in err   # 2701 + 199 = 2900
