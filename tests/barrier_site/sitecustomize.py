"""Test-only start-up module (``tests.barrier.with_barrier`` puts this folder on ``PYTHONPATH``): a
process started with ``MOMENTS_TEST_BARRIER_DIR`` installs the fault tests' barrier at its start.
Imports nothing for processes started without it."""

import os

if os.environ.get("MOMENTS_TEST_BARRIER_DIR"):
    import importlib.util
    import sys

    _path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "barrier.py")
    _spec = importlib.util.spec_from_file_location("moments_test_barrier", _path)
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["moments_test_barrier"] = _module
    _spec.loader.exec_module(_module)
    _module.install_from_env()
