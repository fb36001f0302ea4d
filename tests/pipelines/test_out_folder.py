"""The --out rule (issue 26, pipelines.out_folder): a command writes only inside its --out,
which is new, empty, or a folder the toolkit made for the same command (a marker says so);
no input is ever an output; nothing the toolkit did not write is replaced or deleted. Each
case runs the real command line on tiny models and checks that the user's files are intact."""
import json
import os

import pytest

from mambaseq.pipelines.training import out_folder
from mambaseq.pipelines.cli import main
from species_data import TINY, simulated_species
from test_predict_species import save_random_classifier

pytestmark = pytest.mark.usefixtures("one_thread_module")

STEPS = ["--steps", "2", "--seq-len", "64", "--val-bases", "300", "--device", "cpu", *TINY]


def snapshot(folder):
    """Every file under ``folder`` (links not followed) -> its bytes; links -> their target."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                found[rel] = open(path, "rb").read()
    return found


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulated_species(tmp_path_factory.mktemp("sim"))[1]


@pytest.fixture(scope="module")
def lm(sim, tmp_path_factory):
    """A 2-step pretrain-genome run, trained into an existing empty folder (allowed)."""
    out = tmp_path_factory.mktemp("run") / "lm"
    out.mkdir()
    assert main(["pretrain-genome", "--fasta", str(sim["a"]), "--out", str(out), *STEPS]) == 0
    return out


def test_a_run_folder_carries_its_marker(lm):
    marker = json.loads((lm / out_folder.MARKER).read_text())
    assert marker == {"kind": "training run", "command": "pretrain-genome"}


# -- 1: convert never deletes a folder it did not write ----------------------------------

def test_convert_refuses_a_folder_of_other_files(lm, tmp_path, capsys):
    m = tmp_path / "m"
    (m / "other").mkdir(parents=True)
    (m / "other" / "w.bin").write_text("k\n")
    (m / "thesis.tex").write_text("t\n")
    before = snapshot(tmp_path)
    assert main(["convert", str(lm / "model"), "--out", str(m)]) == 1
    one_line_error(capsys, f"--out {m} already holds files mambaseq did not write",
                   "give a new or empty folder")
    assert snapshot(tmp_path) == before


def test_convert_again_replaces_only_what_convert_wrote(lm, tmp_path, capsys):
    m = tmp_path / "m"
    assert main(["convert", str(lm / "model"), "--out", str(m)]) == 0
    marker = json.loads((m / out_folder.MARKER).read_text())
    assert marker["command"] == "convert"
    assert marker["files"] == ["config.json", "model.safetensors", "tokenizer.json"]
    (m / "notes.txt").write_text("mine\n")
    # again, as a transformers folder: its files replace convert's, tokenizer.json goes
    assert main(["convert", str(lm / "model"), "--out", str(m), "--to", "hf-mamba"]) == 0
    assert (m / "notes.txt").read_text() == "mine\n"
    assert not (m / "tokenizer.json").exists()
    assert json.loads((m / "config.json").read_text())["model_type"] == "mamba"
    assert sorted(p.name for p in m.iterdir()) == [out_folder.MARKER, "config.json",
                                                   "model.safetensors", "notes.txt"]
    # a file of the user's where convert would write is refused, everything kept
    (m / "tokenizer.json").write_text("my tokenizer\n")
    before = snapshot(tmp_path)
    assert main(["convert", str(lm / "model"), "--out", str(m)]) == 1
    one_line_error(capsys, f"{m / 'tokenizer.json'} was not written by 'mambaseq convert'")
    assert snapshot(tmp_path) == before
    # the source inside the folder, or the folder itself, is never an output
    (m / "tokenizer.json").unlink()
    (m / "src").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (m / "src" / name).write_bytes((lm / "model" / name).read_bytes())
    before = snapshot(tmp_path)
    assert main(["convert", str(m / "src"), "--out", str(m)]) == 1
    one_line_error(capsys, f"--out {m} contains the input {m / 'src'}")
    assert main(["convert", str(m), "--out", str(m / ".." / "m")]) == 1
    one_line_error(capsys, "is an input of this command")
    assert snapshot(tmp_path) == before


def test_convert_into_an_empty_folder_and_a_run_folder(lm, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", str(lm / "model"), "--out", str(empty)]) == 0
    assert (empty / "model.safetensors").is_file()
    before = snapshot(lm)
    assert main(["convert", str(lm / "model"), "--out", str(lm)]) == 1
    one_line_error(capsys, f"--out {lm} contains the input")
    assert main(["convert", str(empty), "--out", str(lm)]) == 1
    one_line_error(capsys, f"--out {lm} holds a training run of 'mambaseq pretrain-genome'")
    assert snapshot(lm) == before


# -- 12: a symbolic link as --out is refused with nothing written -------------------------

def test_convert_refuses_a_symlinked_out(lm, tmp_path, capsys):
    target = tmp_path / "real"
    target.mkdir()
    (target / "keep.txt").write_text("k\n")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    before = snapshot(tmp_path)
    assert main(["convert", str(lm / "model"), "--out", str(link)]) == 1
    one_line_error(capsys, f"--out {link} is a symbolic link")
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_training_refuses_a_symlinked_out(sim, tmp_path, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    assert main(["pretrain-genome", "--fasta", str(sim["a"]), "--out", str(tmp_path / "link"),
                 *STEPS]) == 1
    one_line_error(capsys, "is a symbolic link")
    assert list((tmp_path / "real").iterdir()) == []


# -- 2: a training command never takes over a folder it did not make ----------------------

def test_training_refuses_a_folder_it_did_not_make(sim, tmp_path, capsys):
    p = tmp_path / "p"
    (p / "model").mkdir(parents=True)
    (p / "model" / "w.bin").write_text("x\n")
    (p / "config.json").write_text('{"mine":1}\n')
    before = snapshot(tmp_path)
    assert main(["pretrain-genome", "--fasta", str(sim["a"]), "--out", str(p), *STEPS]) == 1
    one_line_error(capsys, f"--out {p} already holds files mambaseq did not write "
                           "there (config.json, model)")
    assert snapshot(tmp_path) == before


def test_training_refuses_another_commands_folder(lm, sim, tmp_path, capsys):
    """A new run where a run of another command lives, or where a file lies."""
    before = snapshot(lm)
    species = [f"{k}={v}" for k, v in sim.items()]
    assert main(["classify-species", "--species", *species, "--out", str(lm)]) == 1
    one_line_error(capsys, "holds a training run of 'mambaseq pretrain-genome', not of "
                           "classify-species")
    assert snapshot(lm) == before
    assert main(["pretrain-genome", "--fasta", str(sim["a"]), "--out", str(sim["b"]),
                 *STEPS]) == 1
    one_line_error(capsys, f"--out {sim['b']} is a file, not a folder")


def test_folders_of_older_versions_are_known_by_their_config(tmp_path):
    """Before markers, the CLI's config.json named the command: such a folder is the
    command's own, and only its."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"command": "bench", "which": "all"}))
    (old / "scan.md").write_text("### scan\n")
    assert out_folder.check_folder(old, "bench", "benchmark results") == "legacy"
    with pytest.raises(out_folder.OutRefused, match="holds a run of 'mambaseq bench', not of"):
        out_folder.check_folder(old, "generate-audio", "generated audio")
    out_folder.claim_folder(old, "bench", "benchmark results")
    assert out_folder.check_folder(old, "bench", "benchmark results") == "own"
    assert (old / "scan.md").read_text() == "### scan\n"


# -- 11: generate-audio never writes into a training run ----------------------------------

def test_generate_audio_refuses_a_training_run(lm, tmp_path, capsys):
    from mambaseq.mamba_audio import AudioLM
    AudioLM.from_preset("tiny").save_pretrained(tmp_path / "audio_model")   # a real model
    before = snapshot(lm)
    assert main(["generate-audio", "--model", str(tmp_path / "audio_model"), "--out", str(lm),
                 "--n", "1", "--seconds", "0.01", "--device", "cpu"]) == 1
    one_line_error(capsys, "holds a training run of 'mambaseq pretrain-genome', not of "
                           "generate-audio")
    assert snapshot(lm) == before


# -- 3: an input is never an output --------------------------------------------------------

@pytest.fixture
def classifier(tmp_path):
    return save_random_classifier(tmp_path / "cls")


def predict(classifier, fasta, out, *extra):
    return main(["predict-species", "--model", str(classifier), "--fasta", str(fasta),
                 "--out", str(out), "--window", "64", *extra])


def test_predict_species_never_writes_over_an_input(classifier, sim, tmp_path, capsys):
    fasta = tmp_path / "x.fa"
    fasta.write_bytes(sim["a"].read_bytes())
    link = tmp_path / "link.tsv"
    link.symlink_to(fasta)
    hard = tmp_path / "hard.tsv"
    os.link(fasta, hard)
    tsv = tmp_path / "x.tsv"                                  # a FASTA of any name
    tsv.write_bytes(fasta.read_bytes())
    before = snapshot(tmp_path)
    assert predict(classifier, fasta, fasta) == 1
    one_line_error(capsys, f"error: --out {fasta} is an input of this command")
    assert predict(classifier, tsv, tmp_path / "p.tsv", "--summary", str(tsv)) == 1
    one_line_error(capsys, f"error: --summary {tsv} is an input of this command")
    assert predict(classifier, fasta, link) == 1
    one_line_error(capsys, f"error: --out {link} is a symbolic link")
    assert predict(classifier, fasta, hard) == 1
    one_line_error(capsys, f"error: --out {hard} is an input of this command")
    assert predict(classifier, fasta, tmp_path / "p.tsv", "--summary",
                   str(tmp_path / "p.tsv")) == 1
    one_line_error(capsys, "error: out and summary both name")
    assert snapshot(tmp_path) == before


def test_predict_species_replaces_only_its_own_files(classifier, sim, tmp_path, capsys):
    out, summary = tmp_path / "p.tsv", tmp_path / "p.summary.tsv"
    assert predict(classifier, sim["a"], out) == 0
    assert predict(classifier, sim["a"], out) == 0            # its own files: replaced
    assert predict(classifier, sim["a"], out, "--summary", str(tmp_path / "s.json")) == 0
    assert predict(classifier, sim["a"], out, "--summary", str(tmp_path / "s.json")) == 0
    assert summary.is_file()
    capsys.readouterr()
    mine = tmp_path / "mine.tsv"
    mine.write_text("gene\tcount\nx\t1\n")
    assert predict(classifier, sim["a"], mine) == 1
    one_line_error(capsys, f"error: --out {mine} exists and is not a file 'mambaseq "
                           "predict-species' wrote")
    notes = tmp_path / "notes.json"
    notes.write_text('{"a": 1}\n')
    assert predict(classifier, sim["a"], tmp_path / "q.tsv", "--summary", str(notes)) == 1
    one_line_error(capsys, f"error: --summary {notes} exists and is not a file")
    assert mine.read_text() == "gene\tcount\nx\t1\n" and notes.read_text() == '{"a": 1}\n'
    assert not (tmp_path / "q.tsv").exists()


def test_embed_outputs_are_never_inputs_nor_foreign_files(lm, sim, tmp_path, capsys):
    model = lm / "model"
    before = snapshot(lm)
    assert main(["embed", "--model", str(model), "--fasta", str(sim["c"]), "--out",
                 str(tmp_path / "e.npz"), "--per-position", str(model)]) == 1
    one_line_error(capsys, f"--per-position {model} is an input of this command")
    assert snapshot(lm) == before
    mine = tmp_path / "mine.npy"
    mine.write_bytes(b"not numpy")
    assert main(["embed", "--model", str(model), "--fasta", str(sim["c"]), "--out",
                 str(mine)]) == 1
    one_line_error(capsys, f"--out {mine} exists and is not a file 'mambaseq embed' wrote")
    names = tmp_path / "e.names.txt"
    names.write_text("my notes\n")
    assert main(["embed", "--model", str(model), "--fasta", str(sim["c"]), "--out",
                 str(tmp_path / "e.npy")]) == 1
    one_line_error(capsys, f"--out {names} exists and is not a file")
    assert mine.read_bytes() == b"not numpy" and names.read_text() == "my notes\n"
    pos = tmp_path / "pos"
    for _ in range(2):                                       # again: its own files replaced
        assert main(["embed", "--model", str(model), "--fasta", str(sim["c"]), "--out",
                     str(tmp_path / "e.npz"), "--per-position", str(pos)]) == 0
    assert json.loads((pos / out_folder.MARKER).read_text())["command"] == "embed"


@pytest.mark.parametrize("argv", [
    ["pretrain-genome", "--fasta", "missing.fa"],
    ["classify-species", "--species", "a=missing.fa", "b=missing2.fa"],
    ["train-audio", "--data", "missing_folder"],
    ["train-word-classifier", "--data", "missing_folder"],
    ["generate-audio", "--model", "missing_model"],
], ids=lambda a: a[0])
def test_a_missing_input_is_refused_before_the_out_folder_is_made(argv, tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", "out"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0], err
    assert not (tmp_path / "out").exists()
