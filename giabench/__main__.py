"""``python -m giabench``: the same command line as ``giabench``."""

import sys

from giabench.app.cli import main

sys.exit(main())
