"""Model options through pytester: factory specs, preprocessing, pool, and one-line refusals before the tests."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402,F401  (C extensions imported once, up front; see test_plugin.py)
import torch.onnx  # noqa: E402,F401

from pytest_invariance.testing import export_onnx, read_results as results, tiny_cnn  # noqa: E402


def test_factory_spec_from_the_command_line_is_not_a_path(toy):
    (toy.path / "mynets.py").write_text("from pytest_invariance.testing import tiny_cnn\n\ndef make():\n    return tiny_cnn(seed=5)\n")
    result = toy.runpytest_subprocess("audits", "--model", "mynets:make", "--layer", "act", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    run = results(toy)["run"]
    assert run["model_path"] == "mynets:make"
    assert run["models"]["make"]["model_sha256"] == run["model_sha256"]
    assert run["model_version"] == run["model_sha256"][:12]


def test_user_model_takes_only_its_own_preprocessing_and_it_is_recorded(toy):
    toml = toy.path / "audits" / "toy" / "invariance.toml"
    # The suite's bundled model is prewhitened; a --model must not inherit that.
    toml.write_text(toml.read_text().replace("[models.", "[preprocess]\nchannels = 1\nprewhiten = true\n\n[models.", 1))
    export_onnx(tiny_cnn(seed=3), toy.path / "user.onnx")
    result = toy.runpytest_subprocess("audits", "--model", "user.onnx", "--invariance-preprocess", "mean=0.5",
                                      "--invariance-preprocess", "std=0.25", "--invariance-pool", "gap")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "invariance: input float32[[]N, 1, 28, 28[]] (NCHW), layout from *; pool=gap; preprocessing * mean=0.5 std=0.25",
        "invariance: suite toy: user layer=output pool=gap preprocessing: channels=1 mean=0.5 std=0.25",
    ])
    model = results(toy)["run"]["models"]["user"]
    assert model["preprocessing"]["prewhiten"] is False
    assert model["preprocessing"]["mean"] == [0.5] and model["preprocessing"]["std"] == [0.25]
    assert (model["pool"], model["input_layout"], model["input_dtype"]) == ("gap", "nchw", "float32")
    html = (toy.path / "reports" / "index.html").read_text()
    for column, value in (("pool", "gap"), ("input_layout", "nchw"), ("input_dtype", "float32")):
        assert f"<th>{column}</th>" in html and f'<td class="mono">{value}</td>' in html


def test_bad_preprocess_option_fails_before_collection(pytester):
    result = pytester.runpytest("--invariance-preprocess", "size=big")
    result.stderr.fnmatch_lines(["*'size=big': 'big' is not a valid size*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


@pytest.mark.parametrize("kind,line", [
    ("vector", "ERROR: *vec.onnx takes 'input' float32[[]?, 784[]] (rank 2); the suites feed one image batch [[]N, C, H, W[]]"),
    ("tokens", "ERROR: *tok.onnx layer 'output' is a token sequence [[]N, 4, 196[]]; --invariance-pool auto would "
               "flatten token positions into features; choose --invariance-pool cls (token 0) or --invariance-pool mean*"),
])
def test_models_that_cannot_be_read_are_one_line_before_any_test(toy, kind, line):
    from torch import nn

    if kind == "vector":
        net, shape, name = nn.Linear(784, 4), (784,), "vec.onnx"
    else:  # [N, 1, 28, 28] -> 4 tokens of 196 pixels
        class Tokens(nn.Module):
            def forward(self, x):
                return x.reshape(x.shape[0], 4, 196)
        net, shape, name = Tokens(), (1, 28, 28), "tok.onnx"
    export_onnx(net, toy.path / name, input_shape=shape)
    result = toy.runpytest_subprocess("audits", "--model", name)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([line])
    out = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in out and "FAILED" not in out and out.count(name) <= 3


def _two_heads(order: str):
    """tiny_cnn's 10 outputs as the embedding, plus a 3-way head: returned in ``order``."""
    import torch
    from torch import nn

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = tiny_cnn(seed=4), nn.Linear(10, 3)

        def forward(self, x):
            e = self.body(x)
            return (e, self.head(e)) if order == "embedding,logits" else (self.head(e), e)

    torch.manual_seed(1)
    return TwoHeads().eval()


@pytest.mark.parametrize("order", ["embedding,logits", "logits,embedding"])
def test_a_model_with_several_outputs_is_refused_until_one_is_named(toy, order):
    export_onnx(_two_heads(order), toy.path / "two.onnx", output_names=tuple(order.split(",")))
    result = toy.runpytest_subprocess("audits", "--model", "two.onnx", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *two.onnx has 2 outputs (*); which one is the embedding is not known: "
                                 "name it with --layer NAME"])
    assert "'embedding' [?, 10]" in result.stderr.str() and "'logits' [?, 3]" in result.stderr.str()
    assert "FAILED" not in result.stdout.str()
    # Named, it reads that output: the figure equals the embedding model's own output.
    result = toy.runpytest_subprocess("audits", "--model", "two.onnx", "--layer", "embedding", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    named = results(toy)["checks"][0]["value"]
    export_onnx(tiny_cnn(seed=4), toy.path / "one.onnx")
    toy.runpytest_subprocess("audits", "--model", "one.onnx", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert named == pytest.approx(results(toy)["checks"][0]["value"], abs=1e-6)


def test_a_torch_model_returning_several_values_is_refused_at_start_up(toy):
    from pathlib import Path

    (toy.path / "heads.py").write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                                       "from test_plugin_models import _two_heads\n\n"
                                       "def make():\n    return _two_heads('logits,embedding')\n")
    result = toy.runpytest_subprocess("audits", "--model", "heads:make", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: heads:make returns 2 values (0: [[]4, 3[]], 1: [[]4, 10[]]), so its 'output' "
                                 "layer is ambiguous; name the module that produces the embedding with --layer*"])
    assert "FAILED" not in result.stdout.str() and "Traceback" not in result.stdout.str()
    result = toy.runpytest_subprocess("audits", "--model", "heads:make", "--layer", "body", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_model_with_nan_outputs_is_named_for_its_numerics_not_eval_mode(toy):
    export_onnx(tiny_cnn(nan=True), toy.path / "nan.onnx")
    result = toy.runpytest_subprocess("audits", "--model", "nan.onnx", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *nan.onnx layer 'output' gives NaN/Inf embeddings for 4 of 4 random images "
                                 "at suite toy's input: check the model's numerics at this layer and --invariance-preprocess"])
    assert "inference mode" not in result.stderr.str()


def test_a_model_of_other_channels_is_skipped_with_the_option_that_feeds_it(toy):
    from pytest_invariance.testing import grid_cnn

    export_onnx(grid_cnn(4, 3, 4), toy.path / "rgb.onnx", input_shape=(3, 28, 28))  # the toy suite feeds 1 channel
    result = toy.runpytest_subprocess("audits", "--model", "rgb.onnx", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*suite toy: skipped: *rgb.onnx expects input*but suite toy feeds float32[[]N, 1, 28, 28[]] "
                                 "(NCHW); to feed it, pass --invariance-preprocess channels=3"])
    result = toy.runpytest_subprocess("audits", "--model", "rgb.onnx", "--invariance-preprocess", "channels=3",
                                      "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def _suite_with_user_layer(toy, layer: str = "ip1"):
    """A second toy suite that reads a --model at ``[suite] user_layer`` (like mnist_rotation)."""
    import shutil

    src, dst = toy.path / "audits" / "toy", toy.path / "audits" / "toy_ip1"
    shutil.copytree(src, dst)
    toml = dst / "invariance.toml"
    toml.write_text(toml.read_text().replace('name = "toy"', f'name = "toy_ip1"\nuser_layer = "{layer}"', 1))
    (dst / "test_toy.py").rename(dst / "test_toy_ip1.py")


@pytest.mark.parametrize("kind", ["onnx", "torch"])
def test_a_suite_whose_user_layer_the_model_lacks_skips_and_the_others_run(toy, kind):
    _suite_with_user_layer(toy)
    if kind == "onnx":
        export_onnx(tiny_cnn(seed=2), toy.path / "user.onnx")
        model, layer = "user.onnx", "output"
    else:
        (toy.path / "nets.py").write_text("from pytest_invariance.testing import tiny_cnn\n\n"
                                          "def make():\n    return tiny_cnn(seed=2)\n")
        model, layer = "nets:make", "act"
    result = toy.runpytest_subprocess("audits", "--model", model, "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=1)  # not a usage error: the user named no layer
    line = (f"suite toy_ip1 reads a --model at layer 'ip1' (its [[]suite] user_layer) and *{model} has no layer of "
            "that name: pass --layer NAME to audit one of its layers (--invariance-list-layers lists them)")
    result.stdout.fnmatch_lines([f"invariance: suite toy_ip1: skipped: {line}", f"SKIPPED [[]1[]] *: {line}"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    # The layer the user names is read by every suite; one the model lacks is the user's usage error.
    result = toy.runpytest_subprocess("audits", "--model", model, "--layer", layer, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    a, b = (c["value"] for c in results(toy)["checks"])
    assert a == pytest.approx(b, abs=1e-9)  # the same images and layer in both suites
    result = toy.runpytest_subprocess("audits", "--model", model, "--layer", "ip1", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *'ip1'*"])


def test_a_suite_user_layer_the_model_has_is_read_there(toy):
    """A model with an ``ip1`` module is read there without --layer: the same figure as naming it."""
    (toy.path / "ipnet.py").write_text(
        "from collections import OrderedDict\nfrom torch import nn\nfrom pytest_invariance.testing import tiny_cnn\n\n"
        "def make():\n    m = tiny_cnn(seed=6)\n"
        "    return nn.Sequential(OrderedDict(conv=m.conv, ip1=m.act, pool=m.pool, flat=nn.Flatten(1))).eval()\n")
    _suite_with_user_layer(toy)
    toy.runpytest_subprocess("audits/toy_ip1", "--model", "ipnet:make", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    default = results(toy)["checks"][0]
    toy.runpytest_subprocess("audits/toy_ip1", "--model", "ipnet:make", "--layer", "ip1",
                             "-p", "no:cacheprovider").assert_outcomes(passed=1)
    named = results(toy)["checks"][0]
    assert default["layer"] == named["layer"] == "ip1" and default["value"] == pytest.approx(named["value"], abs=1e-9)
    toy.runpytest_subprocess("audits/toy_ip1", "--model", "ipnet:make", "--layer", "conv",
                             "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert results(toy)["checks"][0]["value"] != pytest.approx(named["value"], abs=1e-6)


def test_a_graph_whose_batch_is_baked_at_the_probe_batch_is_one_usage_error(toy):
    """Baked at 4, the probe's batch: the batch of 4 runs, one image does not (was an INTERNALERROR)."""
    import warnings

    import torch

    net = tiny_cnn(seed=1)

    class Baked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            n = self.net
            return n.fc(n.pool(n.act(n.conv(x))).reshape(4, -1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Baked(), torch.zeros(4, 1, 28, 28), str(toy.path / "baked.onnx"), dynamo=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})
    result = toy.runpytest_subprocess("audits", "--model", "baked.onnx", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out
    result.stderr.fnmatch_lines(["ERROR: *baked.onnx fails on suite toy's input * in a batch of 1 but runs in a batch "
                                 "of 4: *pass --invariance-input-batch 4"])
    result = toy.runpytest_subprocess("audits", "--model", "baked.onnx", "--invariance-input-batch", "4",
                                      "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    baked = results(toy)["checks"][0]["value"]
    export_onnx(net, toy.path / "free.onnx")  # the same weights, any batch: the same figure
    toy.runpytest_subprocess("audits", "--model", "free.onnx", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert baked == pytest.approx(results(toy)["checks"][0]["value"], abs=1e-6)
