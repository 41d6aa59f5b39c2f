"""Face data adapters: CelebA layout, folder + CSV, offline face samples, attribute groups.

The CelebA and folder fixtures are generated here in the real file formats, with labels
planted in the pixels (red level = image index, white square = Smiling), so a loader that
misaligns labels and images fails.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pytest_invariance.data.celeba import ATTRIBUTES, attribute_groups, load_celeba
from pytest_invariance.data.faces import load_lfw_faces, load_sample_faces
from pytest_invariance.data.folder import aliased_rows, list_images, load_image_folder, unlabelled
from pytest_invariance.errors import DataError, DatasetNotFoundError, InvalidParameterError

N = 30
SMILING, MALE = ATTRIBUTES.index("Smiling"), ATTRIBUTES.index("Male")


def _attrs(i):
    v = [-1] * 40
    v[SMILING] = 1 if i % 3 == 0 else -1
    v[MALE] = 1 if i % 2 else -1
    v[ATTRIBUTES.index("Eyeglasses")] = 1 if i == 7 else -1
    return v


def _face(i, h=54, w=44):
    """Red level encodes the index; a white top-left square marks Smiling."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0], img[..., 2] = 8 * i, 60
    if i % 3 == 0:
        img[:12, :12] = 255
    return img


def _write_lists(root, ids, *, attr_rows=None):
    rows = attr_rows if attr_rows is not None else [f"{n}  " + " ".join(f"{v:2d}" for v in _attrs(i))
                                                    for i, n in enumerate(ids)]
    (root / "list_attr_celeba.txt").write_text(f"{len(rows)}\n" + " ".join(ATTRIBUTES) + "\n" + "\n".join(rows) + "\n")
    split = lambda i: 0 if i < 20 else (1 if i < 25 else 2)  # noqa: E731
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {split(i)}\n" for i, n in enumerate(ids)))
    (root / "pose.csv").write_text("image_id,yaw,pitch,roll\n" + "".join(
        f"{n},{3 * i - 45:.1f},{i % 5 - 2:.1f},{-i / 10:.1f}\n" for i, n in enumerate(ids)))
    lm_header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    (root / "list_landmarks_align_celeba.txt").write_text(f"{len(ids)}\n{lm_header}\n" + "".join(
        f"{n} " + " ".join(str(i + k) for k in range(10)) + "\n" for i, n in enumerate(ids)))


@pytest.fixture
def celeba(tmp_path):
    root, ids = tmp_path / "celeba", [f"{i + 1:06d}.jpg" for i in range(N)]
    (root / "img_align_celeba").mkdir(parents=True)
    for i, name in enumerate(ids):
        Image.fromarray(_face(i)).save(root / "img_align_celeba" / name, quality=95)
    _write_lists(root, ids)
    return root


def test_celeba_labels_and_images_stay_aligned(celeba):
    train = load_celeba(celeba, "train", size=(54, 44))
    assert len(train) == 20 and train.n_skipped == 0
    lab = train.labels
    assert list(lab.columns[:42]) == ["image_id", "split", *ATTRIBUTES]
    assert set(lab["split"]) == {"train"} and lab[list(ATTRIBUTES)].isin([0, 1]).all().all()
    assert {"yaw", "pitch", "roll", "nose_x"} <= set(lab.columns)
    for k in (0, 7, 13):
        i = int(lab.loc[k, "image_id"][:6]) - 1
        img = train[k].numpy()
        assert img.shape == (3, 54, 44) and img.dtype == np.float32
        assert abs(img[0, 30:, 20:].mean() * 255 - 8 * i) < 4  # right picture for this row
        assert (img[:, :10, :10].mean() > 0.9) == bool(lab.loc[k, "Smiling"]) == (i % 3 == 0)
        assert lab.loc[k, "Male"] == i % 2 and lab.loc[k, "yaw"] == pytest.approx(3 * i - 45)
    assert lab["Eyeglasses"].sum() == 1
    assert len(load_celeba(celeba, "val")) == 5 and len(load_celeba(celeba, "all")) == N


def test_celeba_fingerprint_tracks_files_and_settings(celeba):
    a = load_celeba(celeba, "test").fingerprint
    assert a == load_celeba(celeba, "test").fingerprint
    assert a != load_celeba(celeba, "test", size=(80, 80)).fingerprint
    assert a != load_celeba(celeba, "val").fingerprint
    Image.fromarray(_face(3, 60, 50)).save(celeba / "img_align_celeba" / "000027.jpg")  # a test-split file
    assert a != load_celeba(celeba, "test").fingerprint


def test_celeba_box_crop_from_in_the_wild_images(tmp_path):
    root, ids = tmp_path / "wild", [f"{i + 1:06d}.jpg" for i in range(N)]
    (root / "img_celeba").mkdir(parents=True)
    lines = []
    for i, name in enumerate(ids):
        img = np.zeros((120, 100, 3), np.uint8)
        img[..., 2] = 200  # blue background
        x, y = 10 + i, 20 + i // 2
        img[y:y + 50, x:x + 50, 0] = 220  # the "face" box is red
        img[y:y + 50, x:x + 50, 2] = 0
        Image.fromarray(img).save(root / "img_celeba" / name, quality=95)
        lines.append(f"{name} {x} {y} 50 50")
    (root / "list_bbox_celeba.txt").write_text(f"{N}\nimage_id x_1 y_1 width height\n" + "\n".join(lines) + "\n")
    _write_lists(root, ids)
    s = load_celeba(root, "test", size=(32, 32))
    img = s[0].numpy()
    assert img[0].mean() > 0.75 and img[2].mean() < 0.2  # the crop is the red box, not the scene
    assert "nose_x" not in s.labels  # aligned landmarks do not apply to in-the-wild crops


def _break(root, case):
    img_dir = root / "img_align_celeba"
    if case == "missing image":
        (img_dir / "000027.jpg").unlink()
    elif case == "extra label row":
        text = (root / "list_attr_celeba.txt").read_text()
        (root / "list_attr_celeba.txt").write_text(text + "000099.jpg " + " ".join(["-1"] * 40) + "\n")
    elif case == "wrong column count":
        text = (root / "list_attr_celeba.txt").read_text().replace("000028.jpg  -1", "000028.jpg ", 1)
        (root / "list_attr_celeba.txt").write_text(text)
    elif case == "unreadable image":
        (img_dir / "000029.jpg").write_bytes(b"not a jpeg at all")
    elif case == "image without labels":
        Image.fromarray(_face(0)).save(img_dir / "000077.jpg")


@pytest.mark.parametrize("case, message", [
    ("missing image", "000027.jpg: label row without an image"),
    ("extra label row", "000099.jpg: label row without an image"),
    ("wrong column count", "000028.jpg: list_attr_celeba.txt line 30 has 40 columns, expected 41"),
    ("unreadable image", "000029.jpg: unreadable image"),
    ("image without labels", "000077.jpg: image without a row in list_attr_celeba.txt"),
])
def test_celeba_bad_files_give_one_clear_error_or_are_skipped(celeba, case, message):
    _break(celeba, case)
    with pytest.raises(DataError, match="1 bad item") as info:
        load_celeba(celeba, "test")
    assert message in str(info.value) and "skip_bad=True" in str(info.value)
    s = load_celeba(celeba, "test", skip_bad=True)
    assert s.n_skipped == 1
    assert len(s) == (5 if case in ("extra label row", "image without labels") else 4)


def test_celeba_error_lists_every_problem_count_and_other_splits_still_load(celeba):
    for case in ("missing image", "wrong column count", "unreadable image"):
        _break(celeba, case)
    with pytest.raises(DataError, match="3 bad item"):
        load_celeba(celeba, "test")
    assert len(load_celeba(celeba, "train")) == 20  # the damage is all in the test split


def test_celeba_corrupt_image_found_late_names_the_file(celeba):
    _break(celeba, "unreadable image")
    s = load_celeba(celeba, "test", check_images=False)
    k = int(np.flatnonzero(s.labels["image_id"] == "000029.jpg")[0])
    with pytest.raises(DataError, match="000029.jpg: cannot decode"):
        s[k]


def test_celeba_missing_dataset_and_bad_split(tmp_path, celeba):
    with pytest.raises(DatasetNotFoundError, match="img_align_celeba"):
        load_celeba(tmp_path / "nowhere", "test")
    with pytest.raises(InvalidParameterError, match="'split'"):
        load_celeba(celeba, "testing")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "faces"
    (root / "b").mkdir(parents=True)
    rows = ["image,Smiling,yaw,identity,split"]
    for i in range(12):
        name = f"{'b/' if i % 2 else ''}img{i}.png"
        Image.fromarray(_face(i, 32, 32)).save(root / name)
        rows.append(f"{name},{int(i % 3 == 0)},{2.5 * i},person{i // 4},{['train', 'val', 'test'][i % 3]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return root, tmp_path / "labels.csv"


def test_folder_loader_types_split_and_alignment(folder):
    s = load_image_folder(*folder, size=(32, 32))
    assert len(s) == 12 and list(s.labels.columns) == ["image", "Smiling", "yaw", "identity", "split"]
    assert s.labels["Smiling"].dtype.kind == "i" and s.labels["yaw"].dtype.kind == "f"
    k = int(np.flatnonzero(s.labels["image"] == "b/img7.png")[0])
    assert abs(s[k].numpy()[0, 20:, 20:].mean() * 255 - 56) < 2  # png: exact red level 8*7
    test = load_image_folder(*folder, "test", size=(16, 16))
    assert list(test.labels["image"]) == ["img2.png", "b/img5.png", "img8.png", "b/img11.png"]
    assert tuple(test[0].shape) == (3, 16, 16) and test.fingerprint != s.fingerprint


def test_folder_counts_a_multi_frame_file_whose_first_frame_is_read(folder):
    root, csv = folder
    frames = [Image.fromarray(_face(4, 32, 32)), Image.fromarray(_face(9, 32, 32))]
    (root / "img4.png").unlink()
    frames[0].save(root / "img4.gif", save_all=True, append_images=frames[1:])  # an animated GIF
    csv.write_text(csv.read_text().replace("img4.png", "img4.gif"))
    s = load_image_folder(root, csv, size=(32, 32))
    assert s.conversions["first_frame"] == 1
    k = int(np.flatnonzero(s.labels["image"] == "img4.gif")[0])
    first = np.asarray(Image.open(root / "img4.gif").convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(s[k].numpy(), first.transpose(2, 0, 1), atol=1e-6)


def test_folder_follows_symlinked_subfolders_once_and_not_round_a_loop(folder, tmp_path):
    # A dataset assembled from links: b/ lives elsewhere, and a link back up the tree must not loop.
    root, csv = folder
    direct = load_image_folder(root, csv, size=(32, 32))
    (root / "b").rename(tmp_path / "elsewhere")
    (root / "b").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "up").symlink_to(root, target_is_directory=True)
    linked = load_image_folder(root, csv, size=(32, 32))
    assert list(linked.labels["image"]) == list(direct.labels["image"])
    assert all(np.array_equal(linked[i].numpy(), direct[i].numpy()) for i in range(len(direct)))
    assert sorted(list_images(root)) == sorted(direct.labels["image"])  # nothing under b/up/ listed


def test_a_dag_of_folder_links_is_walked_once_per_real_folder(tmp_path, monkeypatch):
    """root -> x1, x2 -> L1 -> x1, x2 -> L2 ... L14 holds one image: 2^14 paths to it. Each of
    the 15 real folders is read once; the image is listed once, and any of its names finds it."""
    import pytest_invariance.data.folder as folder_mod

    depth = 14
    levels = [tmp_path / "root"] + [tmp_path / f"L{k}" for k in range(1, depth + 1)]
    for d in levels:
        d.mkdir()
    for here, below in zip(levels, levels[1:]):
        for link in ("x1", "x2"):
            (here / link).symlink_to(below, target_is_directory=True)
    Image.new("RGB", (4, 4)).save(levels[-1] / "img.png")
    (levels[-1] / "back").symlink_to(levels[3], target_is_directory=True)  # a loop: cut, not walked
    reads = []
    scandir = os.scandir
    monkeypatch.setattr(folder_mod.os, "scandir", lambda p: reads.append(p) or scandir(p))
    found = list_images(levels[0])
    assert len(reads) == depth + 1 and len(set(map(os.path.realpath, reads))) == depth + 1
    assert list(found) == ["/".join(["x1"] * depth + ["img.png"])]
    other = "/".join(["x2", "x1"] * (depth // 2) + ["img.png"])
    assert other in found and found.canonical(other) == list(found)[0] and found[other] == found[list(found)[0]]
    assert "/".join(["x1"] * depth + ["back", "x1", "img.png"]) not in found  # nothing through the loop
    assert unlabelled(found, {other}) == [] and aliased_rows(found, [list(found)[0], other]) == {other: list(found)[0]}


@pytest.mark.parametrize("link", ["folder", "file", "hard"])
def test_folder_link_next_to_its_target_is_one_image(folder, link):
    # alias -> b/ (or alias.png -> img0.png): the labels may name either name, not both.
    root, csv = folder
    direct = load_image_folder(root, csv, size=(32, 32))
    if link == "folder":
        (root / "alias").symlink_to(root / "b", target_is_directory=True)
        csv.write_text(csv.read_text().replace("b/img", "alias/img"))
        renamed = {n.replace("b/", "alias/") for n in direct.labels["image"]}
    else:
        if link == "hard":
            os.link(root / "img0.png", root / "alias.png")
        else:
            (root / "alias.png").symlink_to(root / "img0.png")
        csv.write_text(csv.read_text().replace("img0.png", "alias.png"))
        renamed = {n.replace("img0.png", "alias.png") for n in direct.labels["image"]}
    linked = load_image_folder(root, csv, size=(32, 32))  # the targets are not "without a label row"
    assert set(linked.labels["image"]) == renamed and len(linked) == len(direct)
    assert all(np.array_equal(linked[i].numpy(), direct[i].numpy()) for i in range(len(direct)))
    twice = "b/img1.png" if link == "folder" else "img0.png"
    with csv.open("a") as f:
        f.write(f"{twice},1,0,person0,train\n")
    with pytest.raises(DataError, match=r"1 image\(s\) listed under two names that are the same file.*list each image once"):
        load_image_folder(root, csv, skip_bad=True)  # not a bad item to skip: the labels are wrong


def test_celeba_link_to_an_image_is_one_image(celeba):
    images = celeba / "img_align_celeba"
    (images / "copy.jpg").symlink_to(images / "000001.jpg")
    assert len(load_celeba(celeba, "all")) > 0  # 000001.jpg has a row, so its link is not unlabelled


@pytest.mark.parametrize("case, message", [
    ("missing image", "img4.png: label row without an image"),
    ("extra image", "extra.png: image without a label row"),
    ("wrong column count", "b/img5.png: line 7 has 6 columns, expected 5"),
])
def test_folder_bad_files(folder, case, message):
    root, csv = folder
    if case == "missing image":
        (root / "img4.png").unlink()
    elif case == "extra image":
        Image.fromarray(_face(1, 32, 32)).save(root / "extra.png")
    else:
        csv.write_text(csv.read_text().replace("b/img5.png,0,", "b/img5.png,0,0,"))
    with pytest.raises(DataError, match="1 bad item") as info:
        load_image_folder(root, csv)
    assert message in str(info.value)
    s = load_image_folder(root, csv, skip_bad=True)
    assert s.n_skipped == 1 and len(s) == (12 if case == "extra image" else 11)


def test_folder_duplicate_rows_and_missing_column(folder):
    root, csv = folder
    csv.write_text(csv.read_text() + "img0.png,1,0,person0,train\n")
    with pytest.raises(DataError, match="listed twice"):
        load_image_folder(root, csv)
    with pytest.raises(DataError, match="'file' column"):
        load_image_folder(root, csv, image_column="file")


def test_lfw_faces_are_real_distinct_faces():
    s = load_lfw_faces()
    assert len(s) == 100 and tuple(s[0].shape) == (1, 25, 25)
    assert s.labels["identity"].is_unique
    imgs = np.stack([s[i].numpy() for i in range(100)])
    assert 0 <= imgs.min() and imgs.max() <= 1 and imgs.std(axis=(1, 2, 3)).min() > 0.05
    assert np.abs(imgs[0] - imgs[1]).mean() > 0.05
    big = load_lfw_faces(size=(160, 160), channels=3)
    assert tuple(big[0].shape) == (3, 160, 160) and big.fingerprint != s.fingerprint
    with pytest.raises(InvalidParameterError):
        load_lfw_faces(channels=2)


def test_sample_faces_are_two_colour_portraits():
    s = load_sample_faces()
    assert list(s.labels["name"]) == ["astronaut", "grace_hopper"] and tuple(s[1].shape) == (3, 160, 160)
    a = s[0].numpy()
    assert np.abs(a[0] - a[2]).mean() > 0.05  # colour, not gray repeated


def test_attribute_groups_cover_all_40_once_and_follow_the_paper():
    groups = attribute_groups()
    names = [a for g in groups.values() for a in g]
    assert sorted(names) == sorted(ATTRIBUTES) and len(names) == 40
    assert {"Male", "Pointy_Nose", "Bald", "Narrow_Eyes", "Oval_Face"} <= set(groups["identity_dependent"])
    assert {"Gray_Hair", "Sideburns", "Black_Hair", "Wavy_Hair"} <= set(groups["identity_correlated"])
    assert {"Smiling", "Blurry", "Wearing_Necklace", "Wearing_Hat", "Eyeglasses", "Wearing_Lipstick"} <= set(
        groups["identity_independent"])


# ----------------------------------------------------------------------------- copies as people have them


def _to_csv(root, zero_one: bool):
    """Rewrite the .txt lists as the mirrors' .csv files (header with image_id)."""
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()[2:]
    rows = [ln.split() for ln in lines]
    conv = (lambda v: "1" if v == "1" else "0") if zero_one else (lambda v: v)
    (root / "list_attr_celeba.csv").write_text("image_id," + ",".join(ATTRIBUTES) + "\n" + "".join(
        r[0] + "," + ",".join(conv(v) for v in r[1:]) + "\n" for r in rows))
    parts = [ln.split() for ln in (root / "list_eval_partition.txt").read_text().splitlines()]
    (root / "list_eval_partition.csv").write_text("image_id,partition\n" + "".join(f"{a},{b}\n" for a, b in parts))
    lm = (root / "list_landmarks_align_celeba.txt").read_text().splitlines()
    (root / "list_landmarks_align_celeba.csv").write_text(
        "image_id," + ",".join(lm[1].split()) + "\n" + "".join(",".join(ln.split()) + "\n" for ln in lm[2:]))
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt", "list_landmarks_align_celeba.txt"):
        (root / name).unlink()


@pytest.mark.parametrize("zero_one", [True, False])
def test_celeba_mirror_with_csv_lists_and_nested_folder_reads_the_same(celeba, tmp_path, zero_one):
    import shutil

    want = load_celeba(celeba, "all", size=(54, 44)).labels
    mirror = tmp_path / "mirror"
    shutil.copytree(celeba, mirror)
    (mirror / "img_align_celeba").rename(tmp_path / "inner")
    (mirror / "img_align_celeba").mkdir()
    (tmp_path / "inner").rename(mirror / "img_align_celeba" / "img_align_celeba")
    _to_csv(mirror, zero_one)
    got = load_celeba(mirror, "all", size=(54, 44))
    pd.testing.assert_frame_equal(got.labels, want)
    k = int(np.flatnonzero(got.labels["image_id"] == "000004.jpg")[0])
    assert abs(got[k].numpy()[0, 30:, 20:].mean() * 255 - 8 * 3) < 4  # the right picture


def test_celeba_lists_with_columns_in_another_order_are_read_by_name(celeba):
    want = load_celeba(celeba, "all", size=(54, 44)).labels
    _to_csv(celeba, zero_one=True)
    attr = pd.read_csv(celeba / "list_attr_celeba.csv", dtype=str)  # pandas/SQL exports reorder columns
    attr[["image_id", *sorted(ATTRIBUTES, key=str.lower)[::-1]]].to_csv(celeba / "list_attr_celeba.csv", index=False)
    pose = pd.read_csv(celeba / "pose.csv", dtype=str)
    pose[["image_id", "roll", "yaw", "pitch"]].to_csv(celeba / "pose.csv", index=False)
    pd.testing.assert_frame_equal(load_celeba(celeba, "all", size=(54, 44)).labels, want)
    attr.rename(columns={"Young": "Old"}).to_csv(celeba / "list_attr_celeba.csv", index=False)
    with pytest.raises(DatasetNotFoundError, match=r"list_attr_celeba.csv: the header must name CelebA's 40 "
                                                   r"attribute names \(any order\); missing Young; not CelebA's Old"):
        load_celeba(celeba, "test")


def test_celeba_attribute_file_mixing_0_and_minus_1_is_refused(celeba):
    _to_csv(celeba, zero_one=False)
    text = (celeba / "list_attr_celeba.csv").read_text().replace("000002.jpg,-1", "000002.jpg,0", 1)
    (celeba / "list_attr_celeba.csv").write_text(text)
    with pytest.raises(DataError, match="found attribute values 0 and -1 in one file; expected -1/1"):
        load_celeba(celeba, "test")


@pytest.mark.parametrize("case, found, expected", [
    ("zip not unpacked", "found img_align_celeba.zip, list_attr_celeba.txt", "expected an image folder img_align_celeba/ (unpack img_align_celeba.zip there)"),
    ("images as png", "found images such as img_align_celeba/000001.png", "expected img_align_celeba/000001.jpg as named in list_attr_celeba.txt"),
    ("images in two subfolders", "found images such as img_align_celeba/part1/000001.jpg", "expected img_align_celeba/000001.jpg"),
    ("no partition list", "found img_align_celeba/, list_attr_celeba.txt", "expected list_eval_partition (.txt or .csv)"),
])
def test_celeba_near_miss_layouts_say_what_was_found_and_expected(celeba, case, found, expected):
    from pytest_invariance.data.celeba import locate_celeba

    img = celeba / "img_align_celeba"
    if case == "zip not unpacked":
        for p in img.iterdir():
            p.unlink()
        img.rmdir()
        (celeba / "img_align_celeba.zip").write_bytes(b"PK")
    elif case == "images as png":
        for p in img.iterdir():
            Image.open(p).save(p.with_suffix(".png"))
            p.unlink()
    elif case == "images in two subfolders":
        for k, p in enumerate(sorted(img.glob("*.jpg"))):
            (img / f"part{k % 2 + 1}").mkdir(exist_ok=True)
            p.rename(img / f"part{k % 2 + 1}" / p.name)
    else:
        (celeba / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_celeba(celeba, "test")
    msg = str(info.value)
    assert found in msg and expected in msg and "\n" not in msg, msg
    assert locate_celeba(celeba.parent) is None  # a folder without CelebA is not an error


def _exif_rotated(img: np.ndarray, path):
    """Store ``img`` turned 90 degrees clockwise with EXIF orientation 8 (a phone held sideways)."""
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(img, k=-1)))
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 CW to view": the viewer turns it back upright
    stored.save(path, exif=exif, quality=95)


def test_images_decode_upright_and_as_rgb_with_conversions_counted(celeba):
    img_dir = celeba / "img_align_celeba"
    _exif_rotated(_face(21, 54, 44), img_dir / "000022.jpg")  # val split
    Image.fromarray(_face(22)).convert("L").save(img_dir / "000023.jpg")
    Image.fromarray(_face(23)).convert("CMYK").save(img_dir / "000024.jpg")
    rgba = np.dstack([_face(24), np.full((54, 44), 255, np.uint8)])
    rgba[:27, :, 3] = 0  # top half transparent
    Image.fromarray(rgba, "RGBA").save(img_dir / "000025.png")
    (img_dir / "000025.jpg").unlink()
    text = (celeba / "list_attr_celeba.txt").read_text().replace("000025.jpg", "000025.png")
    (celeba / "list_attr_celeba.txt").write_text(text)
    for f in ("list_eval_partition.txt", "pose.csv", "list_landmarks_align_celeba.txt"):
        (celeba / f).write_text((celeba / f).read_text().replace("000025.jpg", "000025.png"))
    Image.fromarray(_face(19)).quantize(16).save(img_dir / "000020.png")  # a palette image, train split
    (img_dir / "000020.jpg").unlink()
    for f in ("list_attr_celeba.txt", "list_eval_partition.txt", "pose.csv", "list_landmarks_align_celeba.txt"):
        (celeba / f).write_text((celeba / f).read_text().replace("000020.jpg", "000020.png"))
    val = load_celeba(celeba, "val", size=None)
    assert val.conversions == {"exif_orientation": 1, "grayscale": 1, "cmyk": 1, "alpha": 1}
    row = {name: k for k, name in enumerate(val.labels["image_id"])}
    upright = val[row["000022.jpg"]].numpy()
    assert upright.shape == (3, 54, 44) and upright[:, :10, :10].mean() > 0.9  # Smiling square back top-left
    assert val.labels.loc[row["000022.jpg"], "image_width"] == 44  # sizes are the upright ones
    gray = val[row["000023.jpg"]].numpy()
    assert gray.shape[0] == 3 and np.allclose(gray[0], gray[1], atol=1e-6)
    alpha = val[row["000025.png"]].numpy()
    assert alpha[:, :20].min() > 0.99 and alpha[0, 40:].mean() * 255 == pytest.approx(8 * 24, abs=2)  # on white
    assert load_celeba(celeba, "train").conversions == {"palette": 1}


def test_crop_box_follows_each_images_size_or_landmarks():
    from pytest_invariance.studies.faces import crop_boxes

    box = [25, 60, 128, 128]
    lab = pd.DataFrame({"image_width": [178, 89, 64], "image_height": [218, 109, 64]})
    boxes, how = crop_boxes(lab.iloc[:2], box)
    np.testing.assert_allclose(boxes, [[25, 60, 128, 128], [12.5, 30, 64, 64]])
    assert how["method"] == "box scaled to each image's size" and how["image_sizes"] == {"178x218": 1, "89x109": 1}
    assert crop_boxes(lab, box)[0] is None  # a 64x64 square copy: the whole image, never a box off its edge
    # landmarks of a 2x face in a 356x356 canvas: the box is the 178x218 one, doubled and shifted
    mean = np.array([[69, 111], [107, 111], [88, 134], [72, 152], [105, 152]], float)
    pts = mean * 2 + [0, -40]
    cols = ["lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
            "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y"]
    lab = pd.DataFrame([[356, 356, *pts.ravel()]], columns=["image_width", "image_height", *cols])
    boxes, how = crop_boxes(lab, box)
    np.testing.assert_allclose(boxes[0], [50, 80, 256, 256], atol=1e-9)
    assert how["method"] == "box placed from each image's landmarks"


def test_high_bit_depth_gray_is_scaled_by_its_format_not_its_pixels(tmp_path):
    """A dark 16-bit photo stays dark; float and 32-bit images with no white level are refused."""
    from pytest_invariance.data._decode import open_rgb

    face = _face(5).mean(axis=2) / 255.0  # [0, 1]
    stored = {"full": np.rint(face * 65535), "dark": np.rint(face * 65535 / 256)}
    means = {}
    for name, a in stored.items():
        Image.fromarray(a.astype(np.uint16)).save(tmp_path / f"{name}.png")
        with open_rgb(tmp_path / f"{name}.png") as im:
            means[name] = np.asarray(im, np.float64).mean() / 255
    assert means["full"] == pytest.approx(face.mean(), abs=2e-3)
    assert means["dark"] == pytest.approx(face.mean() / 256, abs=2e-3)  # was read 256x brighter
    Image.fromarray(face.astype(np.float32)).save(tmp_path / "unit.tif")
    with open_rgb(tmp_path / "unit.tif") as im:
        assert np.asarray(im, np.float64).mean() / 255 == pytest.approx(face.mean(), abs=2e-3)
    Image.fromarray((face * 300).astype(np.float32)).save(tmp_path / "wide.tif")
    Image.fromarray((face * 70000).astype(np.int32)).save(tmp_path / "int32.tif")
    for name in ("wide.tif", "int32.tif"):
        with pytest.raises(ValueError, match="does not say which value is white"):
            open_rgb(tmp_path / name)


def test_an_image_edited_in_place_with_its_mtime_restored_changes_the_fingerprint(tmp_path):
    """cp -p / rsync -a / unpacking an archive restore mtimes: the cache key must see the bytes."""
    import os

    from pytest_invariance.data.folder import files_fingerprint

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.bmp")
        Image.fromarray(_face(i)).save(paths[-1])  # BMP: every file the same size
    before = files_fingerprint(paths, [], "x")
    st = paths[1].stat()
    Image.fromarray(_face(7)).save(paths[1])  # another face, same size
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert paths[1].stat().st_size == st.st_size and paths[1].stat().st_mtime_ns == st.st_mtime_ns
    assert files_fingerprint(paths, [], "x") != before
    # moved to another folder with the same bytes: the same key (no needless re-extraction)
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in paths:
        (moved / p.name).write_bytes(p.read_bytes())
    assert files_fingerprint([moved / p.name for p in paths], [], "x") == files_fingerprint(paths, [], "x")
