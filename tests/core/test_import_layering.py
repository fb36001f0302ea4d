"""Imports in ``core`` and ``kernels`` point one way: every module imports alone in a fresh
process, no module imports (at its top or lazily inside a function) a module that imports it
back, ``kernels`` imports nothing of ``core``, and neither imports a layer above them."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("core", "kernels")
UPPER = ("mamba_bio", "mamba_audio", "pipelines", "bench")


def _modules(layer):
    return sorted(f"mambaseq.{layer}.{p.stem}" for p in (ROOT / layer).glob("*.py"))


def _source(module):
    """The file of ``mambaseq.<layer>`` (the layer's package module) or of one of its modules."""
    parts = module.split(".")
    return ROOT / ("mambaseq" if len(parts) == 2 else parts[1]) / f"{parts[-1]}.py"


def _imports(module):
    """The toolkit modules ``module`` imports anywhere in its file (top level, functions)."""
    tree = ast.parse(_source(module).read_text())
    package = module if module.count(".") == 1 else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mambaseq.")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if not base.startswith("mambaseq"):
                continue
            for alias in node.names:      # a layer or a submodule, or a name of ``base``
                sub = f"{base}.{alias.name}"
                found.add(sub if base.count(".") <= 1 and _source(sub).is_file() else base)
    return found - {"mambaseq"}


def _graph():
    """Import edges between the modules (and package modules) of core and kernels. Importing
    a module of another layer first runs that layer's package module: an edge to it too."""
    nodes = [m for layer in LAYERS for m in [f"mambaseq.{layer}", *_modules(layer)]]
    edges = {}
    for m in nodes:
        targets = set()
        for t in _imports(m):
            layer = ".".join(t.split(".")[:2])
            targets.add(t)
            if layer != ".".join(m.split(".")[:2]):
                targets.add(layer)
        edges[m] = targets
    return edges


def test_core_and_kernels_import_no_layer_above_and_kernels_no_core():
    for m, targets in _graph().items():
        for t in targets:
            layer = t.split(".")[1]
            assert layer not in UPPER, f"{m} imports {t}, a layer above it"
            if m.startswith("mambaseq.kernels"):
                assert layer != "core", f"{m} imports {t}: kernels know nothing of core"


def test_no_module_of_core_or_kernels_imports_one_that_imports_it_back():
    edges = _graph()
    cycles = []

    def visit(node, path):
        for t in sorted(edges.get(node, ())):
            if t in path:
                cycles.append(path[path.index(t):] + [t])
            elif t in edges and t not in done:
                visit(t, path + [t])
        done.add(node)

    done = set()
    for m in edges:
        if m not in done:
            visit(m, [m])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_scan_shows_the_circles_it_looks_for():
    """The scan sees a lazy import inside a function, resolved from a relative name."""
    assert "mambaseq.kernels.cpu_step" in _imports("mambaseq.core.mamba")     # in Mamba.step
    assert "mambaseq.kernels.ops" in _imports("mambaseq.kernels.cpu_scan")    # from .ops import


# Each module is imported in a child forked from a process that has imported torch (the
# expensive part) and nothing of the toolkit: in every child it is the first toolkit import.
_FRESH_IMPORTS = r"""
import importlib, json, os, sys, traceback
import torch  # noqa: F401
results = {}
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            message = ""
        except BaseException:
            message = traceback.format_exc(limit=-4)
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 1 << 16):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    results[name] = data.decode()
print(json.dumps(results))
"""


def _needs_triton(module):
    tree = ast.parse(_source(module).read_text())
    return any(isinstance(n, ast.Import) and any(a.name == "triton" for a in n.names)
               for n in tree.body)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a child per module")
def test_every_module_of_core_and_kernels_imports_alone_in_a_fresh_process():
    have_triton = subprocess.run([sys.executable, "-c", "import triton"],
                                 capture_output=True).returncode == 0
    modules = [m for layer in LAYERS for m in _modules(layer)
               if have_triton or not _needs_triton(m)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _FRESH_IMPORTS, *modules], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(results) == sorted(modules)
    failed = {m: err for m, err in results.items() if err}
    assert not failed, "\n".join(f"{m}:\n{err}" for m, err in failed.items())
