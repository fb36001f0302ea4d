"""mambaseq: Mamba (selective state space) models for DNA and raw audio at a million steps.

The repository keeps one folder per layer at its top (``core/``, ``kernels/``,
``mamba_bio/``, ``mamba_audio/``, ``pipelines/``, ``bench/``). None of those folders has an
``__init__.py``: each layer's package is the module ``mambaseq/<layer>.py``, which points its
``__path__`` at the layer's folder. Run from the repository's root (``python -m pytest``,
``python -m mambaseq.pipelines``, ``python -c ...`` put it first on ``sys.path``), a folder
without ``__init__.py`` is at most a namespace portion, and Python takes a regular package
or module of the same name from anywhere on ``sys.path`` before it: the checkout can never
shadow an installed distribution called ``kernels``, ``core``, ``pipelines`` or ``bench``.
Installed from a wheel, the layers' modules sit in ``mambaseq/<layer>/`` beside their
``<layer>.py`` (``pyproject.toml`` maps the folders), so nothing generic lands at the top of
site-packages:

>>> from mambaseq import core, mamba_bio, mamba_audio
>>> import mambaseq.kernels
>>> core.__name__, core.Mamba.__module__
('mambaseq.core', 'mambaseq.core.mamba')
"""
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _layer_folder(module_name):
    """The folder holding the modules of layer ``module_name`` ("mambaseq.core", ...).

    ``mambaseq/<layer>/`` in an installed wheel, else ``<checkout>/<layer>/`` of the source
    tree this package was imported from (an editable install, or ``PYTHONPATH=CHECKOUT``,
    which runs a second checkout's code beside an editable install of the first).
    """
    here = Path(__file__).resolve().parent
    layer = module_name.rpartition(".")[2]
    installed = here / layer
    return str(installed if installed.is_dir() else here.parent / layer)


def _lazy_names(package: str, modules: dict[str, tuple[str, ...]]):
    """``(__getattr__, __all__)`` for a package whose public names are imported on first use:
    ``modules`` maps each of its submodules to the names it defines."""
    import importlib

    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name):
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(where)


try:
    __version__ = version("mambaseq")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
