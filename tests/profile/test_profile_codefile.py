"""Code shipped by value keeps its real filename (issue 13: profiles showed ``<dynamic-code>:21``)."""

from __future__ import annotations

import pickle
import types

import cloudpickle

from bigmachine.rpc import codefile
from bigmachine.profile import sample_cpu

SOURCE = '''
import time

def shipped_hot_function(seconds):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        for i in range(200):
            n += i * i
    return n
'''


def _module_defined_in(path: str) -> types.ModuleType:
    """A module not importable on the other side, as ``__main__`` or a notebook is: cloudpickle ships it by value."""
    module = types.ModuleType("not_importable_on_machines")
    exec(compile(SOURCE, path, "exec"), module.__dict__)
    return module


def test_functions_pickled_by_value_keep_their_filename_and_lines() -> None:
    codefile.install()
    codefile.install()  # idempotent
    module = _module_defined_in("/driver/src/job.py")
    shipped = pickle.loads(cloudpickle.dumps(module.shipped_hot_function))
    assert shipped.__code__.co_filename == "/driver/src/job.py"
    assert shipped.__code__.co_firstlineno == 4
    assert shipped(0.01) > 0


def test_a_profile_of_shipped_code_names_the_file() -> None:
    import threading

    codefile.install()
    shipped = pickle.loads(cloudpickle.dumps(_module_defined_in("/driver/src/job.py").shipped_hot_function))
    burner = threading.Thread(target=shipped, args=(0.5,))
    burner.start()
    try:
        samples = sample_cpu(0.3, mode="wall")
    finally:
        burner.join()
    frames = {f for stack in samples.counts for f in stack if f[2] == "shipped_hot_function"}
    assert frames == {("/driver/src/job.py", 4, "shipped_hot_function")}
