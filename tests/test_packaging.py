"""The installed distribution: one namespace, no generic top-level names."""
import importlib.metadata

import pytest


def test_the_distribution_installs_only_the_mambaseq_namespace():
    tops = sorted(name for name, dists in importlib.metadata.packages_distributions().items()
                  if "mambaseq" in dists and not name.startswith("__editable__"))
    assert tops == ["mambaseq"]


@pytest.mark.parametrize("layer", ["core", "kernels", "mamba_bio", "mamba_audio", "pipelines",
                                   "bench"])
def test_every_layer_imports_under_the_namespace(layer):
    module = importlib.import_module(f"mambaseq.{layer}")
    assert module.__name__ == f"mambaseq.{layer}"


def test_the_cpu_path_does_not_import_triton_nor_warn_about_cuda():
    import subprocess
    import sys
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
