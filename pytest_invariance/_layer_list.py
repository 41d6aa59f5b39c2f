"""``--invariance-list-layers``: the layers ``--layer``/``--invariance-layers`` can name.

For ``--model``, its layers; without it, those of each bundled model of the suites under
the given paths. Each line is a layer and its output shape from one forward of a seeded
random image at the size the suite feeds (or the model declares), in forward order.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .settings import Settings


def list_layers(config: pytest.Config, settings: "Settings") -> list[str]:
    """Lines to print; a model that cannot be loaded or traced is one usage error."""
    from ._audit import Audit, trace_shape
    from ._model_check import discover_suites
    from .checks import Suite
    from .errors import InvarianceError, StudyError
    from .models._layers import describe_layers, trace_names

    audit = Audit(settings)
    suites = discover_suites(config.args, config.invocation_params.dir, config.rootpath)
    if settings.model:
        targets = [(suites[0] if suites else Suite(name="", root=Path(config.rootpath)), "model")]
    else:
        targets = [(suite, name) for suite in suites for name in suite.section("models")]
        if not targets:
            raise pytest.UsageError("--invariance-list-layers: no --model and no suite with [models] under the "
                                    "given paths; pass --model PATH")
    lines: list[str] = []
    for suite, name in targets:
        try:
            ref = audit._model(suite, name)
            emb = ref.embedder
            shape = trace_shape(emb, suite, ref.preprocess)
            trace, exact = trace_names(emb, shape, settings.seed)
        except (InvarianceError, ImportError) as exc:
            raise pytest.UsageError(str(exc.cause if isinstance(exc, StudyError) else exc)) from None
        fed = "x".join("?" if d is None else str(d) for d in shape)
        if exact:
            how = f"shapes of one forward of a {fed} input"
        else:  # a dynamic-size model no suite or option gives a size: say how to get the shapes
            how = (f"the model takes any input size and none is known, so shapes are [?]; pass "
                   f"--invariance-preprocess size=HxW to print them for the size your data will have")
        where = f" (suite {suite.name})" if suite.name else ""
        lines.append(f"{emb.path}{where}: {len(trace)} layers in forward order, {how}")
        lines += ["  " + line for line in describe_layers(trace, ref.layer)]
    return lines
