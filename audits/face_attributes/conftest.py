"""Skip with one line when CelebA is not under --invariance-data-dir or the bundled model is not built."""
from __future__ import annotations

import pytest

from pytest_invariance.studies.faces import default_model_missing, find_celeba


@pytest.fixture(autouse=True)
def _inputs_present(invariance_suite, invariance_settings) -> None:
    reason = find_celeba(invariance_settings)[1] or default_model_missing(invariance_suite, invariance_settings)
    if reason:
        pytest.skip(reason)
