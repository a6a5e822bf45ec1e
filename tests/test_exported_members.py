"""The public API of docs/api.md is importable by its exact names, and nothing private leaks into __all__."""

from __future__ import annotations

import bigmachine
import bigmachine.errors
import bigmachine.systems

CONTRACT = {
    "start", "B", "Services", "Environ", "Machine", "State", "UNSTARTED", "STARTING", "RUNNING", "STOPPED",
    "Error", "RemoteError", "MachineStopped", "OutOfMemory", "Cancelled", "NotFound", "SerializationError",
    "expvar", "systems", "Executor",
}


def test_contract_names_are_exported() -> None:
    assert CONTRACT <= set(bigmachine.__all__)
    for name in bigmachine.__all__:
        assert hasattr(bigmachine, name), name


def test_all_is_sorted_and_public() -> None:
    assert bigmachine.__all__ == sorted(bigmachine.__all__)
    assert not [n for n in bigmachine.__all__ if n.startswith("_")]


def test_exported_classes_show_the_public_module() -> None:
    for name in ("B", "Machine", "Services", "Environ", "State", "Error", "MachineStopped", "RemoteError", "Executor"):
        assert getattr(bigmachine, name).__module__ == "bigmachine", name


def test_systems_and_driver() -> None:
    assert {"System", "Local", "Testing", "EC2", "Hosts", "Slurm"} <= set(bigmachine.systems.__all__)
    for name in bigmachine.systems.__all__:
        assert getattr(bigmachine.systems, name)
    from bigmachine import driver

    assert callable(driver.add_arguments) and callable(driver.start)
    assert callable(bigmachine.expvar.publish)


def test_error_tree() -> None:
    e = bigmachine.errors
    assert issubclass(e.OutOfMemory, e.MachineStopped) and issubclass(e.MachineStopped, e.Error)
    for cls in (e.RemoteError, e.Cancelled, e.NotFound, e.SerializationError):
        assert issubclass(cls, e.Error)
    assert e.Unavailable("x").temporary and not e.MachineStopped("x", machine="m").temporary


def test_errors_pickle_with_their_attributes() -> None:
    import pickle

    err = bigmachine.RemoteError("boom", machine="https://h:1/", remote_traceback="tb", exc_type="ValueError")
    back = pickle.loads(pickle.dumps(err))
    assert (back.machine, back.remote_traceback, back.exc_type, back.args) == ("https://h:1/", "tb", "ValueError", ("boom",))
    stopped = pickle.loads(pickle.dumps(bigmachine.OutOfMemory("oom", machine="m")))
    assert type(stopped) is bigmachine.OutOfMemory and stopped.machine == "m"
