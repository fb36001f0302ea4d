"""The jobs and the command line; ``python -m mambaseq.pipelines`` runs the command line.

``mambaseq.pipelines`` is a module whose ``__path__`` makes it a package (see
``mambaseq/__init__.py``); ``runpy`` runs such a module itself for ``-m``, hence the guard.
"""
from mambaseq import _layer_folder

__path__ = [_layer_folder(__spec__.name)]  # the layer's modules: see mambaseq/__init__.py

if __name__ == "__main__":
    import sys

    from mambaseq.pipelines.cli import main

    sys.exit(main())
