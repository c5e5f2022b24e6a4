"""``python -m giabench``: the same command line as ``giabench``."""

import sys

from giabench.cli import main

sys.exit(main())
