"""mambaseq: Mamba (selective state space) models for DNA and raw audio at a million steps.

The repository keeps one folder per layer at its top (``core/``, ``kernels/``,
``mamba_bio/``, ``mamba_audio/``, ``pipelines/``, ``bench/``); installed, they live under
this one namespace (``pyproject.toml`` maps the folders), so nothing generic lands at the
top of site-packages:

>>> from mambaseq import core, mamba_bio, mamba_audio
>>> import mambaseq.kernels
"""
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# In a source checkout (the layer folders beside this one) the layers are imported from
# that checkout, so `PYTHONPATH=CHECKOUT` runs a second checkout's code beside an editable
# install of the first. An installed copy has its layers inside this folder instead.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "core" / "__init__.py").is_file():
    __path__.append(str(_checkout))

try:
    __version__ = version("mambaseq")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
