"""`python -m jal` is the `jal` command line."""

import sys

from jal.cli import main

sys.exit(main())
