"""Smaller faults of one kind each: a value that would be cycled to fit is refused, two outputs
in one file are refused, a refused run leaves nothing beside the history, the summary counts the
folder's factors, and a gate failure names the narrowest threshold key and its file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_invariance.checks import Suite, Threshold, evaluate
from pytest_invariance.embeddings import Preprocess
from pytest_invariance.errors import InvalidParameterError
from pytest_invariance.history import HistoryStore
from pytest_invariance.probes._estimate import Estimate
from pytest_invariance.studies.factors import gate_summary


@pytest.mark.parametrize(("key", "values", "channels"), [("mean", (0.485, 0.456), 3), ("std", (0.2, 0.2, 0.2), 1),
                                                           ("mean", (0.1, 0.2, 0.3, 0.4), 3)])
def test_a_per_channel_value_that_does_not_fit_the_channels_is_refused(key, values, channels):
    with pytest.raises(InvalidParameterError, match=rf"--invariance-preprocess {key}= has {len(values)} values for a "
                                                    rf"{channels}-channel input; give 1 value .* or {channels}"):
        Preprocess(channels=channels, **{key: values})
    pre = Preprocess(**{key: values})  # channels known only from the images: refused when applied
    with pytest.raises(InvalidParameterError, match=f"has {len(values)} values for a {channels}-channel input"):
        pre(torch.zeros(2, channels, 4, 4))


def test_one_value_or_one_per_channel_is_applied_as_given():
    x = torch.rand(2, 3, 4, 4)
    out = Preprocess(mean=(0.1, 0.2, 0.3), std=(0.5,))(x)
    want = (x.numpy() - np.array([0.1, 0.2, 0.3])[None, :, None, None]) / 0.5
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)  # float32


def test_a_bad_preprocess_is_one_usage_error_and_leaves_nothing_beside_the_history(toy):
    args = ("audits", "-p", "no:cacheprovider", "--invariance-progress", "off", "--invariance-history=h.sqlite")
    assert toy.runpytest_subprocess(*args, "--model", "audits/toy/tiny.onnx").ret == 0
    result = toy.runpytest_subprocess(*args, "--model", "audits/toy/tiny.onnx", "--invariance-preprocess",
                                      "mean=0.485,0.456")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: --invariance-preprocess mean= has 2 values for a 1-channel input; give 1 "
                                 "value (every channel) or 1 (one per channel*"])
    # the history was checked at start-up: no h.sqlite-wal / -shm left behind
    assert sorted(p.name for p in toy.path.iterdir() if p.name.startswith("h.sqlite")) == ["h.sqlite"]


def test_history_check_leaves_no_wal_files(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite")
    store.record({"run": {}, "checks": [{"nodeid": "t", "metric": "m", "value": 1.0}]}, "v1")
    store.check()
    assert [p.name for p in tmp_path.iterdir()] == ["h.sqlite"]


@pytest.mark.parametrize("how", ["same", "link"])
def test_two_outputs_in_one_file_are_refused_at_start_up(toy, how):
    history = "r.json"
    if how == "link":
        (toy.path / "r.json").write_text("{}")
        (toy.path / "link.json").symlink_to(toy.path / "r.json")
        history = "link.json"
    result = toy.runpytest_subprocess("audits", "-p", "no:cacheprovider", "--invariance-json=r.json",
                                      f"--invariance-history={history}")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: --invariance-json and --invariance-history name the same file *: give each "
                                 "output its own path"])
    result = toy.runpytest_subprocess("audits", "-p", "no:cacheprovider", "--invariance-report=x.html",
                                      "--invariance-json=x.html")
    assert result.ret == 4 and "--invariance-json and --invariance-report name the same file" in result.stderr.str()


def test_the_nothing_gated_line_counts_the_folders_factors():
    rows = [{"details": {"factors_gated": {}, "factor": "a", "n_factors": 4}}]
    assert "nothing gated (1 of the folder's 4 factor(s) measured, none gated)" in gate_summary(rows)
    rows += [{"details": {"factors_gated": {}, "factor": f, "n_factors": 4}} for f in "bcd"]
    assert "nothing gated (4 factor(s) measured only)" in gate_summary(rows)


SUITES = sorted(p.parent.name for p in (Path(__file__).resolve().parents[1] / "audits").glob("*/invariance.toml"))


@pytest.mark.parametrize("name", SUITES)
def test_a_gate_failure_names_only_what_its_suite_reads(name):
    # face_perturbation's checks carry details.factor too: its failure named the data folder's
    # toml and --invariance-gate, neither of which it reads
    suite = Suite.load(Path(__file__).resolve().parents[1] / "audits" / name / "invariance.toml")
    r = evaluate("t", name, "balanced_error", Estimate(0.02, 0.0, 0.05, chance=0.5, n=60), Threshold(">=", 0.4),
                 {"factor": "rotation", "model": "net"}, suite.fix_hints())
    reads_gate = "--invariance-gate" in suite.config["suite"].get("options", [])
    assert ("--invariance-gate" in r.message) == reads_gate == (name == "factors")
    assert "--invariance-threshold rotation.balanced_error=VALUE" in r.message
    assert f"under [thresholds] in audits/{name}/invariance.toml" in r.message
    assert "data folder" not in r.message


def test_a_factor_gate_failure_names_the_data_folders_toml(tmp_path, monkeypatch):
    from PIL import Image

    from pytest_invariance.data.factor_folder import load_factor_folder
    from pytest_invariance.studies.factors import folder_suite

    monkeypatch.chdir(tmp_path)
    (tmp_path / "faces").mkdir()
    rows = ["image,split,occluded"]
    for i in range(40):
        Image.fromarray(np.full((8, 8, 3), 6 * i, np.uint8)).save(tmp_path / "faces" / f"{i}.png")
        rows.append(f"{i}.png,{('train', 'train', 'train', 'val', 'test')[i % 5]},{i % 2}")
    (tmp_path / "faces" / "labels.csv").write_text("\n".join(rows) + "\n")
    base = Suite.load(Path(__file__).resolve().parents[1] / "audits" / "factors" / "invariance.toml")
    suite = folder_suite(base, load_factor_folder(tmp_path / "faces"))
    r = evaluate("t", "factors", "balanced_error", Estimate(0.02, 0.0, 0.05, chance=0.5, n=60), Threshold(">=", 0.4),
                 {"factor": "occluded", "model": "net"}, suite.fix_hints())
    assert "\"occluded.balanced_error\" under [thresholds] in faces/invariance.toml" in r.message
    assert "--invariance-gate" in r.message


def test_the_preprocess_hint_pastes_as_printed():
    # The option takes one KEY=VALUE: "--invariance-preprocess size=28x28 channels=1" made
    # pytest read "channels=1" as a file to collect.
    import shlex

    from pytest_invariance._model_check import feed_fix
    from pytest_invariance.settings import parse_preprocess

    hint = feed_fix((3, 32, 32), (1, 28, 28))
    words = shlex.split(hint)
    assert words[0::2] == ["--invariance-preprocess"] * 2
    assert [parse_preprocess(w) for w in words[1::2]] and sorted(words[1::2]) == ["channels=1", "size=28x28"]
    assert feed_fix((3, 32, 32), (3, None, None)) == ""


def test_a_data_error_of_a_loader_that_cannot_skip_names_no_skip_bad(tmp_path):
    # MNIST's IDX files cannot lose one bad image: --invariance-skip-bad (which mnist_rotation does
    # not read) was the generic hint for every DataError
    from pytest_invariance._outcomes import study_error
    from pytest_invariance.data.mnist import _read_idx
    from pytest_invariance.errors import DataError

    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x08\x03" + b"\0" * 12)
    with pytest.raises(DataError) as info:
        _read_idx(bad)
    line = str(study_error("study mnist_rotation/ip1 could not run", info.value))
    assert "bad magic number" in line and "--invariance-skip-bad" not in line
    assert line.endswith("fix: fix or replace the data files named above, or point --invariance-data-dir at an "
                         "intact copy")


def test_a_constant_layer_of_a_bundled_model_names_invariance_layers_not_layer(toy):
    # --layer needs --model: for a suite's own model the fix is --invariance-layers
    from collections import OrderedDict

    from pytest_invariance.testing import export_onnx

    torch.manual_seed(0)
    dead = torch.nn.Sequential(OrderedDict(conv=torch.nn.Conv2d(1, 4, 5), act=torch.nn.ReLU(),
                                           flat=torch.nn.Flatten(1))).eval()
    with torch.no_grad():
        dead.conv.bias.fill_(-1e3)  # a dead ReLU: every output 0
    export_onnx(dead, toy.path / "audits" / "toy" / "tiny.onnx")
    result = toy.runpytest_subprocess("audits", "-p", "no:cacheprovider", "--invariance-no-report")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "gives the same embedding (all zero)" in out
    assert "audit another layer of the bundled model with --invariance-layers NAME" in out
    assert "--layer NAME" not in out


@pytest.mark.parametrize("bad", [("--invariance-seed", "abc"), ("--invariance-batch-size", "0"),
                                 ("--invariance-pool", "bogus"), ("-o", "invariance_seed=abc")])
def test_a_run_refused_for_an_option_value_leaves_no_earlier_results(toy, bad):
    """tryout 10: argparse (and the ini check) refused these before any hook ran, so the last
    run's green results.json and report stayed in place as if this run had written them."""
    args = ("audits", "-p", "no:cacheprovider", "--invariance-progress", "off", "--invariance-json=out/r.json",
            "--invariance-report=out/r.html", "--invariance-history=h.sqlite")
    assert toy.runpytest_subprocess(*args).ret == 0
    assert (toy.path / "out" / "r.json").is_file() and (toy.path / "out" / "r.html").is_file()
    result = toy.runpytest_subprocess(*args, *bad)
    assert result.ret == 4, result.stderr.str()
    assert "ERROR: " in result.stderr.str() and "Traceback" not in result.stderr.str()
    assert not (toy.path / "out" / "r.json").exists() and not (toy.path / "out" / "r.html").exists()


def test_a_protocol_too_small_for_the_layer_names_the_protocol_not_the_data():
    """tryout 10: train_per_class = 20 x 3 angles on LeNet's 500-d ip1 was a DataError whose fix
    said to replace the data files (none named, all intact); the fix is the suite's [protocol]."""
    from pytest_invariance._outcomes import study_error
    from pytest_invariance.errors import InvalidParameterError
    from pytest_invariance.studies.mnist_rotation import Protocol, check_protocol

    protocol = Protocol(angles=(-45.0, 0.0, 45.0), train_per_class=20)
    y = np.repeat(np.arange(10), 60)
    inputs = {"train": [{"Xtr": np.zeros((600, 500), np.float16), "ytr": y}]}
    with pytest.raises(InvalidParameterError) as info:
        check_protocol(inputs, protocol, "ip1", where="suite/invariance.toml")
    line = str(study_error("study mnist_rotation/ip1 could not run", info.value))
    assert "data files" not in line and "--invariance-data-dir" not in line
    assert "train_per_class = 20 x 3 angles gives each digit 60 training rows" in line
    assert "fix: set train_per_class = 167 or more (or list more angles) under [protocol] in suite/invariance.toml" in line
    assert line.count("fix:") == 1
    enough = {"train": [{"Xtr": np.zeros((10 * 501, 500), np.float16), "ytr": np.repeat(np.arange(10), 501)}]}
    check_protocol(enough, Protocol(angles=(-45.0, 0.0, 45.0), train_per_class=167), "ip1")  # 501 rows: fits
    with pytest.raises(InvalidParameterError, match="fix: list more angles under .*, or audit a narrower layer"):
        check_protocol(inputs, Protocol(angles=(0.0,)), "conv1")  # every image would not do
