from __future__ import annotations

import argparse
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


@pytest.mark.parametrize("name", ["lenet", "mu_lenet", "pair_lenet", "group_lenet"])
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
    net = {"lenet": L.LeNet, "mu_lenet": L.MuLeNet, "pair_lenet": L.PairLeNet, "group_lenet": L.PairLeNet}[name]()
    net.load_state_dict(torch.load(MODELS_DIR / f"{name}.pt", weights_only=True))
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(x[:64])[0].numpy(), out["ip1"][:64], atol=1e-4)


# ----------------------------------------------------------------------------- training options


def _small(real_batch, n=96):
    return L.ImageArrays(real_batch.images[:n], real_batch.labels[:n])


def test_best_evaluation_weights_are_returned(real_batch):
    """The returned model holds the weights of the best validation round, not the last."""
    small, val = _small(real_batch), L.ImageArrays(real_batch.images[96:256], real_batch.labels[96:256])
    cfg = L.SolverConfig(base_lr=0.01, batch_size=16, max_epochs=3, evals_per_epoch=6, patience=100,
                         optimizer="adam", seed=1)
    states, values = [], []
    torch.manual_seed(cfg.seed)
    model = L.LeNet()

    def loss_fn(index, gen):
        x, y = small.batch(index)
        return torch.nn.functional.cross_entropy(model(x)[1], y)

    def evaluate(m):
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        values.append(float(np.mean(L.predict(m, val)["logits"].argmax(1) == val.labels.numpy())))
        return values[-1]

    r = L.fit(model, len(small), loss_fn, evaluate, cfg, "acc", log=lambda m: None)
    assert len(values) == 18 and r.stop_reason == "max_epochs" and not r.stopped_early
    best = int(np.argmax(values))  # first of equal maxima: improvements must be strict
    assert best < len(values) - 1, "this seed's curve should not peak at the end, or the test shows nothing"
    assert r.best_value == values[best] and r.history[best]["iteration"] == r.best_iteration
    assert all(torch.equal(r.model.state_dict()[k], states[best][k]) for k in states[best])
    assert not all(torch.equal(r.model.state_dict()[k], states[-1][k]) for k in states[-1])


def test_patience_and_time_cap_stop_training(real_batch):
    small = _small(real_batch)
    # lr 0: the metric never strictly improves after the first round, so training stops
    # after exactly 1 + patience rounds.
    cfg = L.SolverConfig(base_lr=0.0, batch_size=16, max_epochs=5, evals_per_epoch=3, patience=2, optimizer="adam")
    r = L.train_lenet(small, small, cfg, log=lambda m: None)
    assert r.stop_reason == "patience" and r.stopped_early and len(r.history) == 3
    assert r.iterations == 3 * 2 and r.best_iteration == 2  # 6 batches per epoch, a round every 2
    # A zero time cap: one step, one evaluation, and that step's weights are kept.
    cfg = L.SolverConfig(batch_size=16, max_epochs=5, max_seconds=0.0, seed=2)
    r = L.train_lenet(small, small, cfg, log=lambda m: None)
    assert r.stop_reason == "max_seconds" and r.iterations == 1 == r.best_iteration and len(r.history) == 1


def test_adam_and_unknown_optimizer():
    net = L.LeNet()
    opt, sched = L.make_optimizer(net, L.SolverConfig(optimizer="adam", base_lr=1e-3, weight_decay=0.0))
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-3
    assert sched.lr_lambdas[0](10_000) == pytest.approx(2 ** -0.75)  # Caffe's inv policy, as for SGD
    with pytest.raises(ValueError, match="'sgd' or 'adam'"):
        L.make_optimizer(net, L.SolverConfig(optimizer="rmsprop"))


def test_group_loss_equals_a_hand_computation(real_batch):
    torch.manual_seed(0)
    net = L.PairLeNet().eval()
    x, _ = real_batch.batch(torch.arange(12))
    y = torch.tensor([3] * 4 + [7] * 4 + [1] * 4)  # 3 groups of 4 (labels need not be true ones)
    weights = {"conv1": 0.3, "ip1": 0.05, "ip2": 1.0}
    with torch.no_grad():
        got = L.group_loss(net, x, y, 4, weights).item()
        acts = {k: v.numpy().astype(np.float64).reshape(12, -1) for k, v in net.activations(x).items()}
    logits = acts["ip2"]
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    want = -logp[np.arange(12), y.numpy()].mean()
    for name, w in weights.items():
        per_group = []
        for g in range(3):
            a = acts[name][4 * g : 4 * g + 4]
            # mean over ordered pairs i != j of 0.5 * mean((a_i - a_j)^2)
            d = [0.5 * np.mean((a[i] - a[j]) ** 2) for i in range(4) for j in range(4) if i != j]
            per_group.append(np.mean(d))
        want += w * np.mean(per_group)
    assert got == pytest.approx(want, rel=1e-5)
    # K = 2: the Euclidean part is PAIR-LeNet's pair term on the same pairs.
    with torch.no_grad():
        xa, xb = x[0::2], x[1::2]
        ya = torch.zeros(6, dtype=torch.long)
        pair_terms = L.pair_loss(net, xa, xb, ya) - torch.nn.functional.cross_entropy(net(xa)[1], ya)
        inter = torch.stack([xa, xb], 1).reshape(12, 1, 28, 28)
        yy = torch.zeros(12, dtype=torch.long)
        group_terms = L.group_loss(net, inter, yy, 2) - torch.nn.functional.cross_entropy(net(inter)[1], yy)
    assert group_terms.item() == pytest.approx(pair_terms.item(), rel=1e-5)
    with pytest.raises(ValueError, match="divide the batch"):
        L.group_loss(net, x, y, 5)


def test_class_groups_are_same_class_and_disjoint():
    labels = torch.tensor(np.random.default_rng(0).integers(0, 4, 203))
    order = L.class_groups(labels, 8, torch.Generator().manual_seed(0))
    groups = order.reshape(-1, 8)
    assert len(set(order.tolist())) == len(order)  # no item twice
    assert all(len(set(labels[g].tolist())) == 1 for g in groups)
    counts = np.bincount(labels.numpy())
    assert len(groups) == sum(c // 8 for c in counts)  # only each class's remainder sits out
    again = L.class_groups(labels, 8, torch.Generator().manual_seed(0))
    other = L.class_groups(labels, 8, torch.Generator().manual_seed(1))
    assert torch.equal(order, again) and not torch.equal(order, other)


def test_group_lenet_is_seeded_and_learns(real_batch):
    small, val = _small(real_batch, 192), L.ImageArrays(real_batch.images[192:], real_batch.labels[192:])

    def run(seed):
        cfg = L.SolverConfig(batch_size=32, max_epochs=2, evals_per_epoch=1, optimizer="adam", base_lr=3e-3, seed=seed)
        return L.train_group_lenet(small, val, cfg, group_size=8, log=lambda m: None)

    a, b, c = run(3), run(3), run(4)
    sa = a.model.state_dict()
    assert all(torch.equal(sa[k], b.model.state_dict()[k]) for k in sa)
    assert not all(torch.equal(sa[k], c.model.state_dict()[k]) for k in sa)
    assert a.best_value > 0.3  # 192 training items, 2 epochs: well above the 0.1 chance
    with pytest.raises(ValueError, match="multiple of the group size"):
        L.train_group_lenet(small, val, L.SolverConfig(batch_size=30), group_size=8)


def test_train_script_records_settings_and_exports_the_best(tmp_path, real_batch):
    """train.py end to end on 200 images: ONNX, state_dict, record and README agree."""
    import importlib.util

    path = MODELS_DIR.parent / "train.py"
    spec = importlib.util.spec_from_file_location("mnist_rotation_train", path)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    args = ["--out", str(tmp_path), "--train-images", "200", "--val-images", "40", "--test-images", "40",
            "--batch-size", "32", "--epochs", "2", "--evals-per-epoch", "2", "--threads", "1"]
    assert train.main(["--model", "group_lenet", "--group-size", "4", "--max-minutes", "0", *args]) == 0
    assert train.main(["--model", "lenet", "--optimizer", "sgd", "--lr", "0.02", *args]) == 0
    record = json.loads((tmp_path / "training.json").read_text())
    g, le = record["group_lenet"], record["lenet"]
    assert g["group_size"] == 4 and g["stop_reason"] == "max_seconds" and g["iterations"] == 1
    assert g["solver"]["optimizer"] == "adam" and g["solver"]["base_lr"] == 1e-3 and g["max_minutes"] == 0
    assert le["stop_reason"] in ("max_epochs", "patience") and le["solver"] == {
        "optimizer": "sgd", "base_lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "gamma": 1e-4, "power": 0.75}
    assert le["val_images"] == 40 and le["patience"] == 4 and le["evals_per_epoch"] == 2
    best = max(h["val_softmax_acc"] for h in le["history"])
    assert le["val_best"] == pytest.approx(best, abs=1e-5)
    assert all(h["lr"] > 0 for h in le["history"])
    readme = (tmp_path / "README.md").read_text()
    assert "| group_lenet (K=4) | 0 | adam |" in readme and "| lenet | 0 | sgd |" in readme
    # The exported file is the best checkpoint: its test accuracy is the recorded one.
    import onnxruntime as ort

    test = train.rotated("test", argparse.Namespace(
        data_dir=None, cache_dir=None, train_images=None, val_images=None, test_images=40))
    sess = ort.InferenceSession(str(tmp_path / "lenet.onnx"), providers=["CPUExecutionProvider"])
    x, y = test.batch(torch.arange(len(test)))
    acc = float(np.mean(sess.run(["logits"], {"input": x.numpy()})[0].argmax(1) == y.numpy()))
    assert acc == pytest.approx(le["test_softmax_acc"], abs=1e-5)
    net = L.LeNet()
    net.load_state_dict(torch.load(tmp_path / "lenet.pt", weights_only=True))
    with torch.no_grad():
        assert float(np.mean(net.eval()(x)[1].argmax(1).numpy() == y.numpy())) == pytest.approx(acc, abs=1e-5)


def test_compare_angle_matches_sklearn(tmp_path):
    """compare_angle.py's figures equal scikit-learn fits on the same ONNX features."""
    import importlib.util

    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LinearRegression

    spec = importlib.util.spec_from_file_location("compare_angle", MODELS_DIR.parent / "compare_angle.py")
    cmp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cmp)
    train = cmp.train
    # Two untrained-but-different LeNets are enough: the script only reads their ip1.
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        torch.onnx.export(L.LeNet().eval(), (torch.zeros(2, 1, 28, 28),), str(tmp_path / f"{name}.onnx"),
                          input_names=["input"], output_names=["ip1", "logits"],
                          dynamic_axes={n: {0: "N"} for n in ("input", "ip1", "logits")}, dynamo=False)
    out = tmp_path / "cmp.json"
    try:
        cmp.main(["--models", "a,b", "--dir", str(tmp_path), "--train-images", "1000", "--test-images", "60",
                  "--threads", "1", "--json", str(out)])
    except Exception as exc:  # noqa: BLE001 - any missing MNIST source means: skip
        if "MNIST" not in str(exc):
            raise
        pytest.skip(f"MNIST not available: {exc}")
    got = json.loads(out.read_text())
    ns = argparse.Namespace(data_dir=None, cache_dir=None, train_images=1000, val_images=None, test_images=60)
    tr, te = train.rotated("train", ns), train.rotated("test", ns)
    ang_tr, ang_te = np.repeat(train.ANGLES, 1000), np.repeat(train.ANGLES, 60)
    for name in ("a", "b"):
        f_tr = train.onnx_outputs(tmp_path / f"{name}.onnx", tr)["ip1"].astype(np.float64)
        f_te = train.onnx_outputs(tmp_path / f"{name}.onnx", te)["ip1"].astype(np.float64)
        d_tr, d_te = tr.labels.numpy(), te.labels.numpy()
        pred = np.empty(len(f_te))
        for c in np.unique(d_te):
            reg = LinearRegression().fit(f_tr[d_tr == c], ang_tr[d_tr == c])
            pred[d_te == c] = reg.predict(f_te[d_te == c])
        # The probe solves the normal equations, sklearn a QR/SVD least squares: on an untrained
        # net's nearly collinear ReLU features they agree to ~0.2 %; a wrong class or angle
        # order would be off by degrees.
        assert got[name]["angle_mae"]["value"] == pytest.approx(np.abs(pred - ang_te).mean(), rel=1e-2)
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(f_tr, ang_tr)
        assert got[name]["angle_acc"]["value"] == pytest.approx(np.mean(lda.predict(f_te) == ang_te))
        assert got[name]["angle_acc_chance"] == pytest.approx(1 / 7)
        for m in ("angle_mae", "angle_acc"):
            assert got[name][m]["ci_low"] <= got[name][m]["value"] <= got[name][m]["ci_high"]
    diff = got["b - a"]
    for m in ("angle_mae", "angle_acc"):
        assert diff[m]["value"] == pytest.approx(got["b"][m]["value"] - got["a"][m]["value"])
        assert diff[m]["ci_low"] <= diff[m]["value"] <= diff[m]["ci_high"]
