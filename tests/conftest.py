import pytest

# pytester restores sys.modules after each test: a C extension first imported inside a test
# is dropped and imported again by a later one, which aborts the process (onnx's protobuf).
# Importing them here, before any test, keeps them loaded once for the session.
try:
    import onnx  # noqa: F401
    import torch.onnx  # noqa: F401
except ImportError:  # the tests that need them skip
    pass
else:
    # torch.export's save and load import torch's compile caches lazily; each registers its
    # cache artifacts once per process, so one first imported inside a pytester test, dropped
    # and imported again, fails ("Artifact of type=autotune already registered"). One save
    # and load of a 1x1 Linear here imports every one of them before any test.
    import io

    import torch

    _buf = io.BytesIO()
    torch.export.save(torch.export.export(torch.nn.Linear(1, 1), (torch.zeros(1, 1),)), _buf)
    _buf.seek(0)
    torch.export.load(_buf)
    del _buf

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
