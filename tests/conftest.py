import pytest

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
