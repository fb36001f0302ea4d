"""The installed distribution: one namespace, no generic top-level names, and a checkout
that never shadows another distribution when run from its root."""
import importlib
import importlib.metadata
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "kernels", "mamba_bio", "mamba_audio", "pipelines", "bench"]


def run_from_root(code):
    """Run ``code`` in a child Python whose working folder (first on sys.path) is the root."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_distribution_installs_only_the_mambaseq_namespace():
    tops = sorted(name for name, dists in importlib.metadata.packages_distributions().items()
                  if "mambaseq" in dists and not name.startswith("__editable__"))
    assert tops == ["mambaseq"]


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_imports_under_the_namespace(layer):
    module = importlib.import_module(f"mambaseq.{layer}")
    assert module.__name__ == f"mambaseq.{layer}"
    assert Path(module.__path__[0]).name == layer


def test_no_layer_folder_is_a_top_level_module_or_package_at_the_root():
    names = {m.name for m in pkgutil.iter_modules([str(ROOT)])}
    assert names.isdisjoint(LAYERS), names & set(LAYERS)
    # what the import system makes of each name, run from the root: nothing, another
    # distribution's module, or at most a namespace portion (which never shadows a regular
    # package or module anywhere on sys.path)
    found = json.loads(run_from_root(
        "import importlib.util, json\n"
        f"specs = {{n: importlib.util.find_spec(n) for n in {LAYERS!r}}}\n"
        "print(json.dumps({n: s and s.origin for n, s in specs.items()}))\n"))
    for name, origin in found.items():
        assert origin is None or not Path(origin).resolve().is_relative_to(ROOT), (name, origin)


def test_transformers_from_the_root_imports_the_installed_kernels_distribution():
    pytest.importorskip("transformers")
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's `kernels` distribution is not installed here")
    origin = run_from_root(
        "import transformers\n"
        "transformers.MambaForCausalLM\n"
        "import kernels\n"
        "print(kernels.__file__)\n").strip()
    assert origin and not Path(origin).resolve().is_relative_to(ROOT), origin
    assert Path(origin).parent.name == "kernels"


def test_python_m_pipelines_runs_the_command_line_from_the_root():
    out = subprocess.run([sys.executable, "-m", "mambaseq.pipelines", "--help"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pretrain-genome" in out.stdout


def test_the_cpu_path_does_not_import_triton_nor_warn_about_cuda():
    code = ("import sys, torch\n"
            "from mambaseq import core\n"
            "u = torch.randn(1, 4, 8)\n"
            "core.selective_scan(u, torch.rand(1, 4, 8), -torch.rand(4, 2), torch.randn(1, 2, 8),"
            " torch.randn(1, 2, 8))\n"
            "core.Mamba(8, d_state=2).eval()(torch.randn(1, 5, 8))\n"
            "print('triton' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert "No CUDA runtime" not in out.stderr
