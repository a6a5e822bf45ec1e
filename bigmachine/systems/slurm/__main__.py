"""``python -m bigmachine.systems.slurm list|cancel [--session S | --all-mine]``."""

import sys

from .cli import main

sys.exit(main())
