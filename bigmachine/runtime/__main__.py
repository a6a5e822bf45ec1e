"""``python -m bigmachine.runtime``: a machine process (see ``bigmachine.runtime.process``)."""

from .process import main

main()
