"""A user's data folder read as it is meant, or refused at load in one line that names the fix:
copies and identities across the split, label typos far out, factors a split cannot measure,
splits with no rows, cells read as unknown, decimal commas, CelebA lists in another order."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pytest_invariance.data.factor_folder import load_factor_folder
from pytest_invariance.errors import DataError


def _folder(root: Path, n: int = 120, copies: int = 0, **cols) -> Path:
    """n distinct random 8x8 images (each with ``copies`` byte-identical copies under other
    names), labels.csv with a random 'flag' and ``cols``."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    names = []
    for i in range(n):
        name = f"img/{i:03d}_a.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
        for k in range(copies):
            shutil.copy(root / name, root / f"img/{i:03d}_{'bcd'[k]}.png")
            names.append(f"img/{i:03d}_{'bcd'[k]}.png")
    table = {"image": names, "flag": rng.choice(["yes", "no"], len(names))}
    table.update({k: (v(len(names)) if callable(v) else v) for k, v in cols.items()})
    pd.DataFrame(table).to_csv(root / "labels.csv", index=False)
    return root


def test_byte_identical_copies_stay_on_one_side_of_the_seeded_split(tmp_path):
    f = load_factor_folder(_folder(tmp_path / "d", n=60, copies=1), seed=3)
    assert f.copies == 60 and f.split_source == "seeded"
    sides = pd.Series(f.split).groupby([n.split("_")[0] for n in f.images.labels["image"]]).nunique()
    assert (sides == 1).all()  # each image and its copy: one side
    # ... and one draw of the bootstrap: a test image and its copy are not two independent rows
    stem = np.array([n.split("_")[0] for n in f.images.labels["image"]])
    assert pd.Series(f.clusters).groupby(stem).nunique().eq(1).all() and len(set(f.clusters)) == 60
    one = load_factor_folder(_folder(tmp_path / "one", n=60))
    assert one.copies == 0 and one.clusters is None


def test_copies_in_two_splits_of_a_split_column_are_refused_naming_them(tmp_path):
    split = lambda n: np.tile(["train", "train", "val", "test", "test", "test"], n // 6)  # noqa: E731
    root = _folder(tmp_path / "d", n=120, copies=1, split=split)
    with pytest.raises(DataError, match=r"40 image\(s\) have byte-identical copies in another split of the 'split' "
                                        r"column \(img/001_a.png \(val\) = img/001_b.png \(test\);.*put all copies "
                                        "of an image in one split, or keep one file per image"):
        load_factor_folder(root)


def test_identities_across_a_split_column_are_refused_in_one_line(tmp_path):
    n = 120
    root = _folder(tmp_path / "d", n=n, split=lambda n: np.tile(["train"] * 6 + ["val"] * 2 + ["test"] * 2, n // 10),
                   identity=lambda n: np.repeat([f"p{k}" for k in range(n // 10)], 10))
    with pytest.raises(DataError) as err:
        load_factor_folder(root)
    lines = [ln for ln in str(err.value).splitlines() if ln.startswith("  - ")]
    assert lines == ["  - column 'split' puts 12 of 12 identities in more than one split ('p0' in train/val/test, "
                     "'p1' in train/val/test, 'p2' in train/val/test, ...): a probe could read the person, not the "
                     "factor; make the split identity-disjoint (all of an identity's images in one split), or delete "
                     "the 'split' column and the plugin splits by identity (seeded by --invariance-seed)"]


def test_a_split_column_with_no_val_or_test_rows_is_one_line(tmp_path):
    root = _folder(tmp_path / "d", split=lambda n: ["train"] * n, amount=lambda n: np.arange(n) * 0.5)
    with pytest.raises(DataError) as err:
        load_factor_folder(root)
    lines = [ln for ln in str(err.value).splitlines() if ln.startswith("  - ")]
    assert len(lines) == 1 and lines[0].startswith("  - column 'split' has no val or test rows (120 train, 0 val, "
                                                   "0 test)") and "delete it" in lines[0]


def test_a_continuous_factor_constant_on_a_split_is_refused_at_load(tmp_path):
    split = lambda n: ["train"] * 72 + ["val"] * 24 + ["test"] * 24  # noqa: E731
    const = lambda n: [0.0] * 96 + list(np.arange(1, 25) * 1.5)  # noqa: E731
    with pytest.raises(DataError, match=r"factor 'c' cannot be probed: its values are all 0 in the train split "
                                        r"\(also constant in val\); .*--invariance-factor-type c=ignore"):
        load_factor_folder(_folder(tmp_path / "d", split=split, c=const))


def test_label_typos_far_out_of_a_continuous_column_are_refused_naming_them(tmp_path):
    amount = lambda n: np.round(np.random.default_rng(1).uniform(0, 50, n), 2)  # noqa: E731
    assert load_factor_folder(_folder(tmp_path / "ok", amount=amount)).factors["amount"].type == "continuous"
    # 3 of 400 (robust_band keeps a mode of 1% of the rows inside: more typos than that pass)
    typos = lambda n: np.r_[[1e6] * 3, amount(n)[3:]]  # noqa: E731
    with pytest.raises(DataError) as err:
        load_factor_folder(_folder(tmp_path / "d", n=400, amount=typos))
    lines = [ln for ln in str(err.value).splitlines() if ln.startswith("  - ")]
    assert len(lines) == 1 and lines[0].startswith("  - column 'amount' has 3 value(s) far outside its typical range")
    assert "img/000_a.png: 1e+06, img/001_a.png: 1e+06, img/002_a.png: 1e+06; typos?" in lines[0]
    assert "--invariance-factor-type amount=ignore" in lines[0]


def test_cells_spelled_na_are_said_to_be_read_as_unknown_and_can_be_kept(tmp_path):
    region = lambda n: np.tile(["EU", "NA"], n // 2)  # noqa: E731
    root = _folder(tmp_path / "d", region=region)
    with pytest.raises(DataError, match=r"column 'region' has a single value \('EU'\) \(60 spelled 'NA' read as "
                                        r"unknown; if that is a level, set \[data\] unknown = \[\"\"\] in the folder's "
                                        r"invariance.toml so only empty cells are unknown\)"):
        load_factor_folder(root)
    (root / "invariance.toml").write_text('[data]\nunknown = [""]\n')
    assert load_factor_folder(root).factors["region"].levels == ("EU", "NA")


def test_a_decimal_comma_column_is_named_for_its_decimal_point(tmp_path):
    cont = lambda n: [f"{v:.1f}".replace(".", ",") for v in np.random.default_rng(2).uniform(0, 50, n)]  # noqa: E731
    with pytest.raises(DataError) as err:
        load_factor_folder(_folder(tmp_path / "d", cont=cont))
    assert "column 'cont' holds numbers with a decimal comma (120 cell(s), e.g. img/000_a.png: " in str(err.value)
    assert "write '.' as the decimal point in labels.csv" in str(err.value) and "cont=ignore" not in str(err.value)


def test_a_non_finite_embedding_names_the_option_a_model_reads_and_warns_nothing():
    """-inf for one image (log of a black pixel): the batch check leaked numpy's 'atol: inf'
    RuntimeWarning and the fix named the suite's [preprocess], which a --model never reads."""
    import warnings

    from pytest_invariance._model_check import batch_dependence
    from pytest_invariance._outcomes import study_error
    from pytest_invariance.embeddings._extract import _check_finite
    from pytest_invariance.errors import EmbeddingError

    rows = np.log(np.random.default_rng(0).uniform(0, 1, (4, 6)))
    rows[2, :3] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch_dependence(None, "emb", rows, rows.copy(), 4)
    with pytest.raises(EmbeddingError) as err:
        _check_finite(rows, 0, "logm layer emb", ["a.png", "b.png", "c.png", "d.png"])
    text = str(study_error("embedding logm zi at layer emb could not run", err.value))
    assert "embedding of image 'c.png' (row 2) contains NaN/Inf (1 image(s) of this batch)" in text
    assert "--invariance-preprocess for a --model" in text and "fix:" not in text  # one fix, said once


def test_one_file_copied_so_often_the_seeded_split_cannot_be_filled_is_one_line(tmp_path):
    root = _folder(tmp_path / "d", n=2, copies=0)
    names = [f"img/same_{k:03d}.png" for k in range(60)]
    for name in names:
        shutil.copy(root / "img/000_a.png", root / name)
    (root / "img/000_a.png").unlink()
    (root / "img/001_a.png").unlink()
    pd.DataFrame({"image": names, "flag": ["yes", "no"] * 30}).to_csv(root / "labels.csv", index=False)
    with pytest.raises(DataError) as err:
        load_factor_folder(root)
    lines = [ln for ln in str(err.value).splitlines() if ln.startswith("  - ")]
    assert lines == ["  - the seeded split keeps byte-identical files together and 60 of 60 images are one file "
                     "(img/same_000.png, img/same_001.png, img/same_002.png, ...), which leaves no val or test images; "
                     "keep one file per image (or give the images a 'split' column)"]


def test_na_cells_of_a_multi_level_column_are_counted_and_said_in_the_run_notes(tmp_path):
    # 'NA' (North America) in a 3-level column was read as unknown without a word: a third of the
    # rows left out of the factor and one level gone
    from pytest_invariance._notes import run_notes

    region = lambda n: np.tile(["EU", "NA", "AS"], n // 3)  # noqa: E731
    f = load_factor_folder(_folder(tmp_path / "d", n=120, region=region)).factors["region"]
    assert f.levels == ("AS", "EU") and f.spelled_unknown == {"NA": 40} and int(np.isnan(f.values).sum()) == 40
    fields, lines = run_notes([{"details": {"read_as_unknown": {"region": f.spelled_unknown}}}])
    assert fields["read_as_unknown"] == {"region": {"NA": 40}}
    assert lines == ["invariance: factor cells spelled as unknown were left out of their factor: region 40 'NA'; if "
                     "one is a level, set [data] unknown = [\"\"] in the folder's invariance.toml (only empty cells "
                     "unknown)"]
    (tmp_path / "d" / "invariance.toml").write_text('[data]\nunknown = [""]\n')
    kept = load_factor_folder(tmp_path / "d").factors["region"]
    assert kept.levels == ("AS", "EU", "NA") and kept.spelled_unknown == {}
