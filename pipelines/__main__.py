"""``python -m mambaseq.pipelines SUBCOMMAND ...``: the same as the ``mambaseq`` console script."""
import sys

from .cli import main

sys.exit(main())
