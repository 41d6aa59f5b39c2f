"""A run that stops at a collection error says so, and why, in the terminal, results.json, the
report and the history line; it is not reported as interrupted (that is Ctrl-C)."""
from __future__ import annotations

from pytest_invariance.testing import copy_suite, read_results


def _unreadable_folder(tmp_path):
    """4 images and a semicolon-delimited labels.csv (one column named 'image;flag'): refused at collection."""
    from PIL import Image

    data = tmp_path / "d"
    (data / "img").mkdir(parents=True)
    for k in range(4):
        Image.new("RGB", (8, 8), (k, k, k)).save(data / "img" / f"{k}.png")
    (data / "labels.csv").write_text("image;flag\n" + "".join(f"img/{k}.png;{k % 2}\n" for k in range(4)))
    return data


def test_a_collection_error_is_named_in_the_json_the_report_and_the_history_line(pytester, tmp_path):
    data = _unreadable_folder(tmp_path)
    suite = copy_suite(pytester, "factors")
    result = suite.runpytest_subprocess("audits/factors", f"--invariance-data-dir={data}", "-p", "no:cacheprovider",
                                        "--invariance-json=r.json", "--invariance-report=r.html",
                                        "--invariance-history=h.sqlite")
    assert result.ret == 2
    first = "audits/factors/test_factors.py: factors suite: " + str(data / "labels.csv")
    result.stdout.fnmatch_lines([
        "invariance: DID NOT COMPLETE (exit status 2): this run stopped at 1 collection error(s) (the error is shown "
        "above); results.json (run.incomplete) and the report say so, and the history is not written",
        "invariance: history * not written: this run stopped at 1 collection error(s)"])
    assert "this run interrupted" not in result.stdout.str()
    assert result.stdout.str().count("the header must contain an 'image' column") == 1  # said once
    run = read_results(suite, "r.json")["run"]
    assert run["interrupted"] is False and run["exit_status"] == 2
    assert run["incomplete"].startswith(f"stopped at 1 collection error(s) (first: {first}")
    assert run["collection_errors"][0].startswith(first) and "'image' column" in run["collection_errors"][0]
    html = (suite.path / "r.html").read_text()
    assert 'id="incomplete"' in html and "This run did not complete" in html and "collection error" in html
    assert not (suite.path / "h.sqlite").exists()


def test_a_collection_error_under_xdist_exits_2_not_1(pytester, tmp_path):
    # pytest-xdist ends such a run with 1, the status of a failed gate (docs/ci.md: 2 = the
    # data could not be read at collection).
    data = _unreadable_folder(tmp_path)
    suite = copy_suite(pytester, "factors")
    result = suite.runpytest_subprocess("audits/factors", f"--invariance-data-dir={data}", "-p", "no:cacheprovider",
                                        "--invariance-json=r.json", "--invariance-no-report",
                                        "--invariance-history=h.sqlite", "-n", "2")
    assert result.ret == 2
    result.stdout.fnmatch_lines(["invariance: DID NOT COMPLETE (exit status 2): this run stopped at *collection error*"])
    assert read_results(suite, "r.json")["run"]["exit_status"] == 2


def test_a_complete_run_has_no_incomplete_banner(toy):
    result = toy.runpytest_subprocess("audits", "-p", "no:cacheprovider", "--invariance-progress", "off")
    assert result.ret == 0
    run = read_results(toy)["run"]
    assert run["incomplete"] is None and run["collection_errors"] == [] and not run["interrupted"]
    assert 'id="incomplete"' not in (toy.path / "reports" / "index.html").read_text()
    assert "DID NOT COMPLETE" not in result.stdout.str()
