"""What each audit test ended as, told apart: gate failure, known leak, tool error, skip.

A tool error (bad data, a model that does not fit, a solver that fails, a damaged file)
is a pytest ERROR with one line that names the command-line option that fixes it; a
gate failure or a regression is a FAILED test. The exit status follows (DESIGN.md):

* 1 (pytest's TESTS_FAILED): a gate failed or a regression was found;
* 3 (:data:`EXIT_TOOL_ERROR`): no gate failed, but a study could not run, or a gate could not
  decide (INCONCLUSIVE: the test split is too small for it, checks._verdict);
* 5 (:data:`EXIT_NOTHING_AUDITED`): ``--model`` or ``--invariance-data-dir`` was given and every
  audit test skipped, so nothing was measured.

Only pytest and the standard library are imported here at import time.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:
    from .errors import StudyError

EXIT_TOOL_ERROR = 3
EXIT_NOTHING_AUDITED = 5
_MAX_MESSAGE = 400
# Fixtures that make a test an audit test (its outcome goes into the results).
AUDIT_FIXTURES = frozenset({"invariance_model", "invariance_check", "invariance_audit"})


def _hint(exc: BaseException, what: str = "") -> str:
    """The command-line option that fixes this failure, from what failed (``what``: "embedding
    ... could not run", "study ... could not run") and how (``exc``)."""
    from . import errors as e

    if e.out_of_memory(exc):  # whatever class carries it: the layer or the input is not the fault
        if what.startswith("study"):
            return "lower --invariance-max-rows (embedding rows a probe holds at once)"
        return "lower --invariance-batch-size (images per model call)"
    hints: list[tuple[type[BaseException], str]] = [
        (e.DatasetNotFoundError, "point --invariance-data-dir at the dataset"),
        # a loader that can leave bad items out names --invariance-skip-bad itself (folder, CelebA,
        # factors); one that reaches this line cannot (an MNIST IDX file), so skip-bad is no fix
        (e.DataError, "fix or replace the data files named above, or point --invariance-data-dir at an intact copy"),
        (e.InputShapeError, "pass a --model that takes the suite's input, or select only suites that fit it"),
        (e.LayerNotFoundError, "pick an existing --layer"),
        # non-finite, constant or misshapen embeddings, or a forward that fails on this input
        (e.EmbeddingError, "pick another --layer, or fix the preprocessing (--invariance-preprocess for a --model, "
                           "[preprocess] in the suite's or the data folder's invariance.toml for a bundled model)"),
        (e.ModelLoadError, "check the --model file"),
        (ImportError, "install the package named above, or pass a --model of another kind"),
    ]
    for kind, hint in hints:
        if isinstance(exc, kind):
            return hint
    return "try another --layer if the embedding is degenerate there; --tb=long shows the traceback"


def study_error(what: str, exc: BaseException) -> "StudyError":
    """One StudyError for a failed study, embedding or model load: what failed, why, and the fix.

    ``what`` reads as a sentence's subject and verb, e.g. "study mnist_rotation/ip1 could not run".
    """
    from .errors import StudyError

    text = " ".join(str(exc).split()) or repr(exc)
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + " ..."
    # Messages from our own errors may name a Python argument; the user types options.
    text = re.sub(r"\s*\(skip_bad=True[^)]*\)", "", text.replace("pass skip_bad=True", "pass --invariance-skip-bad"))
    named = getattr(exc, "names_fix", False) or any(o in text for o in ("--invariance-", "--model", "--layer"))
    fix = "" if named else f"; fix: {_hint(exc, what)}"
    return StudyError(f"{what}: {type(exc).__name__}: {text}{fix}", cause=exc, study=what)


def one_line(exc: BaseException) -> str:
    from .errors import StudyError

    if isinstance(exc, StudyError):
        return str(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"


def mark_tool_error(item: pytest.Item, call: pytest.CallInfo[Any], report: pytest.TestReport) -> None:
    """Turn a failed setup/call that raised one of our errors into a short pytest ERROR."""
    from .errors import InvarianceError, StudyError

    if not report.failed or call.excinfo is None or not call.excinfo.errisinstance(InvarianceError):
        return
    exc = call.excinfo.value
    if isinstance(exc, StudyError) and exc.first and exc.first_nodeid is None:
        exc.first_nodeid = item.nodeid  # later tests of the study refer back here
    line = one_line(exc)
    report.invariance_error = line  # type: ignore[attr-defined]
    report.invariance_error_first = not isinstance(exc, StudyError) or exc.first  # type: ignore[attr-defined]
    if item.config.option.tbstyle != "long":
        report.longrepr = line


def teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    if report.failed and getattr(report, "invariance_error", None):
        return "error", "E", "ERROR"
    return None


class Outcomes:
    """Collects, on the controller, every report: the checks and how each test ended.

    Registered per config, so in-process pytest runs (pytester) never share state.
    """

    def __init__(self, collected: dict[str, Any], suite_at: Callable[[str], str | None] = lambda path: None):
        self.collected = collected
        self._suite_at = suite_at              # a test file's path -> its suite's name, None outside a suite
        self.errors: dict[str, str] = {}       # nodeid -> one line (audit tests)
        self.first_errors: dict[str, str] = {}  # the same, less the ones that refer back to another
        self.skipped: dict[str, str] = {}      # nodeid -> reason (audit tests)
        self.audited: set[str] = set()         # audit tests that ran to a verdict
        self.failed_tests: set[str] = set()    # any test FAILED (not an error), audit or not
        self.xfailed: set[str] = set()
        self.other_errors = 0                  # errors of tests that are not audits
        self.audit_items: set[str] = set()
        self.model_of: dict[str, dict[str, Any]] = {}  # nodeid -> model name and layer
        self.output_error = False              # results.json / report could not be written
        self.baseline_error = False            # --invariance-baseline shares no check with this run
        self.status: int | None = None         # the exit status, once the session has finished
        self.inconclusive: set[str] = set()    # tests with a gate the CI could not decide (an ERROR)
        self.collect_errors: list[str] = []    # "path: first error line" of each collection error
        self._first_of: dict[str, str] = {}    # an error told in full -> the test that told it
        self._told_by: dict[str, str] = {}     # a worker's own "first" turned back-reference -> that test
        self.planned: set[str] = set()         # every test the pytest-xdist workers collected
        self.reported: set[str] = set()        # every test a report came for
        self.crashed = 0                       # pytest-xdist workers that died in a test

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append(f"{report.nodeid or '.'}: {_first_error_line(report)}")

    def incomplete(self, exit_status: int) -> str | None:
        """Why the run did not complete (results.json's ``run.incomplete``), None when it did.
        It reads after "this run": "interrupted", "stopped at 1 collection error (...)"."""
        if self.collect_errors:
            return (f"stopped at {len(self.collect_errors)} collection error(s) (first: {self.collect_errors[0]})"
                    + ("" if exit_status == pytest.ExitCode.INTERRUPTED else "; the other tests ran"))
        if exit_status == pytest.ExitCode.INTERRUPTED:
            return "interrupted"
        never = sorted(self.planned - self.reported)
        if self.crashed and never:  # xdist stops replacing crashed workers (--max-worker-restart)
            return (f"stopped after {self.crashed} pytest-xdist worker crash(es), before {len(never)} test(s) ran "
                    f"(first: {never[0]}); raise --max-worker-restart, or fix the crash (see the errors)")
        if exit_status == pytest.ExitCode.USAGE_ERROR:
            return f"stopped at a usage error (exit status {int(pytest.ExitCode.USAGE_ERROR)}; its line is printed below)"
        return None

    def _once(self, report: pytest.TestReport) -> None:
        """Under xdist each worker remembers its own failures, so a fault met before any test
        (the --model's check of a suite, a study's bad data) came in full from every worker:
        the controller keeps the first in full and turns the others into a back-reference."""
        error = getattr(report, "invariance_error", None)
        if not error:
            return
        if not getattr(report, "invariance_error_first", False):  # a worker's back-reference
            told = next((n for n in self._told_by if f"(reported at {n})" in error), None)
            if told is None:
                return
            short = error.replace(f"(reported at {told})", f"(reported at {self._told_by[told]})")
        else:
            first = self._first_of.setdefault(error, report.nodeid)
            if first == report.nodeid:
                return
            self._told_by[report.nodeid] = first  # that worker's later tests refer to this one
            what, kind = (error.split(": ", 2) + ["", ""])[:2]
            short = f"{what} (reported at {first}): {kind if kind.isidentifier() else 'error'}; see that error"
        report.invariance_error, report.invariance_error_first = short, False  # type: ignore[attr-defined]
        if isinstance(report.longrepr, str):  # the one-line form (not --tb=long)
            report.longrepr = short

    @pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent without xdist
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        """A worker died while running ``crashitem`` (SIGKILL from the kernel's out-of-memory
        killer, a segfault in native code): xdist reports the test as FAILED, which reads as a
        failed gate (exit 1). An audit test that never reached a verdict is a tool error."""
        self.crashed += 1
        suites = self.collected.get("suites_of", {})
        path = crashitem.split("::")[0]
        # its setup report came (it died in the call), a test of its file did, or its file is in a suite
        suite = suites.get(crashitem) or next((s for n, s in suites.items() if n.split("::")[0] == path), None) \
            or self._suite_at(path)
        if suite is None:
            return  # not an audit test: xdist's own report stands
        worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", None) or "?"
        line = (f"{crashitem} could not run: its pytest-xdist worker {worker} died while running it (killed, e.g. by "
                "the kernel's out-of-memory killer, or crashed in native code), so nothing was measured; fix: lower "
                "--invariance-batch-size (or --invariance-max-rows), or run it without -n to see the error")
        report.invariance_item = suite  # type: ignore[attr-defined]
        report.invariance_error, report.invariance_error_first = line, True  # type: ignore[attr-defined]
        report.longrepr = line

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.planned.update(ids)

    @pytest.hookimpl(tryfirst=True)  # before the terminal and junitxml read the report
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.reported.add(report.nodeid)
        self._once(report)
        audit = getattr(report, "invariance_item", None)
        if audit:
            self.audit_items.add(report.nodeid)
            self.collected.setdefault("suites_of", {})[report.nodeid] = audit
        checks = getattr(report, "invariance_checks", None)
        if checks:
            self._add_checks(report, checks)
        for key, plot in getattr(report, "invariance_plots", []) or []:
            self.collected["plots"].setdefault(tuple(key), []).append(plot)
        info = getattr(report, "invariance_model_info", None)
        if info:
            self.collected.setdefault("models", {})[str(info.get("model"))] = info
            self.model_of[report.nodeid] = {k: info.get(k) for k in ("model", "layer")}
        if report.failed:
            error = getattr(report, "invariance_error", None) or (report.when != "call" and _last_line(report))
            if error and audit:
                self.errors.setdefault(report.nodeid, error)
                if getattr(report, "invariance_error_first", True):
                    self.first_errors.setdefault(report.nodeid, error)
            elif error:
                self.other_errors += 1
            else:
                self.failed_tests.add(report.nodeid)
                if audit:
                    self.audited.add(report.nodeid)
        elif report.skipped and audit:
            if hasattr(report, "wasxfail"):
                self.xfailed.add(report.nodeid)
                self.audited.add(report.nodeid)
            else:
                self.skipped[report.nodeid] = _skip_reason(report)
        elif report.passed and report.when == "call" and audit:
            self.audited.add(report.nodeid)

    def _add_checks(self, report: pytest.TestReport, checks: list[dict[str, Any]]) -> None:
        xfail = report.skipped and hasattr(report, "wasxfail")
        for c in checks:
            c["status"] = "passed" if c.get("passed") else "xfail" if xfail else \
                "inconclusive" if c.get("verdict") == "INCONCLUSIVE" else "failed"
            if c["status"] == "inconclusive":
                self.inconclusive.add(report.nodeid)
        self.collected["checks"].extend(checks)

    # ------------------------------------------------------------------ session end

    def error_entries(self) -> list[dict[str, Any]]:
        """One results.json entry per audit test that could not run or was skipped."""
        suites = self.collected.get("suites_of", {})
        out = []
        for status, table in (("error", self.errors), ("skipped", self.skipped)):
            for nodeid, message in sorted(table.items()):
                if nodeid in self.inconclusive and status == "error":
                    continue  # its checks are in the results, each INCONCLUSIVE with its reason
                out.append({"nodeid": nodeid, "suite": suites.get(nodeid), "metric": None, "value": None,
                            "threshold": None, "comparator": None, "passed": False if status == "error" else None,
                            "ci_low": None, "ci_high": None, "chance": None, "n": 0,
                            "verdict": "ERROR" if status == "error" else "SKIPPED", "status": status,
                            "message": message, "details": dict(self.model_of.get(nodeid, {})),
                            "layer": self.model_of.get(nodeid, {}).get("layer")})
        return out

    def undecided_tests(self) -> set[str]:
        """Audit tests that ended as an ERROR only because a gate's CI could not decide: measured,
        so counted apart from tool errors (nothing measured) and from tests that reached a verdict."""
        return set(self.errors) & self.inconclusive

    def tool_errors(self) -> dict[str, str]:
        """The audit tests that could not run (nodeid -> one line), less the undecided ones."""
        return {k: v for k, v in self.errors.items() if k not in self.inconclusive}

    def nothing_audited(self, settings: Any) -> bool:
        given = bool(settings.model or settings.data_dir or settings.embeddings)
        return given and bool(self.audit_items) and not self.audited and not self.errors

    def exit_status(self, exitstatus: int, settings: Any) -> int:
        """The run's exit status: 1 only for failed gates and regressions (and failed tests)."""
        self.status = self._exit_status(exitstatus, settings)
        return self.status

    def _exit_status(self, exitstatus: int, settings: Any) -> int:
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            return exitstatus  # Ctrl-C: nothing else can be said about a run that did not finish
        if self.collect_errors and exitstatus == pytest.ExitCode.TESTS_FAILED:
            # pytest-xdist ends a run stopped at a collection error with 1, which CI reads as a
            # failed gate; without xdist pytest says 2 (interrupted), and so do we.
            return pytest.ExitCode.INTERRUPTED
        if self.failed_tests:
            return exitstatus
        if (self.output_error or self.baseline_error) and exitstatus == pytest.ExitCode.OK:
            return EXIT_TOOL_ERROR
        if self.errors and exitstatus == pytest.ExitCode.TESTS_FAILED and not self.other_errors:
            return EXIT_TOOL_ERROR
        if self.nothing_audited(settings) and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            return EXIT_NOTHING_AUDITED
        return exitstatus

    def run_fields(self, exit_status: int) -> dict[str, Any]:
        """How the run ended, for results.json's ``run``: the exit status and test counts."""
        incomplete = self.incomplete(exit_status)
        return {"exit_status": exit_status,
                "interrupted": incomplete == "interrupted", "incomplete": incomplete,
                "collection_errors": list(self.collect_errors),
                "tests": {"audited": len(self.audited | self.undecided_tests()), "failed": len(self.failed_tests & self.audit_items),
                          "xfailed": len(self.xfailed), "errors": len(self.tool_errors()),
                          "inconclusive": len(self.undecided_tests()), "skipped": len(self.skipped)}}

    def summary_lines(self, settings: Any) -> list[str]:
        """Three separate lines (checks failed, known leaks, could not run) and, when nothing
        was audited, the skip reasons."""
        why = None if self.status is None else self.incomplete(self.status)
        if why and why != "interrupted":  # Ctrl-C keeps its own line below
            short = why.split(" (first: ")[0] + (" (the error is shown above)" if self.collect_errors else "")
            stopped = [f"invariance: DID NOT COMPLETE (exit status {self.status}): this run {short}; "
                       "results.json (run.incomplete) and the report say so, and the history is not written"]
        else:
            stopped = []
        if not self.audit_items:
            return stopped
        # every test once: audited (a verdict, or measured but undecided), could not run, skipped
        checks = [c for c in self.collected["checks"] if c.get("status") in ("passed", "failed", "xfail", "inconclusive")]
        failed = [c for c in checks if c.get("status") == "failed"]
        regressed = sum(bool((c.get("details") or {}).get("regressed")) for c in failed)
        known = [c for c in checks if c.get("status") == "xfail"]
        errors = self.tool_errors()
        first = {k: v for k, v in self.first_errors.items() if k in errors} or errors
        lines = [
            f"invariance: {len(checks)} checks in {len(self.audited | self.undecided_tests())} audited tests, "
            f"{sum(c.get('status') == 'passed' for c in checks)} passed",
            f"invariance: checks failed: {len(failed)}" + (f" ({regressed} of them regressions)" if regressed else ""),
            f"invariance: known leaks (xfail): {len(known)}",
            f"invariance: could not run (errors): {len(errors)} tests"
            # quote a root cause, never a "see that error" back-reference
            + (f"; first: {next(iter(first.values()))}" if errors else ""),
        ]
        undecided = [c for c in checks if c.get("status") == "inconclusive"]
        if undecided:
            lines.append(f"invariance: inconclusive: {len(undecided)} check(s) in {len(self.inconclusive)} test(s): "
                         "the test split is too small for the gate (CI wider than the gap between chance and the "
                         "threshold); each error names the images or --invariance-threshold that would decide")
        if self.skipped:
            reasons = Counter(self.skipped.values()).most_common()
            lines.append(f"invariance: skipped: {len(self.skipped)} tests")
            lines += [f"    {n} x {reason}" for reason, n in reasons[:5]]
            if len(reasons) > 5:
                lines.append(f"    ... {len(reasons) - 5} more reasons")
        lines += stopped
        if self.status == pytest.ExitCode.INTERRUPTED and why == "interrupted":
            lines.append(f"invariance: INTERRUPTED (exit status {int(pytest.ExitCode.INTERRUPTED)}): "
                         f"{len(self.audited)} audit test(s) reached a verdict before it; the "
                         "figures are partial and this run is never an --invariance-baseline 'latest'")
        elif self.nothing_audited(settings):
            given = "--model" if settings.model else "--invariance-embeddings" if settings.embeddings \
                else "--invariance-data-dir"
            lines.append(f"invariance: NOTHING AUDITED: {given} was given but every audit test skipped "
                         f"(exit status {EXIT_NOTHING_AUDITED}); see the reasons above")
        return lines


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _first_error_line(report: Any) -> str:
    """The line that says what went wrong: a traceback's first ``E`` line, else the first line."""
    lines = [ln.strip() for ln in str(report.longrepr).splitlines() if ln.strip()]
    marked = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    return (marked or lines or ["error"])[0]


def _last_line(report: pytest.TestReport) -> str:
    lines = [ln for ln in str(report.longrepr).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "error"
