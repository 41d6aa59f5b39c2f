"""A pytest-xdist worker killed while running an audit test (the kernel's out-of-memory killer
sends SIGKILL) is a tool error: an ERROR counted as could-not-run, exit 3, never a failed gate."""
from __future__ import annotations

import pytest

from pytest_invariance.testing import copy_suite, read_results, write_noise_folder

# The batch of 4 the start-up check runs passes; the first extraction batch (every image)
# kills the worker the way the OOM killer does.
KILLED_ON_BIG_BATCH = """\
import os, signal, torch, torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        if x.shape[0] > 8:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.conv(x).mean((2, 3))

def net():
    torch.manual_seed(0)
    return Net()
"""


@pytest.fixture
def killed(pytester, tmp_path):
    """``run(*extra)``: the factors suite under ``-n 2`` with the model that kills its worker."""
    pytest.importorskip("torch")
    pytest.importorskip("xdist")
    suite = copy_suite(pytester, "factors")
    (suite.path / "killed_nets.py").write_text(KILLED_ON_BIG_BATCH)
    data = write_noise_folder(tmp_path / "data")

    def run(*extra):
        return suite.runpytest_subprocess(
            "audits/factors", "-n", "2", *extra, "-p", "no:cacheprovider", "--model", "killed_nets:net",
            f"--invariance-data-dir={data}", "--invariance-preprocess", "size=16x16", "--invariance-no-cache",
            "--invariance-json=r.json", "--invariance-no-report", "--invariance-history=h.sqlite",
            "--invariance-progress", "off")
    return suite, run


def test_a_killed_worker_is_a_tool_error_not_a_failed_gate(killed):
    suite, run = killed
    result = run()
    out = result.stdout.str()
    crashed = ["audits/factors/test_factors.py::test_factor[flag-model]",
               "audits/factors/test_factors.py::test_factor[level-model]"]
    assert result.ret == 3, out  # was 1, the status of a failed gate
    assert "FAILED" not in out and "failed" not in out.splitlines()[-1], out
    result.stdout.fnmatch_lines(["invariance: checks failed: 0",
                                 "invariance: could not run (errors): 2 tests; first: *could not run: its "
                                 "pytest-xdist worker gw* died while running it*fix: lower --invariance-batch-size*"])
    assert "NOTHING AUDITED" not in out
    for nodeid in crashed:
        assert f"ERROR {nodeid}" in out, out
    doc = read_results(suite, "r.json")
    assert doc["run"]["tests"]["errors"] == 2 and doc["run"]["exit_status"] == 3
    assert sorted(c["nodeid"] for c in doc["checks"] if c["status"] == "error") == crashed


def test_a_run_that_xdist_stops_after_crashes_did_not_complete(killed):
    # with no worker to replace the dead ones, the test left over never ran: the run counted
    # only the 2 errors and said nothing of it
    suite, run = killed
    result = run("--max-worker-restart", "0")
    assert result.ret == 3, result.stdout.str()
    result.stdout.fnmatch_lines(["invariance: DID NOT COMPLETE (exit status 3): this run stopped after 2 pytest-xdist "
                                 "worker crash(es), before 1 test(s) ran;*the history is not written"])
    meta = read_results(suite, "r.json")["run"]
    assert meta["tests"]["errors"] == 2 and meta["incomplete"].startswith(
        "stopped after 2 pytest-xdist worker crash(es), before 1 test(s) ran (first: "
        "audits/factors/test_factors.py::test_enrollment[no-identity-model])")
    assert not (suite.path / "h.sqlite").exists()
