"""Every ``>>>`` example in the package's docstrings runs here (doctests), so none can go stale.

One test per module that has examples: the modules of the layer folders (``core/``,
``kernels/``, ``mamba_bio/``, ``mamba_audio/``, ``pipelines/``, ``bench/``, imported as
``mambaseq.<layer>.<module>``) and the layer packages ``mambaseq/*.py`` themselves. Each runs
in a fresh working directory (examples that write files write there), with torch seeded and
on one thread.
"""
import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "kernels", "mamba_bio", "mamba_audio", "pipelines", "bench")
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names():
    names = ["mambaseq"] + [f"mambaseq.{layer}" for layer in LAYERS]
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = path.relative_to(ROOT / layer).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(("mambaseq", layer) + parts))
    return names


def _has_examples(name):
    """Whether the module's source holds a ``>>>`` line (read, not imported, so that the
    parametrisation does not import every module at collection time)."""
    if name == "mambaseq" or name.count(".") == 1 and name.split(".")[1] in LAYERS:
        path = ROOT / "mambaseq" / ("__init__.py" if name == "mambaseq"
                                    else name.split(".")[1] + ".py")
    else:
        layer, *rest = name.split(".")[1:]
        path = ROOT / layer / Path(*rest).with_suffix(".py")
        if not path.is_file():
            path = ROOT / layer / Path(*rest) / "__init__.py"
    return ">>> " in path.read_text(encoding="utf-8")


MODULES = [name for name in _module_names() if _has_examples(name)]


def test_modules_found():
    """The collection sees the layers' modules (a wrong root would silently test nothing)."""
    assert {"mambaseq", "mambaseq.core.heads", "mambaseq.mamba_bio.tokenizers",
            "mambaseq.pipelines.genome"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    if name.startswith("mambaseq.kernels.triton_") and importlib.util.find_spec("triton") is None:
        pytest.skip(f"{name} imports triton, which is not installed (the GPU kernels need it)")
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module, name)
    examples = sum(len(t.examples) for t in tests)
    assert examples, f"{name} has '>>> ' lines but doctest finds no examples in it"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    try:
        for test in tests:
            runner.run(test)
    finally:
        torch.set_num_threads(threads)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
