"""Every ``>>>`` example in the package's docstrings runs here (doctests), so none can go stale.

One test per module that has examples: the modules of the layer folders (``core/``,
``kernels/``, ``mamba_bio/``, ``mamba_audio/``, ``pipelines/``, ``bench/``, imported as
``mambaseq.<layer>.<module>``) and the layer packages ``mambaseq/*.py`` themselves. Each runs
in a fresh working directory (examples that write files write there), with torch seeded and
on one thread (conftest's ``seeded_one_thread``).
"""
import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "kernels", "mamba_bio", "mamba_audio", "pipelines", "bench")
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules():
    """(import name, source file) of every module of the package."""
    yield "mambaseq", ROOT / "mambaseq" / "__init__.py"
    for layer in LAYERS:
        yield f"mambaseq.{layer}", ROOT / "mambaseq" / f"{layer}.py"
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = path.relative_to(ROOT / layer).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(("mambaseq", layer) + parts), path


# Modules whose source holds a ">>> " line (read, not imported: collecting the tests imports
# nothing of the package).
MODULES = [name for name, path in _modules() if ">>> " in path.read_text(encoding="utf-8")]


def test_modules_found():
    """The collection sees the layers' modules (a wrong root would silently test nothing)."""
    assert {"mambaseq", "mambaseq.core.heads", "mambaseq.mamba_bio.tokenizers",
            "mambaseq.pipelines.genome"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch, seeded_one_thread):
    """The module's examples pass; the failures are printed (captured output) with the
    example, what it printed and what the docstring says."""
    if name.startswith("mambaseq.kernels.triton_") and importlib.util.find_spec("triton") is None:
        pytest.skip(f"{name} imports triton, which is not installed (the GPU kernels need it)")
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module, name)
    assert any(t.examples for t in tests), \
        f"{name} has '>>> ' lines but doctest finds no examples in it"
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
