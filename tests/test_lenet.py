from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_invariance.data.perturbations import PerturbationSpec  # noqa: E402
from pytest_invariance.studies import lenet as L  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parents[1] / "audits" / "mnist_rotation" / "models"


@pytest.fixture(scope="module")
def real_batch():
    """512 real MNIST test images at all 7 angles' worth of variety (one angle each)."""
    from pytest_invariance.data.mnist import load_mnist

    try:
        test = load_mnist("test")
    except Exception as exc:  # noqa: BLE001 - any missing source means: skip
        pytest.skip(f"MNIST not available: {exc}")
    angles = (-45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0)
    rotated = L.rotate_uint8(test.images[:512, 0], angles)
    # Image i at angle i % 7: every angle, no image twice.
    pick = np.arange(512) + (np.arange(512) % 7) * 512
    labels = torch.tensor(test.labels["label"].to_numpy()[:512])
    return L.ImageArrays(torch.from_numpy(rotated[pick, None]), labels)


def test_lenet_blob_shapes_and_post_relu_ip1():
    net = L.LeNet().eval()
    x = torch.rand(3, 1, 28, 28)
    acts = net.activations(x)
    assert {k: tuple(v.shape) for k, v in acts.items()} == {
        "conv1": (3, 20, 24, 24), "conv2": (3, 50, 8, 8), "ip1": (3, 500), "ip2": (3, 10)}
    seen = {}
    net.ip1.register_forward_hook(lambda m, i, o: seen.__setitem__("ip1", o))
    net.ip1.fc.register_forward_hook(lambda m, i, o: seen.__setitem__("ip1.fc", o))
    feats, logits = net(x)
    assert torch.equal(seen["ip1"], feats) and bool((feats >= 0).all())
    assert bool((seen["ip1.fc"] < 0).any())  # the pre-ReLU values are a different layer
    assert torch.equal(seen["ip1.fc"].clamp(min=0), feats)
    assert [n for n, _ in net.named_children()] == ["conv1", "pool1", "conv2", "pool2", "ip1", "ip2"]


def test_mu_lenet_has_no_classifier():
    out = L.MuLeNet()(torch.rand(2, 1, 28, 28))
    assert len(out) == 1 and tuple(out[0].shape) == (2, 500)
    assert not hasattr(L.MuLeNet(), "ip2")


def test_rotate_uint8_matches_the_evaluation_rotation():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 28, 28)).astype(np.uint8)
    out = L.rotate_uint8(imgs, (-30.0, 45.0))
    spec = PerturbationSpec("rotation", (-30.0, 45.0))
    ref = spec.apply(torch.from_numpy(imgs[:, None].astype(np.float32) / 256), 45.0)[:, 0].numpy()
    assert out.shape == (8, 28, 28)
    assert np.abs(out[4:] / 256 - ref).max() <= 0.5 / 256 + 1e-7
    assert not np.array_equal(out[:4], out[4:])


def test_mav_cosine_accuracy_on_known_geometry():
    mavs = np.eye(3)
    feats = np.array([[2.0, 0.1, 0], [0, 0, 5.0], [0.9, 1.0, 0]], np.float32)
    assert L.mav_cosine_accuracy(feats, np.array([0, 2, 0]), mavs) == pytest.approx(2 / 3)
    t = L.normalized_targets(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert t.min() == 0 and t.max() == 1 and t[0, 1] == pytest.approx(0.25)


@pytest.mark.parametrize("kind", ["lenet", "mu_lenet", "pair_lenet"])
def test_a_few_sgd_steps_reduce_the_loss(kind, real_batch):
    torch.manual_seed(0)
    cfg = L.SolverConfig(base_lr=0.003 if kind == "mu_lenet" else 0.01)
    x, y = real_batch.batch(torch.arange(64))
    x2, _ = real_batch.batch(torch.arange(64, 128))
    net = {"lenet": L.LeNet, "mu_lenet": L.MuLeNet, "pair_lenet": L.PairLeNet}[kind]()
    targets = torch.from_numpy(L.normalized_targets(np.random.default_rng(0).random((10, 500))))

    def loss():
        if kind == "lenet":
            return torch.nn.functional.cross_entropy(net(x)[1], y)
        if kind == "mu_lenet":
            return 0.5 * (net(x)[0] - targets[y]).pow(2).sum(1).mean()
        return L.pair_loss(net, x, x2, y)

    opt, sched = L.make_optimizer(net, cfg)
    with torch.no_grad():
        first = loss().item()
    for _ in range(12):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        assert loss().item() < 0.8 * first


def test_same_seed_same_weights(real_batch):
    cfg = L.SolverConfig(batch_size=32, max_epochs=1, evals_per_epoch=1, seed=3)
    small = L.ImageArrays(real_batch.images[:96], real_batch.labels[:96])

    def run(seed):
        cfg.seed = seed
        r = L.train_lenet(small, small, cfg, log=lambda m: None)
        return r.model.state_dict()

    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", ["lenet", "mu_lenet", "pair_lenet"])
def test_exported_onnx_models(name, real_batch):
    ort = pytest.importorskip("onnxruntime")
    path = MODELS_DIR / f"{name}.onnx"
    assert path.is_file(), f"{path} missing: run python audits/mnist_rotation/train.py --model {name}"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert sess.get_inputs()[0].shape[1:] == [1, 28, 28]
    names = [o.name for o in sess.get_outputs()]
    assert names == (["ip1"] if name == "mu_lenet" else ["ip1", "logits"])
    x, y = real_batch.batch(torch.arange(len(real_batch)))
    out = dict(zip(names, sess.run(names, {"input": x.numpy()})))
    assert out["ip1"].shape == (len(y), 500) and (out["ip1"] >= 0).all()
    record = json.loads((MODELS_DIR / "training.json").read_text())[name]
    if "logits" in out:
        # A trained model, not an exported initialisation: rotated digits are recognised.
        assert np.mean(out["logits"].argmax(1) == y.numpy()) > 0.9
        assert record["test_softmax_acc"] > 0.9
    else:
        # mu-LeNet's features point at their class's regression target (chance: 0.1).
        targets = np.load(MODELS_DIR / "mu_lenet_targets.npz")["targets"]
        assert L.mav_cosine_accuracy(out["ip1"], y.numpy(), targets) > 0.8
    # The torch state_dict shipped next to it gives the same features.
    net = {"lenet": L.LeNet, "mu_lenet": L.MuLeNet, "pair_lenet": L.PairLeNet}[name]()
    net.load_state_dict(torch.load(MODELS_DIR / f"{name}.pt", weights_only=True))
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(x[:64])[0].numpy(), out["ip1"][:64], atol=1e-4)
