"""The audit process turns numpy's huge-page advice off unless the environment chose (_memory.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import numpy as np
from pytest_invariance._audit import Audit
from pytest_invariance.settings import Settings
try:
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:
    from numpy.core.multiarray import _set_madvise_hugepage
Audit(Settings())
print(_set_madvise_hugepage(True))  # returns the setting it replaces
"""


@pytest.mark.parametrize("env,expected", [(None, "False"), ("1", "True"), ("0", "False")])
def test_huge_page_advice_is_off_unless_the_environment_chose(env, expected):
    environ = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if env is not None:
        environ["NUMPY_MADVISE_HUGEPAGE"] = env
    out = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == expected
