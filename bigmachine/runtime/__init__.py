"""The machine side: what runs in a machine's process (or, for ``Testing``, its thread).

- ``spec``: ``LaunchSpec``, the one contract between a system and a starting machine.
- ``process``: the machine process's entry point (``python -m bigmachine.runtime``).
- ``server``: ``MachineServer``, the supervisor and the RPC server on one socket.
- ``supervisor``: the built-in ``Supervisor`` service: lease, services, health, profiles.

Nothing here imports the driver's systems or its debug server.
"""
