"""The command line is a thin layer: nothing below it imports argparse or names a flag, and
each command file only turns flags into a config, calls one job and prints."""
import ast
from pathlib import Path

import pytest

from mambaseq.pipelines import cli

ROOT = Path(__file__).resolve().parents[2]
BELOW_THE_CLI = ["core", "kernels", "mamba_bio", "mamba_audio", "pipelines"]


def library_modules():
    """Every module of the layers below the command line (pipelines/cli/ left out)."""
    for layer in BELOW_THE_CLI:
        for path in sorted((ROOT / layer).rglob("*.py")):
            if "cli" not in path.relative_to(ROOT / layer).parts[:1]:
                yield path


def docstring_nodes(tree):
    """The string constants that are docstrings (of the module, classes and functions)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                yield body[0].value


@pytest.mark.parametrize("path", list(library_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_below_the_cli_imports_argparse_or_names_a_flag(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert "argparse" not in names, f"{path}:{node.lineno} imports argparse"
    # the strings a flag may be: docstrings (usage examples), a config field's declared
    # spelling (option(..., flags=("--from",))), items of an argv list (a compiler's --version)
    allowed = {id(n) for n in docstring_nodes(tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "flags":
            allowed |= {id(n) for n in ast.walk(node.value)}
        if isinstance(node, (ast.List, ast.Tuple)):
            allowed |= {id(n) for n in node.elts}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in allowed):
            words = [w for w in node.value.replace("(", " ").split() if w.startswith("--")
                     and len(w) > 2 and w[2].isalpha()]
            assert not words, f"{path}:{node.lineno} names the flag {words[0]} in {node.value!r}"


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_file_is_a_thin_layer(name):
    path = ROOT / "pipelines" / "cli" / (name.replace("-", "_") + ".py")
    text = path.read_text()
    assert len(text.splitlines()) <= 100, f"{path}: {len(text.splitlines())} lines"
    tree = ast.parse(text)
    functions = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert functions == ["run"], f"{path} defines {functions}: the logic belongs in a job"
    module = cli.load_command(name)
    assert module.CONFIG.__module__.startswith("mambaseq.pipelines.")
    assert not module.CONFIG.__module__.startswith("mambaseq.pipelines.cli")
