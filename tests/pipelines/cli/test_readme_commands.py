"""Every ``mambaseq ...`` command the README shows still parses into its job's config: the
redesign kept the flags (the files it names need not exist; nothing runs)."""
import shlex
from pathlib import Path

import pytest

from mambaseq.pipelines import cli
from mambaseq.pipelines.cli.options import config_from_args

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_commands() -> list[list[str]]:
    """The argv (after ``mambaseq``) of every command line in the README's bash blocks,
    continuation lines joined, comments dropped, ``$VARS`` replaced by a value."""
    commands, in_bash, line = [], False, ""
    for raw in README.read_text().splitlines():
        if raw.startswith("```"):
            in_bash = raw.strip() == "```bash"
            continue
        if not in_bash:
            continue
        line += raw.split(" #")[0].rstrip().removesuffix("\\") + " "
        if raw.rstrip().endswith("\\"):
            continue
        text, line = line.strip(), ""
        if not text.removeprefix("OMP_NUM_THREADS=1 ").startswith("mambaseq "):
            continue                                      # another program, or shell code
        words = shlex.split(text.replace("$SPECIES", "a=a.fa b=b.fa").replace("$SIX", "a=a.fa b=b.fa")
                            .replace("$SC", "sc").replace('"$RX"', "x").replace("$RX", "x"))
        if "mambaseq" in words:
            rest = words[words.index("mambaseq") + 1:]
            if rest and rest[0] in cli.COMMANDS and "--help" not in rest:
                commands.append(rest)
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_most_commands():
    assert len(COMMANDS) >= 20
    assert {c[0] for c in COMMANDS} >= {"pretrain-genome", "eval-genome", "classify-species",
                                        "predict-species", "embed", "train-audio",
                                        "generate-audio", "convert"}


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses_into_its_config(argv):
    if "--config" in argv:
        pytest.skip("reads options from a file the README only names")
    module = cli.load_command(argv[0])
    args = cli.build_parser(argv[0], module).parse_args(argv[1:])
    assert isinstance(config_from_args(module.CONFIG, args), module.CONFIG)
