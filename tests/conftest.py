import pytest

# pytester restores sys.modules after each test: a C extension first imported inside a test
# is dropped and imported again by a later one, which aborts the process (onnx's protobuf).
# Importing them here, before any test, keeps them loaded once for the session.
try:
    import onnx  # noqa: F401
    import torch._inductor.codecache  # noqa: F401  (torch.export.save imports it; re-imported it re-registers and fails)
    import torch.onnx  # noqa: F401
except ImportError:  # the tests that need them skip
    pass

pytest_plugins = "pytester"


@pytest.fixture
def toy(pytester):
    """A pytester folder holding the toy suite and its tiny ONNX model (pytest_invariance.testing)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from pytest_invariance.testing import export_onnx, tiny_cnn, write_toy_suite

    suite = write_toy_suite(pytester.path, "tiny.onnx", "output")
    export_onnx(tiny_cnn(), suite / "tiny.onnx")
    return pytester
