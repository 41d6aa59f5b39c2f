"""A baseline comparison judges MORE LEAKAGE, gated or not: the factors suite measures its
factors ungated by default, and a model that starts to leak a factor must read as a
regression both in the pytest run (--invariance-baseline) and in `pytest-invariance compare`,
which share one comparison (history.judge_change)."""
from __future__ import annotations

import math

import numpy as np
import onnx  # noqa: F401  - imported once here (pytester restores sys.modules between tests)
import pandas as pd
import pytest
import torch
import torch.onnx  # noqa: F401
from PIL import Image

from pytest_invariance.history import HistoryStore, judge_change, leak_direction
from pytest_invariance.report import compare_rows
from pytest_invariance.testing import copy_suite, export_onnx, run_and_read


class _Reader(torch.nn.Module):
    """Embedding = the pixels of the top-left 4x4 corner (random noise in these images),
    plus, when ``leaky``, the mean colour of the stripe rows and of the bottom rows."""

    def __init__(self, leaky: bool):
        super().__init__()
        self.leaky = leaky

    def forward(self, x):
        corner = x[:, :, :4, :4].flatten(1)
        if not self.leaky:
            return corner
        return torch.cat([corner, x[:, :, 6:10, :].mean((2, 3)), x[:, :, 12:, :].mean((2, 3))], 1)


def _folder(root, n=240, seed=0):
    """``stripe`` (binary) and ``shade`` (categorical) are planted in rows the corner never sees."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = []
    for k in range(n):
        stripe, shade = int(rng.integers(2)), ["dark", "mid", "light"][rng.integers(3)]
        x = rng.uniform(0, 1, (16, 16, 3))
        x[6:10] = 0.2 + 0.7 * stripe
        x[12:] = {"dark": 0.1, "mid": 0.5, "light": 0.9}[shade]
        Image.fromarray((x * 255).astype(np.uint8)).save(root / "img" / f"{k:03d}.png")
        rows.append({"image": f"img/{k:03d}.png", "stripe": stripe, "shade": shade})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture
def two_models(pytester, tmp_path):
    """The factors suite in ``pytester``, the planted folder, a blind and a leaky ONNX model and
    the arguments every run here shares: ``(suite, blind, leaky, common)``."""
    suite = copy_suite(pytester, "factors")
    data = _folder(tmp_path / "d")
    blind = export_onnx(_Reader(False).eval(), tmp_path / "blind.onnx", (3, 16, 16))
    leaky = export_onnx(_Reader(True).eval(), tmp_path / "leaky.onnx", (3, 16, 16))
    return suite, blind, leaky, ("audits/factors/test_factors.py::test_factor", f"--invariance-data-dir={data}")


def test_an_ungated_factor_that_starts_to_leak_is_a_regression_in_pytest_and_in_compare(two_models, capsys):
    from pytest_invariance.cli import main

    suite, blind, leaky, common = two_models
    result, base = run_and_read(suite, *common, f"--model={blind}", "--model-version", "blind")
    result.assert_outcomes(passed=2)  # nothing gated: measured only
    result, now = run_and_read(suite, *common, f"--model={leaky}", "--model-version", "leaky",
                               "--invariance-baseline", "blind")
    by = {(c["details"]["factor"], c["metric"]): c for c in now["checks"]}
    old = {(c["details"]["factor"], c["metric"]): c for c in base["checks"]}
    stripe = by["stripe", "balanced_error"]
    # the blind model is at chance, the leaky one reads the stripe, far outside both CIs
    assert old["stripe", "balanced_error"]["ci_low"] <= 0.5 <= old["stripe", "balanced_error"]["ci_high"]
    assert stripe["ci_high"] < old["stripe", "balanced_error"]["ci_low"] and stripe["threshold"] is None
    assert stripe["details"]["regressed"] and stripe["details"]["change"] == "worse"
    assert by["shade", "balanced_accuracy"]["details"]["regressed"]  # higher accuracy = more leakage
    result.assert_outcomes(failed=2)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*balanced_error: regression against blind: * moved toward more leakage*",
                                 "invariance: baseline blind (recorded *): 4 of 4 checks compared in their leak "
                                 "direction, 4 regressed"])
    # `compare` says the same, from the same function
    capsys.readouterr()
    assert main(["compare", "blind", "leaky", "--history", str(suite.path / "h.sqlite"),
                 "--out", str(suite.path / "c.html")]) == 1
    out = capsys.readouterr().out
    assert "4 worse, 0 better of 4 checks" in out
    rows = compare_rows(HistoryStore(suite.path / "h.sqlite").run("blind"),
                        HistoryStore(suite.path / "h.sqlite").run("leaky"))
    assert {r["change"] for r in rows} == {"worse"}
    # and the reverse is better, not "same"
    assert {r["change"] for r in compare_rows(now, base)} == {"better"}


def _check(metric, value, half, chance=None, comparator=None):
    return {"metric": metric, "value": value, "ci_low": value - half, "ci_high": value + half,
            "chance": chance, "comparator": comparator}


@pytest.mark.parametrize(("metric", "direction"), [
    ("balanced_error", -1), ("fn_rate", -1), ("mae", -1), ("rank1", -1), ("tar", -1), ("balanced_accuracy", 1),
    ("r2", 1), ("yaw_mae", -1), ("rotation_mae_mlp_erased", -1), ("rank1_blur", -1),
    ("top10_variance_share", None), ("rotation_mae_selectivity", None), ("angle_mae_std", None)])
def test_leak_direction_per_metric(metric, direction):
    assert leak_direction(metric) == direction


def test_significance_is_the_two_cis_combined_and_chance_relative():
    base = _check("balanced_error", 0.50, 0.05, chance=0.5)
    h = math.hypot(0.05, 0.05)  # 0.0707
    assert judge_change(_check("balanced_error", 0.50 - h + 0.005, 0.05, chance=0.5), base)["change"] == "same"
    assert judge_change(_check("balanced_error", 0.50 - h - 0.005, 0.05, chance=0.5), base)["change"] == "worse"
    assert judge_change(_check("balanced_error", 0.50 + h + 0.005, 0.05, chance=0.5), base)["change"] == "better"
    # a rate whose chance (1 - q) moved with it did not leak more: 0.175 down, chance 0.175 down
    fn = judge_change(_check("fn_rate", 0.30, 0.05, chance=0.30), _check("fn_rate", 0.475, 0.05, chance=0.475))
    assert fn["change"] == "same" and fn["delta"] == pytest.approx(-0.175)
    # the same move at a fixed chance is a regression (the tryout's "same" for a 0.175 move)
    assert judge_change(_check("fn_rate", 0.30, 0.05, chance=0.5), _check("fn_rate", 0.475, 0.05, chance=0.5))[
        "change"] == "worse"
    # a gate's comparator says which side is bad, even against the metric's own direction
    assert judge_change(_check("balanced_error", 0.9, 0.01, comparator="<="), _check("balanced_error", 0.5, 0.01))[
        "change"] == "worse"
    odd = judge_change(_check("top10_variance_share", 0.9, 0.01), _check("top10_variance_share", 0.1, 0.01))
    assert odd["change"] == "not compared: no leak direction" and not odd["regressed"]


def test_compare_rows_say_not_compared_for_a_metric_without_a_leak_direction():
    a = {"checks": [{"nodeid": "t", **_check("top10_variance_share", 0.1, 0.01)}]}
    b = {"checks": [{"nodeid": "t", **_check("top10_variance_share", 0.9, 0.01)}]}
    assert [r["change"] for r in compare_rows(a, b)] == ["not compared: no leak direction"]


def test_a_chance_level_that_moved_with_the_split_is_not_a_regression():
    # the same model, another seed: the test split's positive share moved, so did fn/fp chance
    # (1 - q, q); the figures stayed 0 (CI 0..0). Was "regressed" (exit 1).
    from pytest_invariance.history import judge_change

    now = {"metric": "fp_rate", "value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "chance": 0.5667, "comparator": ">="}
    base = {**now, "chance": 0.5333}
    assert judge_change(now, base)["change"] == "same"
    moved = {**now, "value": 0.30, "ci_low": 0.25, "ci_high": 0.35, "chance": 0.5}
    assert judge_change({**now, "value": 0.02, "ci_low": 0.0, "ci_high": 0.05}, moved)["change"] == "worse"


def test_a_rerun_of_part_of_a_version_does_not_replace_its_record(two_models):
    # `-k` re-ran 2 of v1's checks and v1 then held those 2: a later baseline compared 2 of 4
    # and a factor that began to leak went unflagged.
    suite, blind, leaky, common = two_models
    run_and_read(suite, *common, f"--model={blind}", "--model-version", "v1")
    store = HistoryStore(suite.path / "h.sqlite")
    full = store.check_keys("v1")
    assert len(full) == 4
    result, _ = run_and_read(suite, *common, "-k", "shade", f"--model={blind}", "--model-version", "v1")
    result.stdout.fnmatch_lines(["invariance: history * not written: this run has 1 of the 4 checks version v1 "
                                 "holds (a -k, --lf or path subset*--model-version TAG*"])
    assert store.check_keys("v1") == full
    result, _ = run_and_read(suite, *common, f"--model={leaky}", "--model-version", "v2",
                             "--invariance-baseline", "v1")
    result.stdout.fnmatch_lines(["invariance: baseline v1 (recorded *): 4 of 4 checks compared*, 4 regressed"])
    # the part recorded under its own tag is not a 'latest' baseline: v1 still is
    run_and_read(suite, *common, "-k", "shade", f"--model={blind}", "--model-version", "part")
    result, _ = run_and_read(suite, *common, f"--model={leaky}", "--model-version", "v3",
                             "--invariance-baseline", "latest")
    result.stdout.fnmatch_lines(["invariance: baseline v2 (recorded *): 4 of 4 checks compared*"])
    # a full re-run of the version replaces it as before
    result, _ = run_and_read(suite, *common, f"--model={blind}", "--model-version", "v1")
    result.stdout.fnmatch_lines(["invariance: history * (version v1)*"])


def test_a_rerun_that_errors_keeps_the_version_as_the_latest_baseline(two_models):
    # v1 re-run with --invariance-max-rows 8 (too few rows for the stripe SVM: one ERROR) was
    # recorded over v1 (4 figures -> 2 and an error, not a baseline): v2, which leaks, then
    # found no 'latest' baseline, compared nothing and exited 0.
    suite, blind, leaky, common = two_models
    run_and_read(suite, *common, f"--model={blind}", "--model-version", "v1")
    store = HistoryStore(suite.path / "h.sqlite")
    full, recorded = store.check_keys("v1"), store.run("v1")["run"]["recorded_at"]
    result, doc = run_and_read(suite, *common, f"--model={blind}", "--model-version", "v1", "--invariance-max-rows", "8")
    assert result.ret == 3 and doc["run"]["tests"]["errors"] >= 1
    result.stdout.fnmatch_lines(["invariance: history * not written: this run has * of the 4 checks version v1 holds "
                                 "*could not run*that record is kept*(pass --model-version TAG*"])
    assert store.check_keys("v1") == full and store.run("v1")["run"]["recorded_at"] == recorded
    result, _ = run_and_read(suite, *common, f"--model={leaky}", "--model-version", "v2",
                             "--invariance-baseline", "latest")
    result.stdout.fnmatch_lines(["invariance: baseline v1 (recorded *): 4 of 4 checks compared*, 4 regressed"])
    assert result.ret == 1


def _doc(figures, errors=()):
    checks = [{"nodeid": n, "metric": "m", "value": 0.5, "verdict": "PASS", "status": "passed"} for n in figures]
    checks += [{"nodeid": n, "metric": None, "value": None, "verdict": "ERROR", "status": "error"} for n in errors]
    return {"run": {"tests": {"audited": len(figures), "errors": len(errors)}}, "checks": checks}


def test_a_record_is_replaced_only_by_a_run_that_loses_none_of_it(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite")
    store.record(_doc(["a", "b"]), "v1")
    assert store.kept_record("v1", _doc(["a"], errors=["b"])).startswith("has 1 of the 2 checks version v1 holds")
    assert store.kept_record("v1", _doc(["a"])).startswith("has 1 of the 2 checks")  # a -k part
    # more figures, but a tool error: as 'latest' it is passed over, so v1 would be lost as a baseline
    assert store.kept_record("v1", _doc(["a", "b", "c"], errors=["d"])) == \
        "had 1 tool error(s), and version v1's record is a complete run (a baseline)"
    assert store.kept_record("v1", _doc(["a", "b", "c"])) is None
    assert store.kept_record("v2", _doc(["a"], errors=["b"])) is None  # not stored: recorded
    # an errored record is replaced by a run that is no worse
    store.record(_doc(["a"], errors=["b"]), "v3")
    assert store.check_keys("v3") == {("a", "m")}  # the error row measured nothing
    assert store.kept_record("v3", _doc(["b"], errors=["a"])) is None
    assert store.kept_record("v3", _doc([], errors=["a", "b"])).startswith("has 0 of the 1 checks")


def test_a_version_tag_stays_with_its_model(two_models):
    # a second model file run under --model-version v1 replaced v1's record: a baseline pinned
    # to v1 then compared with the other model, without a word
    suite, blind, leaky, common = two_models
    run_and_read(suite, *common, f"--model={blind}", "--model-version", "v1")
    store = HistoryStore(suite.path / "h.sqlite")
    before = store.run("v1")["run"]
    result, _ = run_and_read(suite, *common, f"--model={leaky}", "--model-version", "v1")
    result.stdout.fnmatch_lines(["invariance: history * not written: this run is of model sha256 *, but version v1 "
                                 "was recorded for model sha256 * (another file); that record is kept*"])
    assert store.run("v1")["run"]["model_sha256"] == before["model_sha256"]
    assert store.run("v1")["run"]["recorded_at"] == before["recorded_at"]


# --- Baselines measured on other data (details.data_digest; docs/ci.md "Baselines").


def test_the_same_data_at_another_seed_is_compared(two_models):
    # The seed draws the split (and the bootstrap): the CIs cover it, so a baseline at seed 0 and
    # a run at seed 7 on the same folder are one comparison; the data digest leaves the seed out.
    suite, blind, leaky, common = two_models
    _, base = run_and_read(suite, *common, f"--model={blind}", "--model-version", "blind")
    result, now = run_and_read(suite, *common, f"--model={leaky}", "--model-version", "leaky",
                               "--invariance-seed", "7", "--invariance-baseline", "blind")
    digests = {c["details"]["data_digest"] for c in base["checks"] + now["checks"]}
    assert len(digests) == 1 and None not in digests
    assert all(c["details"]["same_data"] is True and c["details"]["regressed"] for c in now["checks"])
    result.stdout.fnmatch_lines(["invariance: baseline blind (recorded *): 4 of 4 checks compared in their leak "
                                 "direction, 4 regressed"])
    assert "other data" not in result.stdout.str() and result.ret == 1


def test_a_baseline_on_other_data_is_not_compared_and_none_compared_is_an_error(two_models, tmp_path, capsys):
    # v1 audited on one folder, v2 on another (other images and labels): "4 of 4 compared,
    # 4 regressed" and a failed gate, for figures that differ by their data as much as by the model.
    from pytest_invariance.cli import main

    suite, blind, leaky, common = two_models
    other = _folder(tmp_path / "other", seed=1)
    run_and_read(suite, *common, f"--model={blind}", "--model-version", "v1")
    result, now = run_and_read(suite, common[0], f"--invariance-data-dir={other}", f"--model={leaky}",
                               "--model-version", "v2", "--invariance-baseline", "v1")
    assert {c["details"]["change"] for c in now["checks"]} == {"not compared: other data"}
    assert not any(c["details"]["regressed"] for c in now["checks"])
    result.assert_outcomes(passed=2)
    assert result.ret == 3  # a tool error, as a baseline that shares no check: nothing was compared
    lines = [ln for ln in result.stdout.lines if "--invariance-baseline v1" in ln]
    assert len(lines) == 1 and lines[0].startswith("invariance: ERROR") and "other data" in lines[0]
    assert "audit both versions on the same data, or pass --invariance-baseline TAG" in lines[0]
    assert now["run"]["baseline"]["compared"] == 0 and now["run"]["baseline"]["other_data"] == 4
    # `compare` judges the same way: nothing worse, each row says why, and nothing compared is an error
    capsys.readouterr()
    assert main(["compare", "v1", "v2", "--history", str(suite.path / "h.sqlite"),
                 "--out", str(suite.path / "c.html")]) == 2
    out, err = capsys.readouterr()
    assert "0 worse, 0 better of 4 checks (4 not compared: other data; audit both versions" in out
    assert err.splitlines() == ["pytest-invariance: error: v1 and v2 share 4 check(s), all measured on other data: "
                                "nothing was compared; audit both versions on the same data, or compare "
                                "TAG_B with a version that was"]


def test_a_baseline_recorded_before_checks_had_a_data_digest_is_compared_and_says_so(two_models):
    # Records of earlier plugins carry no data digest: compared as before (a refusal would turn
    # every stored history into errors), and the baseline line says the data was not verified.
    suite, blind, leaky, common = two_models
    run_and_read(suite, *common, f"--model={blind}", "--model-version", "v1")
    store = HistoryStore(suite.path / "h.sqlite")
    doc = store.run("v1")
    for c in doc["checks"]:
        del c["details"]["data_digest"]
    store.record(doc, "v1")
    result, now = run_and_read(suite, *common, f"--model={leaky}", "--model-version", "v2",
                               "--invariance-baseline", "v1")
    assert all("same_data" not in c["details"] and c["details"]["regressed"] for c in now["checks"])
    result.stdout.fnmatch_lines(["invariance: baseline v1 (recorded *): 4 of 4 checks compared in their leak "
                                 "direction, 4 regressed; 4 compared without knowing whether the data is the same "
                                 "(no data digest: v1 was recorded by a plugin before checks recorded their data*"])
    assert now["run"]["baseline"]["data_unverified"] == 4 and result.ret == 1


def _measured(nodeid, value, data, **kw):
    return {"nodeid": nodeid, "status": "passed", **_check("balanced_error", value, 0.01, chance=0.5), **kw,
            "details": {"data_digest": data}}


def test_only_the_checks_on_other_data_are_left_out_and_the_line_says_how_many():
    # One run may mix suites: a check on the same data as its baseline counterpart is compared
    # (and may regress), one on other data is "not compared: other data", never regressed.
    from pytest_invariance.history import annotate_regressions, baseline_report

    base = [_measured("t::a", 0.5, "d1"), _measured("t::b", 0.5, "d1"), _measured("u::c", 0.5, "d2")]
    now = [_measured("t::a", 0.1, "d1"), _measured("t::b", 0.5, "d1"), _measured("u::c", 0.1, "d3")]
    annotate_regressions(now, base)
    for c in now:
        c["details"]["baseline_value"] = c["details"]["baseline"]
    assert [c["details"]["change"] for c in now] == ["worse", "same", "not compared: other data"]
    assert [c["details"]["regressed"] for c in now] == [True, False, False]
    fields, line, error = baseline_report(now, "v1", "v1", {"recorded_at": "t"}, "h.sqlite")
    assert not error and fields["compared"] == 2 and fields["other_data"] == 1 and fields["regressed"] == 1
    assert ("2 of 3 checks compared in their leak direction, 1 regressed; 1 not compared: other data in v1 "
            "(images or labels differ; audit both versions on the same data") in line
