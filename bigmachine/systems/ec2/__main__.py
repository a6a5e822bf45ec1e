"""``python -m bigmachine.systems.ec2 list|terminate [--session ID | --all-mine]``."""

import sys

from .cli import main

sys.exit(main())
