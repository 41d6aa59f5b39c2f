"""Skip the suite with one line when its bundled model is not built and no --model is given."""
from __future__ import annotations

import pytest

from pytest_invariance.studies.faces import default_model_missing


@pytest.fixture(autouse=True)
def _bundled_model_present(invariance_suite, invariance_settings) -> None:
    reason = default_model_missing(invariance_suite, invariance_settings)
    if reason:
        pytest.skip(reason)
