"""Probes: the measuring instruments (numpy/torch only, never pytest).

Each probe follows the scikit-learn estimator contract and returns its figures as
:class:`Estimate` (value, bootstrap CI, chance level, p-value).
"""
from __future__ import annotations

from ._attributes import AttributeSVMProbe
from ._control import control_labels, input_clusters, row_scores_estimate, selectivity
from ._erasure import LeaceErasure, concept_matrix, erasure_cost
from ._estimate import Estimate
from ._mav import MAVProbe
from ._mlp import MLPProbe
from ._regression import LinearRegressionProbe
from ._structure import BlockDiagonalization, block_diagonalize, spectrum, spectrum_estimate
from .stats import bootstrap_ci, p_value, permutation_chance

__all__ = [
    "AttributeSVMProbe", "BlockDiagonalization", "Estimate", "LeaceErasure", "LinearRegressionProbe", "MAVProbe",
    "MLPProbe", "block_diagonalize", "bootstrap_ci", "concept_matrix", "control_labels", "erasure_cost",
    "input_clusters", "p_value", "permutation_chance", "row_scores_estimate", "selectivity", "spectrum",
    "spectrum_estimate",
]

# factors suite (issue 12)
from ._multinomial import MultinomialProbe, balanced_accuracy  # noqa: E402
from ._verification import enrollment_figures, far_threshold, tar_at_far  # noqa: E402

__all__ += ["MultinomialProbe", "balanced_accuracy", "enrollment_figures", "far_threshold", "tar_at_far"]
