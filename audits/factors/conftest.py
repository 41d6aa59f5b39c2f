"""Load the user's folder once, at collection: its factors and levels become the test ids.

No --invariance-data-dir (or no labels.csv under it) is one skip line; a bad folder is
one collection ERROR listing every problem (the tests never run on bad data).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_invariance.plugin import SETTINGS_KEY
from pytest_invariance.studies.faces import default_model_missing

FOLDER_KEY = pytest.StashKey[Any]()


def _folder(config: pytest.Config) -> Any:
    """(folder, gated) or a skip reason (str); raises CollectError once per process on bad data."""
    if FOLDER_KEY not in config.stash:
        config.stash[FOLDER_KEY] = _load(config)
    found = config.stash[FOLDER_KEY]
    if isinstance(found, Exception):
        raise pytest.Collector.CollectError(f"factors suite: {found}")
    return found


def _load(config: pytest.Config) -> Any:
    from pytest_invariance.data.factor_folder import load_factor_folder
    from pytest_invariance.errors import InvarianceError
    from pytest_invariance.studies.factors import gated_metrics

    settings = config.stash[SETTINGS_KEY]
    root = settings.resolve_path(settings.data_dir)
    if root is None:
        return "factors: no data: pass --invariance-data-dir DIR holding your images and DIR/labels.csv"
    if not (root / "labels.csv").is_file():
        return f"factors: no {root / 'labels.csv'} (image,[split],[identity],factor columns...)"
    try:
        folder = load_factor_folder(root, types=dict(settings.factor_type), seed=settings.seed,
                                    skip_bad=settings.skip_bad)
        # Qualifiers the other selected suites know (a CelebA attribute threshold is not a typo here).
        from pytest_invariance._startup import find_suites

        others = {q for suite in find_suites(config) for q in suite.qualifiers()} - {"*"}
        if settings.embeddings:  # every image needs a row: missing ids are this one collection error
            from pytest_invariance._audit import embeddings_source
            embeddings_source(settings).check_images(folder.images, f"{root / 'labels.csv'}",
                                                     unverified=settings.embeddings_unverified)
        from pytest_invariance.checks import Suite
        from pytest_invariance.plugin import note_suite
        from pytest_invariance.studies.factors import folder_suite

        # Now that the images' size is known, the plugin checks the model's layers at it once,
        # before any test (a layer the pool cannot read is one error, not one per test).
        note_suite(config, folder_suite(Suite.find(Path(__file__).parent), folder))
        return folder, gated_metrics(folder, settings, others, _layers(config), _model_layers(config))
    except InvarianceError as exc:
        return exc


def _layers(config: pytest.Config) -> list[str]:
    """The run's selected layers (threshold keys may name them); none when the model cannot
    load (that is reported once, by the plugin)."""
    from pytest_invariance.plugin import selected_layers

    return selected_layers(config, Path(__file__).parent)


def _model_layers(config: pytest.Config) -> list[str]:
    """All layers of the run's models: a folder threshold for an unselected one is left out."""
    from pytest_invariance.plugin import model_layers

    return model_layers(config, Path(__file__).parent)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = [n for n in ("factor", "enrolled") if n in metafunc.fixturenames]
    if not names:
        return
    found = _folder(metafunc.config)
    if isinstance(found, str):
        metafunc.parametrize(names[0], [pytest.param(None, id="no-data", marks=pytest.mark.skip(reason=found))])
        return
    folder, _ = found
    if names[0] == "factor":
        metafunc.parametrize("factor", list(folder.factors))
        return
    pairs = [(n, lv) for n, f in folder.factors.items() if f.type != "continuous" for lv in f.levels]
    if folder.identity is None or not pairs:
        why = "no identity column" if folder.identity is None else "no binary or categorical factor"
        metafunc.parametrize("enrolled", [pytest.param(None, id="no-identity",
                                                       marks=pytest.mark.skip(reason=f"factors: enrollment: {why}"))])
        return
    metafunc.parametrize("enrolled", pairs, ids=[f"{n}={lv}" for n, lv in pairs])


@pytest.fixture(scope="session")
def invariance_factor_folder(pytestconfig: pytest.Config) -> Any:
    """(FactorFolder, {gated factor: gated metrics}) of --invariance-data-dir."""
    return _folder(pytestconfig)


@pytest.fixture
def invariance_suite(request: pytest.FixtureRequest, invariance_factor_folder: Any) -> Any:
    """This suite's config with the data folder's [preprocess] and [thresholds] laid over it."""
    from pytest_invariance.checks import Suite
    from pytest_invariance.studies.factors import folder_suite

    folder, _ = invariance_factor_folder
    return folder_suite(Suite.find(Path(__file__).parent), folder)


@pytest.fixture(autouse=True)
def _bundled_model_present(invariance_settings: Any) -> None:
    from pytest_invariance.checks import Suite

    reason = default_model_missing(Suite.find(Path(__file__).parent), invariance_settings)
    if reason:
        pytest.skip(reason)
