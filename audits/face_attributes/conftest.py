"""Skip with one line when CelebA is not under --invariance-data-dir or the bundled model is not built."""
from __future__ import annotations

import pytest

from pytest_invariance.studies.faces import celeba_gate


@pytest.fixture(autouse=True)
def _inputs_present(invariance_suite, invariance_audit) -> None:
    reason = celeba_gate(invariance_audit, invariance_suite)
    if reason:
        pytest.skip(reason)
