"""``python -m biounet ...``: the ``biounet`` command without the installed entry point."""

import sys

from .cli import main

sys.exit(main())
