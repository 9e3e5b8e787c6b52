"""``python -m minicnn ...``: see :mod:`minicnn.cli`."""
import sys

from .cli import main

sys.exit(main())
