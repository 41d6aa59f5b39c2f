"""Image paths in labels files written the ways people write them (./x, absolute, x\\y, ../DIR/x),
paths that leave the data folder, and skipping that would leave too few images: each loader
reads the same images as from plain relative paths, or refuses in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pytest_invariance.data._paths import folder_name
from pytest_invariance.data.celeba import load_celeba
from pytest_invariance.data.factor_folder import load_factor_folder
from pytest_invariance.data.folder import load_image_folder
from pytest_invariance.errors import DataError

N = 100


def _folder(root: Path) -> tuple[Path, pd.DataFrame]:
    """N 8x8 images under img/ (grey level = 2 x index) with a binary and a continuous factor."""
    (root / "img" / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [f"img/{'sub/' if k % 3 == 0 else ''}{k:03d}.png" for k in range(N)]
    for k, name in enumerate(names):
        Image.new("L", (8, 8), 2 * k).save(root / name)
    t = pd.DataFrame({"image": names, "flag": np.arange(N) % 2, "amount": np.round(rng.uniform(0, 9, N), 3)})
    t.to_csv(root / "labels.csv", index=False)
    return root, t


def _written(kind: str, root: Path, name: str) -> str:
    return {"dot": f"./{name}", "absolute": str(root.resolve() / name), "backslash": name.replace("/", "\\"),
            "updown": f"img/../{name}", "back_in": f"../{root.name}/{name}", "doubled": name.replace("/", "//"),
            "spaces": f"  {name} "}[kind]


@pytest.mark.parametrize("kind", ["dot", "absolute", "backslash", "updown", "back_in", "doubled", "spaces"])
def test_a_path_written_another_way_names_the_same_image(tmp_path, kind):
    root, t = _folder(tmp_path / "d")
    plain = load_factor_folder(root)
    t["image"] = [_written(kind, root, n) if k % 2 else n for k, n in enumerate(t["image"])]  # mixed, as edited by hand
    t.to_csv(root / "labels.csv", index=False)
    other = load_factor_folder(root)
    assert other.n_skipped == 0 and other.images.paths == plain.images.paths
    assert list(other.images.labels["image"]) == list(plain.images.labels["image"])  # the ids extract writes
    for name in ("flag", "amount"):
        np.testing.assert_array_equal(other.factors[name].values, plain.factors[name].values)
    np.testing.assert_array_equal(other.split, plain.split)  # the same seeded split
    # The pixels of row k are image k's (grey level 2k), whatever the cell looked like.
    assert [int(round(float(other.images[k][0, 0, 0]) * 255)) for k in (1, 2, 3)] == [2, 4, 6]
    # The plain folder loader reads the same rows.
    loose = load_image_folder(root, root / "labels.csv", size=(8, 8))
    assert list(loose.labels["image"]) == list(plain.images.labels["image"])


def test_one_image_written_two_ways_is_listed_twice(tmp_path):
    root, t = _folder(tmp_path / "d")
    t.loc[5, "image"] = "./" + t.loc[4, "image"]
    t.to_csv(root / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"listed twice: 1 image\(s\): img/004.png"):
        load_factor_folder(root)


@pytest.mark.parametrize("cell", ["../elsewhere/001.png", "/etc/passwd.png", "C:\\data\\001.png", "img/../../001.png"])
def test_a_path_outside_the_folder_is_one_line(tmp_path, cell):
    root, t = _folder(tmp_path / "d")
    t.loc[[3, 7], "image"] = cell
    t.to_csv(root / "labels.csv", index=False, mode="w")
    for load in (lambda: load_factor_folder(root, skip_bad=True),
                 lambda: load_image_folder(root, root / "labels.csv", skip_bad=True)):
        with pytest.raises(DataError) as exc:
            load()
        message = str(exc.value)
        assert "\n" not in message and "2 image path(s) lead outside" in message and cell in message
        assert message.endswith("write each path relative to it (e.g. img/0001.jpg) or move the images in")


def test_folder_name_is_lexical_and_keeps_a_file_named_with_a_backslash(tmp_path):
    (tmp_path / "a\\b.png").write_bytes(b"")
    assert folder_name("a\\b.png", tmp_path) == "a\\b.png"  # that file exists: not a separator
    assert folder_name("x\\y.png", tmp_path) == "x/y.png"
    assert folder_name("", tmp_path) == ""


@pytest.mark.parametrize("skip", [False, True])
def test_skipping_that_would_leave_no_or_too_few_images_is_one_line(tmp_path, skip):
    root, t = _folder(tmp_path / "d")
    t["image"] = [f"pics/{Path(n).name}" for n in t["image"]]  # no such files: every row is bad
    t.to_csv(root / "labels.csv", index=False)
    with pytest.raises(DataError) as exc:
        load_factor_folder(root, skip_bad=skip)
    message = str(exc.value)
    if skip:  # was: ValueError: zero-size array to reduction operation maximum
        assert "\n" not in message and "--invariance-skip-bad leaves 0 of 100 image(s), too few to probe" in message
        assert "label row without an image: 100 (e.g. pics/000.png)" in message
    else:
        assert "label row without an image: 100 image(s)" in message
    # Too few, not none: 15 rows left, fewer than 2 x 10 per level.
    t = pd.read_csv(root / "labels.csv")
    t.loc[:14, "image"] = [f"img/{'sub/' if k % 3 == 0 else ''}{k:03d}.png" for k in range(15)]
    t.to_csv(root / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"--invariance-skip-bad leaves 15 of 100 image\(s\), too few to probe"):
        load_factor_folder(root, skip_bad=True)
    # The plain folder loader: 100 rows without an image and 100 images without a row leave none.
    t["image"] = [f"pics/{k:03d}.png" for k in range(N)]
    t.to_csv(root / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"labels.csv: leaving out the 200 bad item\(s\) leaves no image, e.g. "):
        load_image_folder(root, root / "labels.csv", skip_bad=True)


def test_a_header_without_rows_is_one_line(tmp_path):
    root, t = _folder(tmp_path / "d")
    t[:0].to_csv(root / "labels.csv", index=False)
    for skip in (False, True):
        with pytest.raises(DataError, match=r"labels.csv: no image rows under the header; add one row per image "
                                            r"\(image, flag, amount\)$"):
            load_factor_folder(root, skip_bad=skip)


def test_celeba_lists_with_dotted_or_absolute_ids_read_the_same(tmp_path):
    from test_face_data import _write_lists  # the CelebA fixture's list writer

    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    ids = [f"{i + 1:06d}.jpg" for i in range(30)]
    for i, name in enumerate(ids):
        Image.new("RGB", (44, 54), (8 * i, 0, 60)).save(root / "img_align_celeba" / name, quality=95)
    _write_lists(root, ids)
    plain = load_celeba(root, "all", size=(54, 44))
    written = [f"./{n}" if i % 2 else str((root / "img_align_celeba" / n).resolve()) for i, n in enumerate(ids)]
    _write_lists(root, written)
    other = load_celeba(root, "all", size=(54, 44))
    assert other.paths == plain.paths and other.n_skipped == 0
    pd.testing.assert_frame_equal(other.labels, plain.labels)
    _write_lists(root, [f"../{n}" for n in ids])
    with pytest.raises(DataError, match=r"30 image path\(s\) lead outside .*img_align_celeba \(\.\./000001.jpg"):
        load_celeba(root, "all")


def test_the_folder_loader_reads_split_values_in_any_case(tmp_path):
    root, t = _folder(tmp_path / "d")
    t["split"] = [["Train", "VAL", "test"][k % 3] for k in range(N)]
    t.to_csv(root / "labels.csv", index=False)
    val = load_image_folder(root, root / "labels.csv", "val", size=(8, 8))
    assert list(val.labels["image"]) == [n for k, n in enumerate(t["image"]) if k % 3 == 1]
