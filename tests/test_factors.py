"""The factors suite: a labelled folder of real images audited with no code.

Folders are built here from the 100 LFW faces that ship with scikit-image, by the same
builder as ``scripts/make_factor_folder.py``: rotation (continuous), blur (categorical)
and occlusion (binary) are PLANTED in the pixels, and three noise columns are drawn at
random. A small seeded conv net exported to ONNX is the model. The probes' figures are
checked against references computed another way (scikit-learn, numbers by hand).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx  # noqa: F401  - imported once here (pytester restores sys.modules between tests)
import pandas as pd
import pytest
import torch
import torch.onnx  # noqa: F401
from PIL import Image

from pytest_invariance.data.factor_folder import load_factor_folder, seeded_split
from pytest_invariance.errors import DataError
from pytest_invariance.testing import copy_suite, export_onnx, grid_cnn, run_and_read

REPO = Path(__file__).resolve().parents[1]
PLANTED = {"rotation": "mae", "blur": "balanced_accuracy", "occluded": "balanced_error"}
NOISE = {"noise_flag": "balanced_error", "noise_group": "balanced_accuracy", "noise_value": "mae"}


def _builder():
    spec = importlib.util.spec_from_file_location("make_factor_folder", REPO / "scripts" / "make_factor_folder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_lfw_folder



@pytest.fixture(scope="module")
def grid_model(tmp_path_factory):
    return export_onnx(grid_cnn(8, 3, 16, padding=1), tmp_path_factory.mktemp("model") / "grid.onnx", (3, 64, 64))


@pytest.fixture(scope="module")
def lfw_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("lfw") / "faces"
    _builder()(root, n_faces=60, per_face=6, seed=0)
    return root


# ----------------------------------------------------------------------------- loading


def _write(root: Path, table: dict, images: int | None = None, mode: str = "L") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(table)
    for k, name in enumerate(df["image"][:images]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        im = Image.new(mode, (8, 8), (128,) * len(mode) if mode != "L" else 128)
        # distinct files: byte-identical copies are one image to the split
        for x, v in enumerate((k % 256, k // 256)):
            im.putpixel((x, 0), v if mode in ("L", "P") else (v,) * len(mode))
        im.save(root / name)
    df.to_csv(root / "labels.csv", index=False)
    return root


def _table(n: int = 60, **cols):
    rng = np.random.default_rng(0)
    base = {"image": [f"i{k:03d}.png" for k in range(n)], "flag": rng.choice(["yes", "no"], n),
            "kind": rng.choice(["red", "green", "blue"], n), "amount": np.round(rng.uniform(0, 50, n), 2)}
    base.update(cols)
    return base


def test_types_are_inferred_and_can_be_overridden(tmp_path):
    t = _table(120, codes=np.arange(120) % 4, count=np.arange(120) % 2)
    root = _write(tmp_path / "d", t)
    with pytest.raises(DataError, match=r"column 'codes' has 4 numeric levels .*--invariance-factor-type codes=categorical"):
        load_factor_folder(root)
    f = load_factor_folder(root, types={"codes": "categorical"})
    kinds = {n: x.type for n, x in f.factors.items()}
    assert kinds == {"flag": "binary", "kind": "categorical", "amount": "continuous", "codes": "categorical",
                     "count": "binary"}
    assert f.factors["flag"].levels == ("no", "yes") and f.factors["flag"].positive == "yes"
    assert f.factors["count"].positive == "1" and not f.factors["codes"].inferred
    assert np.array_equal(f.factors["flag"].values, (np.asarray(t["flag"]) == "yes").astype(float))
    f = load_factor_folder(root, types={"codes": "continuous", "count": "ignore"})
    assert f.factors["codes"].type == "continuous" and "count" not in f.factors


def test_missing_cells_drop_the_image_for_that_factor_only(tmp_path):
    t = _table()
    t["amount"] = [("" if k % 10 == 0 else str(v)) for k, v in enumerate(t["amount"])]
    f = load_factor_folder(_write(tmp_path / "d", t))
    assert np.isnan(f.factors["amount"].values).sum() == 6
    assert f.factors["flag"].known.all() and len(f.images) == 60


def test_a_link_and_its_target_are_one_image(tmp_path):
    # sub -> imgs and labels.csv names sub/...: imgs/... are the same files, not unlabelled ones
    t = _table()
    t["image"] = [f"sub/{n}" for n in t["image"]]
    root = _write(tmp_path / "d", t)
    (root / "sub").rename(root / "imgs")
    (root / "sub").symlink_to(root / "imgs", target_is_directory=True)
    assert len(load_factor_folder(root).images) == 60
    t["image"][1] = "imgs/i000.png"  # the same file under both names
    pd.DataFrame(t).to_csv(root / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"the same file as sub/i000.png \(a symbolic or hard link\): 1 image\(s\): imgs/i000.png"):
        load_factor_folder(root)
    assert len(load_factor_folder(root, skip_bad=True).images) == 59  # one copy is kept


def test_seeded_split_is_identity_disjoint_and_reproducible():
    ids = np.repeat([f"p{k}" for k in range(30)], 5)
    split = seeded_split(len(ids), ids, seed=4)
    sides = {s: set(ids[split == s]) for s in ("train", "val", "test")}
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"] or sides["val"] & sides["test"])
    assert [len(sides[s]) for s in ("train", "val", "test")] == [18, 6, 6]
    assert (split == seeded_split(len(ids), ids, seed=4)).all() and not (split == seeded_split(len(ids), ids, seed=5)).all()


def test_folder_split_by_identity_through_the_loader(lfw_folder):
    f = load_factor_folder(lfw_folder, seed=2)
    assert f.split_source == "seeded, identity-disjoint"
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert not set(f.identity[f.split == a]) & set(f.identity[f.split == b])


BAD = {  # one bad input per kind -> the line its DataError must contain
    "missing_image": ("label row without an image: 1 image(s): i000.png", "--invariance-skip-bad"),
    "unlabelled_image": ("image without a label row: 1 image(s): stray.png", "--invariance-skip-bad"),
    "non_numeric": ("column 'amount' is numeric but has 1 non-numeric value(s) (i003.png: 'abc')", ""),
    "single_value": ("column 'const' has a single value ('7')", "--invariance-factor-type const=ignore"),
    "few_per_class": ("column 'rare' has too few samples per class: 'x' (3 images", "--invariance-factor-type"),
    "case_levels": ("column 'flag' has levels that differ only in case: Yes / yes", ""),
    "bad_split": ("column 'split' has value(s) outside train/val/test: 'training' (1 row); the accepted values are "
                  "train, val and test (in any case): write train for 'training'", ""),
    "number_levels": ("column 'size' has levels that are one number written two ways: 05 / 5; write each level one "
                      "way in labels.csv", "size=continuous"),
}


def _bad_folder(root: Path, kind: str) -> Path:
    t = _table()
    if kind == "non_numeric":
        t["amount"] = [str(v) for v in t["amount"]]
        t["amount"][3] = "abc"
    if kind == "single_value":
        t["const"] = [7] * 60
    if kind == "few_per_class":
        t["rare"] = ["x"] * 3 + ["y"] * 57
    if kind == "case_levels":
        t["flag"] = ["Yes" if k == 5 else v for k, v in enumerate(t["flag"])]
    if kind == "bad_split":
        t["split"] = ["train", "training"] + ["train", "val", "test"] * 19 + ["train"]
    if kind == "number_levels":  # a code column typed as categorical: 05 and 5 would be two levels
        t["size"] = [["5", "7", "9"][k % 3] if k != 4 else "05" for k in range(60)]
    _write(root, t)
    if kind == "missing_image":
        (root / "i000.png").unlink()
    if kind == "unlabelled_image":
        Image.new("L", (8, 8)).save(root / "stray.png")
    return root


@pytest.mark.parametrize("kind", list(BAD))
def test_each_bad_input_gives_its_one_clear_error(tmp_path, kind):
    root = _bad_folder(tmp_path / kind, kind)
    with pytest.raises(DataError) as exc:
        load_factor_folder(root, types={"size": "categorical"} if kind == "number_levels" else None)
    line, fix = BAD[kind]
    assert line in str(exc.value) and fix in str(exc.value) and "1 problem(s)" in str(exc.value)


@pytest.mark.parametrize("declared", [None, "binary", "categorical"])
def test_a_hint_for_one_number_written_two_ways_names_no_type_that_fails(tmp_path, declared):
    # 0 and 0.0 (a float export) were refused with "pass --invariance-factor-type COL=TYPE", and
    # binary or categorical gave the same refusal: no type merges two spellings (05 may be
    # another code than 5), so the hint names the file, and continuous only for an amount
    t = _table(60, wears=[("0.0" if k == 7 else "0") if k % 2 else "1" for k in range(60)])
    root = _write(tmp_path / "d", t)
    with pytest.raises(DataError) as exc:
        load_factor_folder(root, types={"wears": declared} if declared else None)
    msg = str(exc.value)
    assert "column 'wears' has levels that are one number written two ways: 0 / 0.0; write each level one way" in msg
    assert "COL=TYPE" not in msg and "1 problem(s)" in msg
    for kind in ("binary", "categorical"):  # what the message says does not merge them, does not
        with pytest.raises(DataError, match="one number written two ways"):
            load_factor_folder(root, types={"wears": kind})
    f = load_factor_folder(root, types={"wears": "continuous"})  # what it says does read them as numbers
    assert f.factors["wears"].type == "continuous" and set(f.factors["wears"].values) == {0.0, 1.0}
    t["wears"] = ["0" if v == "0.0" else v for v in t["wears"]]  # and what it says to write
    _write(root, t)
    assert load_factor_folder(root).factors["wears"].type == "binary"


@pytest.mark.parametrize("val, test", [("validation", "testing"), ("valid", "test"), ("dev", "Testing")])
def test_a_misnamed_split_is_one_line_naming_the_accepted_values(tmp_path, val, test):
    # 'validation' rows were row problems: the factors then had no val images, one problem each
    from pytest_invariance.data.folder import load_image_folder

    t = _table(100, split=[("train", "train", "train", val, test)[k % 5] for k in range(100)])
    root = _write(tmp_path / "d", t)
    with pytest.raises(DataError) as exc:
        load_factor_folder(root, skip_bad=True)  # no row is bad: skipping them is no fix either
    msg = str(exc.value)
    assert "1 problem(s)" in msg and "too few samples" not in msg and "--invariance-skip-bad" not in msg
    say = {"validation": "val", "valid": "val", "dev": "val", "testing": "test"}
    odd = [v for v in (val, test.lower()) if v in say]
    assert (f"column 'split' has value(s) outside train/val/test: {', '.join(f'{v!r} (20 rows)' for v in odd)}; "
            f"the accepted values are train, val and test (in any case): write "
            f"{' and '.join(f'{say[v]} for {v!r}' for v in odd)}") in msg
    with pytest.raises(DataError, match=r"labels.csv: column 'split' has value\(s\) outside train/val/test: "
                                        rf"'{odd[0]}' \(20 rows\)"):
        load_image_folder(root, root / "labels.csv", "val", size=(8, 8), skip_bad=True)
    t["split"] = [{"validation": "val", "valid": "val", "dev": "val", "testing": "test"}.get(v.lower(), v)
                  for v in t["split"]]
    _write(root, t)
    assert load_factor_folder(root).split_source == "column"


def test_every_problem_is_listed_in_one_error_and_rows_can_be_skipped(tmp_path):
    root = _bad_folder(tmp_path / "d", "missing_image")
    Image.new("L", (8, 8)).save(root / "stray.png")
    (root / "i010.png").write_bytes(b"not a png")
    t = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    t["const"] = "1"
    t.to_csv(root / "labels.csv", index=False)
    with pytest.raises(DataError) as exc:
        load_factor_folder(root)
    msg = str(exc.value)
    assert "4 problem(s)" in msg and all(s in msg for s in (
        "without an image: 1 image(s): i000.png", "without a label row: 1 image(s): stray.png",
        "i010.png", "column 'const' has a single value"))
    t.drop(columns="const").to_csv(root / "labels.csv", index=False)
    f = load_factor_folder(root, skip_bad=True)
    # rows left out: i000 (no image) and i010 (unreadable); stray.png was never a row of the set
    assert f.n_skipped == 2 and len(f.images) == 58 and "i010.png" not in list(f.images.labels["image"])
    # A truncated file has a readable header: only the full decode that skip_bad asks for finds it.
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "i011.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # PIL reads by content
    f = load_factor_folder(root, skip_bad=True)
    assert f.n_skipped == 3 and "i011.png" not in list(f.images.labels["image"])


def test_split_values_are_read_in_any_case(tmp_path):
    t = _table(90)
    t["split"] = [["Train", "VAL", "test", "TRAIN", "Val", "Test"][k % 6] for k in range(90)]
    f = load_factor_folder(_write(tmp_path / "d", t))
    assert f.split_source == "column"
    assert list(f.split) == [s.lower() for s in t["split"]]  # the file's split, row for row


def test_problems_are_counted_by_kind_not_by_image(tmp_path):
    t = _table(60)
    root = _write(tmp_path / "d", t, images=30)  # 30 rows without an image
    for k in range(25):
        Image.new("L", (8, 8), 9).save(root / f"stray{k}.png")  # 25 images without a row
    with pytest.raises(DataError) as exc:
        load_factor_folder(root)
    lines = str(exc.value).splitlines()
    assert lines[0].endswith("labels.csv: 2 problem(s):")
    assert "label row without an image: 30 image(s)" in lines[1] and "image without a label row: 25 image(s)" in lines[2]


def test_identities_that_are_one_number_written_two_ways_are_refused(tmp_path):
    t = _table(240)
    t["identity"] = [f"{k % 24:02d}" if (k // 24) % 2 else str(k % 24) for k in range(240)]  # 05 here, 5 there
    with pytest.raises(DataError) as exc:
        load_factor_folder(_write(tmp_path / "d", t))
    message = str(exc.value)
    assert "column 'identity' has identities that are one number written two ways: 0 / 00; 01 / 1; 02 / 2; " in message
    assert message.rstrip().endswith("write each identity one way (or, if they are different people, give them "
                                     "names that differ otherwise)")
    assert "--invariance-factor-type" not in message and "1 problem(s)" in message
    t["identity"] = [f"{k % 24:02d}" for k in range(240)]  # one way: 24 identities, identity-disjoint split
    f = load_factor_folder(_write(tmp_path / "e", t))
    assert len(set(f.identity)) == 24 and f.split_source == "seeded, identity-disjoint"
    for person in set(f.identity):
        assert len(set(f.split[f.identity == person])) == 1


@pytest.mark.parametrize("sep,name", [(";", "semicolon"), ("\t", "tab")])
def test_a_csv_with_another_delimiter_is_named_for_it(tmp_path, sep, name):
    root = _write(tmp_path / "d", _table(30))
    pd.read_csv(root / "labels.csv").to_csv(root / "labels.csv", index=False, sep=sep)
    with pytest.raises(DataError) as exc:
        load_factor_folder(root)
    message = str(exc.value)
    assert "\n" not in message and "[[" not in message
    assert message.endswith(f"the file looks {name}-delimited; save it comma-separated (with '.' as the decimal point)")
    assert f"its header is one cell, {sep.join(['image', 'flag', 'kind', 'amount'])!r}" in message


def test_an_image_column_in_other_case_is_named(tmp_path):
    root = _write(tmp_path / "d", _table(30))
    pd.read_csv(root / "labels.csv").rename(columns={"image": "Image"}).to_csv(root / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"got 'Image': name the column 'image'$"):
        load_factor_folder(root)


@pytest.mark.parametrize("cells", [("inf",), ("1e400", "-inf"), ("-nan", "Infinity", "inf", "1e999", "-1e309", "inf")])
def test_non_finite_label_cells_are_one_column_error_naming_them(tmp_path, cells):
    t = _table()
    t["amount"] = [str(v) for v in t["amount"]]
    for k, cell in enumerate(cells):
        t["amount"][2 * k + 1] = cell
    root = _write(tmp_path / "d", t)
    expected = [f"i{2 * k + 1:03d}.png" for k in range(len(cells))]
    assert sum(not np.isfinite(float(c)) for c in cells) == len(cells)  # the reference: numpy's reading
    for kwargs in ({}, {"skip_bad": True}, {"types": {"amount": "continuous"}}):
        with pytest.raises(DataError) as exc:  # a column problem: --invariance-skip-bad cannot skip it
            load_factor_folder(root, **kwargs)
        msg = str(exc.value)
        assert f"column 'amount' has {len(cells)} non-finite number(s)" in msg and "1 problem(s)" in msg
        assert all(name in msg for name in expected[:5])
        assert ("and 1 more" in msg) == (len(cells) > 5)


def test_rgba_and_palette_images_load_as_rgb(tmp_path):
    root = _write(tmp_path / "d", _table(), mode="RGBA")
    Image.new("P", (8, 8)).save(root / "i001.png")
    f = load_factor_folder(root, size=(8, 8))
    assert tuple(f.images[0].shape) == (3, 8, 8) and tuple(f.images[1].shape) == (3, 8, 8)


# ----------------------------------------------------------------------------- probes


def test_tar_at_far_on_a_hand_computed_case():
    from pytest_invariance.probes import enrollment_figures, tar_at_far

    # gallery: identities a, b, c along the axes. Each probe's cosines with (a, b, c):
    P = np.array([[0.9, 0.3, 0.1], [0.2, 0.8, 0.5], [0.6, 0.1, 0.2], [0.7, 0.2, 0.3]])
    probes = P / np.linalg.norm(P, axis=1, keepdims=True)
    ids = np.array(["a", "b", "c", "a"])
    out = enrollment_figures(np.eye(3), np.array(["a", "b", "c"]), probes, ids, far=0.25, n_bootstrap=0)
    norm = np.linalg.norm(P, axis=1)
    genuine = np.array([0.9, 0.8, 0.2, 0.7]) / norm
    impostor = np.array([0.3 / norm[0], 0.1 / norm[0], 0.2 / norm[1], 0.5 / norm[1], 0.6 / norm[2],
                         0.1 / norm[2], 0.2 / norm[3], 0.3 / norm[3]])
    # 8 impostor scores, FAR 0.25 -> 2 may pass: the threshold is the 3rd highest impostor score
    thr = np.sort(impostor)[::-1][2]
    assert out["tar"].details["threshold"] == pytest.approx(thr)
    assert out["tar"].value == pytest.approx((genuine > thr).mean()) == pytest.approx(0.75)  # probe 3 (c) fails
    assert tar_at_far(genuine, impostor, 0.25)[0] == pytest.approx(0.75)
    assert out["rank1"].value == pytest.approx(0.75) and out["rank1"].chance == pytest.approx(1 / 3)  # probe 3 -> a
    assert np.sort(impostor)[::-1][:3] == pytest.approx([0.6 / norm[2], 0.5 / norm[1], 0.3 / norm[3]])
    assert out["tar"].chance == 0.25 and out["tar"].details["observed_far"] == pytest.approx(0.25)


def test_tar_bootstrap_matches_a_direct_resample():
    from pytest_invariance.probes import enrollment_figures, tar_at_far
    from pytest_invariance.probes.stats import bootstrap_counts

    rng = np.random.default_rng(0)
    G, ids = rng.normal(size=(30, 8)), np.arange(30)
    probes = G[np.repeat(ids, 2)] + rng.normal(scale=1.2, size=(60, 8))
    out = enrollment_figures(G, ids, probes, np.repeat(ids, 2), far=0.01, n_bootstrap=200, random_state=3)
    Gn, Pn = G / np.linalg.norm(G, axis=1, keepdims=True), probes / np.linalg.norm(probes, axis=1, keepdims=True)
    S = Pn @ Gn.T
    own = np.repeat(ids, 2)
    tars = []
    for counts in bootstrap_counts(60, 200, 3):
        for c in counts:
            rows = np.repeat(np.arange(60), c.astype(int))  # the resample, drawn out row by row
            gen = S[rows, own[rows]]
            imp = np.concatenate([np.delete(S[r], own[r]) for r in rows])
            tars.append(tar_at_far(gen, imp, 0.01)[0])
    lo, hi = np.quantile(tars, [0.025, 0.975])
    assert (out["tar"].ci_low, out["tar"].ci_high) == pytest.approx((lo, hi))


def test_multinomial_probe_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    from pytest_invariance.probes import MultinomialProbe

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    X = rng.normal(size=(400, 6)) + 0.8 * np.eye(6)[y]
    probe = MultinomialProbe(C_grid=(0.01, 1.0), n_permutations=5, n_bootstrap=200).fit(X[:200], y[:200], X[200:300], y[200:300])
    est = probe.evaluate(X[300:], y[300:])["balanced_accuracy"]
    mu, sd = X[:200].mean(0), X[:200].std(0)
    ref = LogisticRegression(C=probe.C_, class_weight="balanced", max_iter=500).fit((X[:200] - mu) / sd, y[:200])
    pred = ref.predict((X[300:] - mu) / sd)
    assert est.value == pytest.approx(balanced_accuracy_score(y[300:], pred))
    assert est.chance == 0.25 and est.ci_low < est.value < est.ci_high and est.p_value < 0.2


# ----------------------------------------------------------------------------- study on real faces


@pytest.fixture(scope="module")
def lfw_study(lfw_folder, grid_model):
    from pytest_invariance._audit import Audit, ModelRef
    from pytest_invariance.embeddings import Preprocess
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.factors import enrollment_study, factor_figures

    audit = Audit(Settings(no_cache=True, progress="off"))
    emb = audit.load(str(grid_model))
    ref = ModelRef("grid", emb, emb.default_layer, Preprocess(size=(64, 64), channels=3, prewhiten=True), user=True)
    folder = load_factor_folder(lfw_folder)
    figs = {n: factor_figures(audit, ref, folder, n) for n in folder.factors}
    enroll = enrollment_study(audit, ref, folder, "occluded")
    enroll["embeddings"] = audit.embed(ref, folder.images)
    return folder, figs, enroll


def test_planted_factors_are_found(lfw_study):
    _, figs, _ = lfw_study
    assert {n: figs[n]["type"] for n in figs} == {
        "rotation": "continuous", "blur": "categorical", "occluded": "binary",
        "noise_flag": "binary", "noise_group": "categorical", "noise_value": "continuous"}
    rot = figs["rotation"]["figures"]
    assert rot["mae"].ci_high < 0.6 * rot["mae"].chance and rot["r2"].ci_low > 0.4
    blur = figs["blur"]["figures"]["balanced_accuracy"]
    assert blur.chance == pytest.approx(1 / 3) and blur.ci_low > blur.chance + 0.1
    occ = figs["occluded"]["figures"]
    assert occ["balanced_error"].ci_high < 0.3 and occ["balanced_error"].chance == 0.5
    q = occ["fn_rate"].details["predicted_positive_share"]
    assert occ["fn_rate"].chance == pytest.approx(1 - q) and occ["fp_rate"].chance == pytest.approx(q)


def test_noise_columns_stay_at_chance(lfw_study):
    _, figs, _ = lfw_study
    for name, metric in [("noise_flag", "balanced_error"), ("noise_flag", "fn_rate"), ("noise_flag", "fp_rate"),
                         ("noise_value", "mae"), ("noise_value", "r2")]:
        e = figs[name]["figures"][metric]
        assert e.ci_low <= e.chance <= e.ci_high, (name, metric, e)
    # The builder's noise_group happens to land 2.5 standard errors above chance at this
    # seed (0.47, CI 0.36-0.59): a 95% CI misses chance 1 time in 20. What must hold is the
    # calibration: over fresh random labellings of the same embeddings, the CIs cover 1/3.
    e = figs["noise_group"]["figures"]["balanced_accuracy"]
    assert e.chance == pytest.approx(1 / 3) and e.value < 0.5


def test_noise_ci_calibration_on_real_embeddings(lfw_study, grid_model):
    from pytest_invariance.probes import MultinomialProbe

    folder, _, _ = lfw_study
    X = lfw_study[2]["embeddings"]
    s = folder.split
    cover, values = 0, []
    for seed in range(12):
        y = np.random.default_rng(100 + seed).integers(0, 3, len(X))
        probe = MultinomialProbe(n_permutations=0, max_iter=200, n_bootstrap=300, random_state=seed)
        e = probe.fit(X[s == "train"], y[s == "train"], X[s == "val"], y[s == "val"]).evaluate(
            X[s == "test"], y[s == "test"])["balanced_accuracy"]
        cover += e.ci_low <= 1 / 3 <= e.ci_high
        values.append(e.value)
    assert cover >= 10 and abs(np.mean(values) - 1 / 3) < 0.04, (cover, values)


def test_enrollment_gallery_at_the_most_common_level(lfw_study):
    folder, _, study = lfw_study
    occ = folder.factors["occluded"]
    common = occ.levels[int(np.bincount(occ.values.astype(int)).argmax())]
    with_common = {i for i, lv in zip(folder.identity, occ.level_of()) if lv == common}
    assert study["reference"] == common and study["gallery"] == len(with_common) >= 55
    for level, figs in study["levels"].items():
        assert figs["rank1"].chance == pytest.approx(1 / study["gallery"]) and figs["tar"].chance == 1e-3
        assert figs["rank1"].ci_low > 5 * figs["rank1"].chance  # identities are recognised far above chance
        assert figs["tar"].details["impostor_pairs"] == figs["tar"].n * (study["gallery"] - 1)


# ----------------------------------------------------------------------------- the suite through pytest


@pytest.fixture
def suite(pytester):
    return copy_suite(pytester, "factors")


def _run(pytester, *args):
    result, doc = run_and_read(pytester, *args)
    return result, (doc or {}).get("checks", [])


def test_suite_skips_in_one_line_without_data_dir(suite, grid_model):
    result, _ = _run(suite, "audits/factors", f"--model={grid_model}")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["SKIPPED [[]2[]] *factors: no data: pass --invariance-data-dir DIR holding your "
                                 "images and DIR/labels.csv"])


def test_suite_bad_csv_is_one_collection_error(suite, grid_model, tmp_path):
    root = _bad_folder(tmp_path / "bad", "non_numeric")
    result, checks = _run(suite, "audits/factors", f"--model={grid_model}", f"--invariance-data-dir={root}",
                          "-n", "2")
    result.assert_outcomes(errors=1)
    assert result.ret != 0 and not checks
    assert result.stdout.str().count("is numeric but has 1 non-numeric value(s)") == 1  # once, not per worker


def test_suite_rows_gates_and_summary(suite, grid_model, lfw_folder):
    args = ("audits/factors/test_factors.py::test_factor", f"--model={grid_model}",
            f"--invariance-data-dir={lfw_folder}", "-k", "occluded or noise_flag or rotation")
    (lfw_folder / "invariance.toml").write_text('[preprocess]\nsize = [64, 64]\nchannels = 3\nprewhiten = true\n')
    result, checks = _run(suite, *args)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["factors: nothing gated (3 of the folder's 6 factor(s) measured, none gated); "
                                 "pass --invariance-gate COL,*"])  # -k: 3 of its 6 columns
    heads = {c["details"]["factor"]: c for c in checks if c["details"]["headline"]}
    assert set(heads) == {"occluded", "noise_flag", "rotation"}
    occ = heads["occluded"]
    assert occ["details"]["type"] == "binary" and occ["details"]["probe"] == "balanced linear SVM"
    assert occ["chance"] == 0.5 and occ["threshold"] is None and occ["ci_low"] <= occ["value"] <= occ["ci_high"]
    assert heads["rotation"]["metric"] == "mae" and heads["rotation"]["details"]["preprocessing"]["size"] == [64, 64]
    result, checks = _run(suite, *args, "--invariance-gate", "occluded", "--invariance-threshold", "rotation.mae=0.5")
    result.assert_outcomes(passed=2, failed=1)  # occluded leaks: FAILED; rotation: only its MAE is gated, >= 0.5 holds
    by = {(c["details"]["factor"], c["metric"]): c for c in checks}
    assert by["occluded", "balanced_error"]["threshold"] == 0.4 and not by["occluded", "balanced_error"]["passed"]
    assert by["occluded", "fn_rate"]["threshold"] is None  # the rates trade at the threshold: only their mean is gated
    assert by["rotation", "mae"]["threshold"] == 0.5 and by["rotation", "mae"]["comparator"] == ">="
    assert by["noise_flag", "fn_rate"]["threshold"] is None and by["rotation", "r2"]["threshold"] is None
    assert by["rotation", "mae"]["details"]["gated"] and not by["rotation", "r2"]["details"]["gated"]
    assert "nothing gated" not in result.stdout.str()


def test_max_rows_fits_the_regressions_from_chunks_with_the_same_figures(suite, grid_model, lfw_folder):
    args = ("audits/factors/test_factors.py::test_factor", f"--model={grid_model}",
            f"--invariance-data-dir={lfw_folder}", "-k", "rotation or noise_value")
    result, whole = _run(suite, *args)
    result.assert_outcomes(passed=2)
    result, chunked = _run(suite, *args, "--invariance-max-rows=40")  # well under the training rows
    result.assert_outcomes(passed=2)
    fig = lambda checks: {(c["details"]["factor"], c["metric"]): c for c in checks}  # noqa: E731
    a, b = fig(whole), fig(chunked)
    assert set(a) == set(b) == {(f, m) for f in ("rotation", "noise_value") for m in ("mae", "r2")}
    for key in a:
        np.testing.assert_allclose([b[key][k] for k in ("value", "ci_low", "ci_high")],
                                   [a[key][k] for k in ("value", "ci_low", "ci_high")], rtol=0, atol=1e-9)
        assert b[key]["details"].get("alpha") == a[key]["details"].get("alpha")
    assert b["rotation", "mae"]["details"]["permutation"] == "not run: streamed fit (training rows not kept)"


def test_run_counts_skipped_and_converted_images_once_per_image(suite, grid_model, lfw_folder, tmp_path):
    import io
    import json
    import shutil

    root = tmp_path / "faces"
    shutil.copytree(lfw_folder, root)
    (root / "invariance.toml").write_text('[preprocess]\nsize = [64, 64]\nchannels = 3\n')
    names = sorted(pd.read_csv(root / "labels.csv")["image"])
    modes = {"RGBA": "PNG", "CMYK": "JPEG", "P": "PNG", "I;16": "PNG", "L": "JPEG"}
    for k, name in enumerate(names):  # PIL reads by content, not by file name
        mode, fmt = list(modes.items())[k // 2] if k < 2 * len(modes) else ("RGB", "JPEG")
        with Image.open(root / name) as im:
            rgb = im.convert("RGB")
        im = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
            np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        im.save(root / name, fmt)
    buf = io.BytesIO()
    with Image.open(root / names[-1]) as im:
        im.convert("RGB").save(buf, "JPEG")
    (root / names[-1]).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    # the reference: each kept file's stored mode, read with PIL, mapped by hand
    kind = {"RGBA": "alpha", "CMYK": "cmyk", "P": "palette", "I;16": "grayscale", "L": "grayscale"}
    expected: dict = {}
    for name in names[:-1]:
        with Image.open(root / name) as im:
            if im.mode in kind:
                expected[kind[im.mode]] = expected.get(kind[im.mode], 0) + 1
    assert expected == {"alpha": 2, "cmyk": 2, "palette": 2, "grayscale": 4}
    result, checks = _run(suite, "audits/factors/test_factors.py::test_factor", f"--model={grid_model}",
                          f"--invariance-data-dir={root}", "-k", "rotation or occluded", "--invariance-skip-bad",
                          "-n", "2")
    result.assert_outcomes(passed=2)
    run = json.loads((suite.path / "results.json").read_text())["run"]
    assert run["n_skipped"] == 1 and run["conversions"] == expected  # two tests, two workers: counted once
    assert all(c["n_skipped"] == 1 for c in checks)
    result.stdout.fnmatch_lines([
        "invariance: 1 image(s) left out as unreadable, undecodable or badly labelled (--invariance-skip-bad): folder 1",
        "invariance: images converted on decoding: alpha 2, cmyk 2, grayscale 4, palette 2"])


def test_misspelled_column_in_a_command_line_threshold_is_refused(tmp_path):
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.factors import gated_metrics

    f = load_factor_folder(_write(tmp_path / "d", _table()))
    assert gated_metrics(f, Settings(threshold=[("amount.mae", 3.0)]))["amount"] == ("mae",)
    with pytest.raises(DataError, match=r"--invariance-threshold 'amout.mae' names column 'amout', which is not a factor"):
        gated_metrics(f, Settings(threshold=[("amout.mae", 3.0)]))
    # a qualifier another selected suite knows (a CelebA attribute) is left to that suite
    assert gated_metrics(f, Settings(threshold=[("Smiling.fn_rate", 0.45)]), {"Smiling"}) == {}


def test_a_bare_metric_threshold_gates_that_figure_of_every_factor_that_has_it(tmp_path):
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.factors import gated_metrics

    f = load_factor_folder(_write(tmp_path / "d", _table()))
    continuous = {c for c, fac in f.factors.items() if fac.type == "continuous"}
    assert continuous and continuous != set(f.factors)
    gated = gated_metrics(f, Settings(threshold=[("mae", 3.0)]))
    assert {c for c, m in gated.items() if "mae" in m} == continuous
    assert all(m == ("mae",) for m in gated.values())
    # a bare metric that no factor has is refused, unless another selected suite may have it
    with pytest.raises(DataError, match=r"threshold 'rank1': no factor has a 'rank1' figure"):
        gated_metrics(f, Settings(threshold=[("rank1", 0.5)]))
    assert gated_metrics(f, Settings(threshold=[("rank1", 0.5)]), {"lenet"}) == {}


@pytest.mark.parametrize("max_rows", [None, 30, 12])
def test_the_label_check_refuses_exactly_what_the_probe_cannot_measure(tmp_path, max_rows):
    """check_measurable reads only the labels (once per sweep); the reference is the SVM
    probe itself, fitted on random embeddings with the same --invariance-max-rows subsample."""
    from pytest_invariance.probes import AttributeSVMProbe
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.factors import _rows, check_measurable

    n = 100
    split = np.array(["train"] * 60 + ["val"] * 20 + ["test"] * 20)
    rare = np.array(["no"] * n, dtype=object)
    rare[:8], rare[60:66], rare[80:86] = "yes", "yes", "yes"  # 8 of 60 training rows
    f = load_factor_folder(_write(tmp_path / "d", _table(n, split=split, rare=rare)))
    settings = Settings(max_rows=max_rows, seed=3)
    fac = f.factors["rare"]
    tr, va = _rows(f, fac, "train"), _rows(f, fac, "val")
    X = np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32)
    probe = AttributeSVMProbe(random_state=3, max_train_rows=max_rows)
    try:
        probe.fit(X[tr], fac.values[tr, None], X[va], fac.values[va, None], names=["rare"])
        measurable = "rare" not in probe.not_measurable(fac.values[_rows(f, fac, "test"), None])
    except DataError:
        measurable = False
    if measurable:
        check_measurable(f, "rare", settings)
    else:
        with pytest.raises(DataError, match=r"level 'yes' has \d image\(s\) in the train split of the "
                                             rf"{max_rows} --invariance-max-rows keeps .*; raise or drop "
                                             "--invariance-max-rows, add images"):
            check_measurable(f, "rare", settings)
    assert measurable == (max_rows != 12)  # both outcomes are exercised


@pytest.mark.parametrize("levels, declared", [(("no", "yes"), "categorical"), (("a", "b", "c"), None),
                                              (("a", "b", "c"), "categorical")])
def test_a_categorical_factor_needs_the_same_images_per_level_and_split(tmp_path, levels, declared):
    # rare=categorical passed with 2 test images per level (balanced accuracy CI 0.26-0.84):
    # the per-level, per-split minimum held binary factors only; a given type must not bypass it
    from pytest_invariance.probes import AttributeSVMProbe
    from pytest_invariance.studies.factors import check_measurable

    need = AttributeSVMProbe().min_class_count
    n = 30 * len(levels)
    split = np.array((["train"] * 18 + ["val"] * 6 + ["test"] * 6) * len(levels))
    rare = np.repeat(levels, 30).astype(object)
    types = {"flag": "ignore", "kind": "ignore", "amount": "ignore", **({"rare": declared} if declared else {})}
    f_ok = load_factor_folder(_write(tmp_path / "ok", _table(n, split=split, rare=rare)), types=types)
    assert f_ok.factors["rare"].type == "categorical" if declared or len(levels) > 2 else "binary"
    check_measurable(f_ok, "rare")  # 6 >= need of each level in val and test
    short = split.copy()
    short[(rare == levels[-1]) & (split == "test")] = np.array(["test", "test"] + ["train"] * 4)
    f = load_factor_folder(_write(tmp_path / "short", _table(n, split=short, rare=rare)), types=types)
    assert int(((f.factors["rare"].level_of() == levels[-1]) & (f.split == "test")).sum()) == 2 < need
    with pytest.raises(DataError, match=rf"factor 'rare' cannot be probed: level '{levels[-1]}' has 2 image\(s\) in "
                                        rf"the test split \(train/val/test 22/6/2; the probe needs >= {need} of each "
                                        r"level in each split\); add images of that level"):
        check_measurable(f, "rare")


def test_a_factor_the_probe_cannot_measure_errors_alone_and_says_why(suite, grid_model, lfw_folder, tmp_path):
    """A rare binary column that passes the loader's counts but not the SVM's (5 of each level in
    train and val): its own test is the one ERROR, named for the data; the first factor's test,
    which draws the overview of every factor, still passes."""
    import shutil

    import pandas as pd

    root = tmp_path / "faces"
    shutil.copytree(lfw_folder, root)
    table = pd.read_csv(root / "labels.csv")
    n = len(table)
    table["split"] = ["train"] * (n * 6 // 10) + ["val"] * (n * 2 // 10) + ["test"] * (n - n * 6 // 10 - n * 2 // 10)
    table["rare"] = "no"
    for split, k in (("train", 10), ("val", 3), ("test", 3)):
        table.loc[table.index[table["split"] == split][:k], "rare"] = "yes"
    table.drop(columns=["identity"]).to_csv(root / "labels.csv", index=False)
    (root / "invariance.toml").write_text('[preprocess]\nsize = [64, 64]\nchannels = 3\nprewhiten = true\n')
    first = [c for c in table.columns if c not in ("image", "split", "identity")][0]
    result, checks = _run(suite, "audits/factors/test_factors.py::test_factor", f"--model={grid_model}",
                          f"--invariance-data-dir={root}", "-k", f"{first} or rare")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*factor 'rare' cannot be probed: level 'yes' has 3 image(s) in the val split "
                                 "(train/val/test 10/3/3; the probe needs >= 5 of each level in each split); add "
                                 "images of that level, set the split by a 'split' column in labels.csv or [[]data] "
                                 "fractions in invariance.toml, or leave the factor out with --invariance-factor-type "
                                 "rare=ignore*"])
    assert "--invariance-skip-bad" not in result.stdout.str()
    assert {c["details"]["factor"] for c in checks if c["value"] is not None} == {first}


DEAD_HEADS = '''
import torch
from torch import nn
from pytest_invariance.testing import grid_cnn


class Ones(nn.Module):
    def forward(self, x):
        return torch.ones(x.shape[0], 5)


class Heads(nn.Module):
    """grid_cnn's features, beside a dead ReLU head (all zero) and a constant one."""

    def __init__(self):
        super().__init__()
        self.body = grid_cnn(8, 3, 16, padding=1)
        self.dead = nn.Sequential(nn.Linear(128, 6), nn.ReLU())
        with torch.no_grad():
            self.dead[0].bias.fill_(-1e4)
        self.const = Ones()

    def forward(self, x):
        e = self.body(x)
        return e + 0 * self.dead(e).sum(1, keepdim=True) + 0 * self.const(e).sum(1, keepdim=True)


def make():
    return Heads().eval()
'''


@pytest.mark.parametrize("layer,zero", [("const", ""), ("dead", " (all zero)")])
def test_a_constant_layer_is_one_tool_error_for_every_kind_of_factor(suite, lfw_folder, layer, zero):
    """Binary, categorical and continuous factors and the enrollment figures: each test ERRORs,
    the first with the reason and --layer, the others referring back; no figure at chance passes."""
    (suite.path / "deadheads.py").write_text(DEAD_HEADS)
    (lfw_folder / "invariance.toml").write_text('[preprocess]\nsize = [64, 64]\nchannels = 3\nprewhiten = true\n')
    pick = ("-k", "occluded or blur or rotation")
    result, checks = _run(suite, "audits/factors", "--model=deadheads:make", f"--layer={layer}",
                          f"--invariance-data-dir={lfw_folder}", *pick)
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) >= 6 and not outcomes.get("passed") and not outcomes.get("failed")
    out = result.stdout.str()
    full = f"layer {layer} of make cannot be audited: EmbeddingError: deadheads:make layer '{layer}' gives the same " \
           f"embedding{zero} for all "
    assert [line.startswith(full) for line in out.splitlines()].count(True) == 1  # once, then "first:" in the summary
    assert f"features is constant, so every figure would be chance whatever the model encodes; audit another " \
           "layer with --layer NAME (--invariance-list-layers lists them)" in out
    assert out.count(f"layer {layer} of make cannot be audited (reported at ") == outcomes["errors"] - 1
    for wrong in ("--invariance-skip-bad", "rarer level", "a target is constant", "every feature of X_train"):
        assert wrong not in out
    assert all(c["value"] is None for c in checks)
    # In a sweep the other layer is audited as it is alone: the same figures.
    result, swept = _run(suite, "audits/factors", "--model=deadheads:make", f"--layer={layer}", "--layer=body",
                         f"--invariance-data-dir={lfw_folder}", *pick)
    result, alone = _run(suite, "audits/factors", "--model=deadheads:make", "--layer=body",
                         f"--invariance-data-dir={lfw_folder}", *pick)
    result.assert_outcomes(passed=outcomes["errors"])
    figures = lambda checks: {(c["nodeid"].split("[")[0], c["nodeid"].split("[")[1].split("-")[0], c["metric"]):  # noqa: E731
                              c["value"] for c in checks if c["layer"] == "body"}
    assert figures(swept) == figures(alone) and len(figures(alone)) >= 12


def test_constant_rows_allows_float_rounding_only():
    from pytest_invariance._audit import constant_rows

    rng = np.random.default_rng(0)
    base = np.tile(rng.normal(size=(1, 7)).astype(np.float32), (50, 1))
    assert constant_rows(base) and constant_rows(np.zeros((50, 7), np.float32))
    assert constant_rows(base + rng.normal(scale=1e-8, size=base.shape).astype(np.float32))  # batch-order rounding
    varied = base.copy()
    varied[3, 5] += 1e-3 * float(np.abs(base).max())  # one feature of one image differs: not constant
    assert not constant_rows(varied)


@pytest.mark.parametrize("row", [0, 255, 256, 999])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_constant_rows_decides_as_a_whole_array_check_wherever_the_odd_row_is(row, dtype):
    # The check looks at the first rows first; its answer must be that of a ptp over all rows.
    from pytest_invariance._audit import constant_rows

    def whole(X):
        spread = float(np.ptp(X, axis=0).max())
        return spread <= 1e-6 * float(np.abs(X).max())

    rng = np.random.default_rng(row)
    base = np.tile(rng.normal(size=(1, 9)), (1000, 1)).astype(dtype)
    cases = [base]
    for value in (1e3, -2.0, 1e-5):  # one large, one ordinary and one tiny departure at that row
        X = base.copy()
        X[row, 4] = X[row, 4] + dtype(value)
        cases.append(X)
    X = base.copy()
    X[row] *= 1 + 1e-7  # within rounding: still constant (float16 cannot hold it: exactly constant)
    cases.append(X)
    for X in cases:
        assert constant_rows(X) == whole(X)
