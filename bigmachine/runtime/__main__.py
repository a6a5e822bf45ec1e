"""``python -m bigmachine.runtime``: a machine process (see ``bigmachine.runtime.process``);
``python -m bigmachine.runtime --fork-server FD DRIVER``: the fork server (``bigmachine.runtime.forks``)."""

import sys

if sys.argv[1:2] == ["--fork-server"]:
    from .forks import serve

    serve(int(sys.argv[2]), int(sys.argv[3]))
else:
    from .process import main

    main()
