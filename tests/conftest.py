"""Test configuration: hypothesis profiles and the tests directory on sys.path.

Profiles (choose with the environment variable ``HYPOTHESIS_PROFILE``):

* ``ci`` (default): 20 examples per property, no deadline, fast enough for the < 15 min CI budget.
* ``thorough``: 1000 examples per property (``make test-thorough``; issue 18).

Tests import the shared strategies as ``from strategies import generator_nets``.

Torch runs single-threaded in tests (override with ``GCOMPILER_TEST_THREADS``): the tests run thousands
of tiny ops, for which thread start-up and spinning cost more than they save (5x slower with 2 threads
on a loaded 2-core machine, measured on the generated nets of tests/strategies.py).

The pass manager's verifier runs at level ``numeric`` (``GCOMPILER_VERIFY``) in tests.
"""
from __future__ import annotations

import os
import sys

# The pass manager compares every pass's output with its contract under the test suite.
os.environ.setdefault("GCOMPILER_VERIFY", "numeric")
# Triton kernels run on the CPU interpreter in tests; it must be chosen before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("GCOMPILER_TEST_THREADS", "1")))

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("ci", max_examples=20, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
settings.register_profile("dev", max_examples=5, **_COMMON)

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if _PROFILE not in ("ci", "thorough", "dev"):
    raise RuntimeError(f"HYPOTHESIS_PROFILE={_PROFILE!r} is not a registered profile; use ci, thorough or dev")
settings.load_profile(_PROFILE)

