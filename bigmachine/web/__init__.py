"""The driver's debug server: one view of the whole cluster at ``/debug/bigmachine``.

``app.create_app(b)`` builds the Starlette application (``b.debug_app()``);
``server.serve_debug(b, address)`` serves it from a thread of its own (``driver.start``).
Pages read the session through one view (``cluster.SessionView``) and fan out to every
machine's supervisor with a deadline per machine (``cluster``), so a dead or slow machine
shows as such and never holds a page up.
"""

__all__: list[str] = []
