"""Running out of memory is fixed by a smaller batch (extraction) or fewer rows held (a probe),
never by another --layer or [preprocess]: the one-line error names the option that fixes it."""
from __future__ import annotations

import pytest

from pytest_invariance._outcomes import study_error
from pytest_invariance.errors import EmbeddingError, out_of_memory
from pytest_invariance.testing import copy_suite, write_noise_folder

# A model that runs the start-up check's batches of 4 and 1 but runs out of memory on the
# extraction batch, the way each backend says so.
RAISES = {
    "torch_cuda": 'torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB total)")',
    "memory_error": "MemoryError()",
    "onnxruntime": 'RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while '
                   'running Conv node. Name:\'/conv/Conv\' Status Message: BFCArena::AllocateRawInternal Failed to '
                   'allocate memory for requested buffer of size 2147483648")',
}
NETS = """\
import torch, torch.nn as nn

class Net(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.conv, self.kind = nn.Conv2d(3, 8, 3), kind

    def forward(self, x):
        if x.shape[0] > 8 or self.kind == "always":
            raise {{"torch_cuda": lambda: {torch_cuda}, "memory_error": lambda: {memory_error},
                    "onnxruntime": lambda: {onnxruntime},
                    "always": lambda: {torch_cuda}}}[self.kind]()
        return self.conv(x).mean((2, 3))

def _net(kind):
    torch.manual_seed(0)
    return Net(kind)

def torch_cuda(): return _net("torch_cuda")
def memory_error(): return _net("memory_error")
def onnxruntime(): return _net("onnxruntime")
def always(): return _net("always")
""".format(**RAISES)


@pytest.fixture
def oom_suite(pytester, tmp_path):
    pytest.importorskip("torch")
    suite = copy_suite(pytester, "factors")
    (suite.path / "oom_nets.py").write_text(NETS)
    return suite, write_noise_folder(tmp_path / "data")


def _run(suite, data, kind, *extra):
    return suite.runpytest_subprocess(
        "audits/factors", "-p", "no:cacheprovider", "--model", f"oom_nets:{kind}",
        f"--invariance-data-dir={data}", "--invariance-preprocess", "size=16x16", "--invariance-no-cache",
        "--invariance-json=r.json", "--invariance-no-report", "--invariance-history=h.sqlite",
        "--invariance-progress", "off", *extra)


@pytest.mark.parametrize("kind", sorted(RAISES))
def test_out_of_memory_in_extraction_names_the_batch_size(oom_suite, kind):
    suite, data = oom_suite
    result = _run(suite, data, kind)
    out = result.stdout.str()
    assert result.ret == 3, out
    lines = [ln for ln in out.splitlines() if ln.startswith("embedding ") and "could not run: EmbeddingError:" in ln]
    assert len(lines) == 1, out  # once, the other factor's test refers back to it
    # was "...; fix: pick another --layer, or fix the suite's [preprocess] for this model"
    assert "runs out of memory on a batch of" in lines[0] and "pass a smaller --invariance-batch-size" in lines[0]
    assert "--layer" not in lines[0] and "[preprocess]" not in lines[0], lines[0]
    if kind == "torch_cuda":  # the fix it names works
        fixed = _run(suite, data, kind, "--invariance-batch-size", "8")
        assert fixed.ret == 0, fixed.stdout.str()


def test_out_of_memory_at_start_up_is_an_error_not_a_skip(oom_suite):
    # was "suite factors: skipped: ... fails on suite factors's input ...", exit 5 (nothing audited)
    suite, data = oom_suite
    result = _run(suite, data, "always")
    assert result.ret == 4, result.stdout.str()
    result.stderr.fnmatch_lines(["ERROR: oom_nets:always runs out of memory on 4 image(s) of suite factors's start-up "
                                 "check: CUDA out of memory*; fix: pass --device cpu, or free the device's memory"])


def test_the_fix_follows_what_failed():
    # what numpy raises for an array it cannot allocate (a MemoryError subclass)
    numpy_oom = MemoryError("Unable to allocate 8.00 TiB for an array with shape (1099511627776,) and data type float64")
    assert out_of_memory(numpy_oom)
    assert str(study_error("study factors/flag could not run", numpy_oom)).endswith(
        "fix: lower --invariance-max-rows (embedding rows a probe holds at once)")
    assert str(study_error("embedding data at layer fc could not run", numpy_oom)).endswith(
        "fix: lower --invariance-batch-size (images per model call)")
    wrapped = RuntimeError("extraction failed")
    wrapped.__cause__ = MemoryError()
    assert out_of_memory(wrapped)
    non_finite = EmbeddingError("X contains NaN or Inf in 1 rows (first: [1])")
    assert not out_of_memory(non_finite)
    assert str(study_error("study factors/flag could not run", non_finite)).endswith(
        "fix: pick another --layer, or fix the preprocessing (--invariance-preprocess for a --model, [preprocess] "
        "in the suite's or the data folder's invariance.toml for a bundled model)")
