"""Precomputed embeddings (--invariance-embeddings) and ``pytest-invariance extract``.

Shards are written here two ways: by the plugin's ``extract`` over a labelled folder of
real faces (the 100 LFW faces shipped with scikit-image, factors planted by
``scripts/make_factor_folder.py``) with a small seeded conv net exported to ONNX, and by
hand with pyarrow the way another pipeline would (float64 lists, tensor extension type,
shuffled rows, extra ids). The audit of the shards must give the figures of the audit
that runs the model; bad shards must give one clear error each.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import onnx  # noqa: F401  - imported once here (pytester restores sys.modules between tests)
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch  # noqa: F401  - imported once here, like onnx

from pytest_invariance.embeddings._parquet import ParquetEmbeddings, ShardMeta, to_matrix, write_shard
from pytest_invariance.errors import DataError, InvalidParameterError
from pytest_invariance.testing import copy_suite, export_onnx, grid_cnn, run_and_read

REPO = Path(__file__).resolve().parents[1]
SHA = "ab" * 32


def _meta(layers=("emb",), **kw):
    return ShardMeta(kw.pop("sha", SHA), tuple(layers), kw.pop("pool", "auto"), kw.pop("pre", None), "toy", **kw)


# ----------------------------------------------------------------------------- the format


def test_round_trip_and_join_by_id_over_shards(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"img/{i:03d}.jpg" for i in range(50)]
    X, Y = rng.normal(size=(50, 7)).astype(np.float32), rng.normal(size=(50, 3)).astype(np.float32)
    order = rng.permutation(50)  # shards hold the rows in another order than the suite asks
    for k, part in enumerate(np.array_split(order, 3)):
        write_shard(tmp_path / "d" / f"s{k}.parquet", [ids[i] for i in part], {"a": X[part], "b": Y[part]},
                    _meta(("a", "b")))
    src = ParquetEmbeddings(tmp_path / "d")
    assert src.n_rows == 50 and len(src.files) == 3 and src.meta.layers == ("a", "b")
    want = [ids[i] for i in (7, 3, 49, 0)] + ["./img/011.jpg"]  # ids are normalized paths
    np.testing.assert_array_equal(src.lookup(want, "a"), X[[7, 3, 49, 0, 11]])
    np.testing.assert_array_equal(src.lookup(want, "b"), Y[[7, 3, 49, 0, 11]])
    streamed = {i: x for b_ids, b in src.iter_batches("a", max_rows=4) for i, x in zip(b_ids, b)}
    assert len(streamed) == 50 and all(np.array_equal(streamed[ids[i]], X[i]) for i in range(50))
    assert max(len(b) for _, b in src.iter_batches("a", max_rows=4)) == 4


def test_vectors_written_by_another_pipeline_are_read(tmp_path):
    """float64 list<>, float16 fixed-size lists and the fixed_shape_tensor extension type."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6, 4))
    lists = pa.array(list(X), pa.list_(pa.float64()))
    halves = pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float16).ravel()), 4)
    tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(X.reshape(6, 2, 2).astype(np.float32))
    np.testing.assert_allclose(to_matrix(lists, "l"), X.astype(np.float32))
    np.testing.assert_array_equal(to_matrix(halves, "h"), X.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(to_matrix(tensor, "t"), X.astype(np.float32))
    t = pa.table({"id": [str(i) for i in range(6)], "penultimate": tensor})
    pq.write_table(t.replace_schema_metadata({"invariance.model_sha256": SHA}), tmp_path / "x.parquet")
    src = ParquetEmbeddings(tmp_path / "x.parquet")  # layers: the vector columns, when not listed
    assert src.meta.layers == ("penultimate",) and src.default_layer() == "penultimate"
    with pytest.raises(Exception, match="lengths"):
        to_matrix(pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32())), "ragged")
    q = np.round(X * 20).astype(np.int8)  # quantised embeddings: integers are numbers, read exactly
    pq.write_table(pa.table({"id": [str(i) for i in range(6)], "q": pa.array(list(q), pa.list_(pa.int8()))})
                   .replace_schema_metadata({"invariance.model_sha256": SHA}), tmp_path / "q.parquet")
    np.testing.assert_array_equal(ParquetEmbeddings(tmp_path / "q.parquet").lookup(["5", "0"], "q"),
                                  q[[5, 0]].astype(np.float32))


def test_duplicate_ids_are_one_error_with_counts_and_examples(tmp_path):
    write_shard(tmp_path / "a.parquet", ["x", "y", "z"], {"emb": np.zeros((3, 2))}, _meta())
    write_shard(tmp_path / "b.parquet", ["y", "z", "w"], {"emb": np.ones((3, 2))}, _meta())
    with pytest.raises(DataError, match=r"2 ids occur more than once \(4 rows of 6\), e\.g\. 'y', 'z'"):
        ParquetEmbeddings(tmp_path)


def test_missing_ids_are_one_error_with_counts_and_examples(tmp_path):
    write_shard(tmp_path / "a.parquet", ["x", "y"], {"emb": np.ones((2, 2))}, _meta())
    with pytest.raises(DataError, match=r"2 of 3 images of test split have no row \(e\.g\. 'q', 'r'\)"):
        ParquetEmbeddings(tmp_path).lookup(["x", "q", "r"], "emb", "test split")


def test_mismatched_metadata_is_refused_naming_the_option(tmp_path):
    pre = {"size": [64, 64], "channels": 3}
    write_shard(tmp_path / "a.parquet", ["x"], {"emb": np.ones((1, 2))}, _meta(pool="gap", pre=pre))
    src = ParquetEmbeddings(tmp_path)
    from pytest_invariance.embeddings import Preprocess

    ok = Preprocess(size=(64, 64), channels=3).to_dict()
    src.check_run(sha256=SHA, layer="emb", pool="gap", preprocessing=ok)
    cases = [(dict(sha256="cd" * 32), "--model"), (dict(layer="fc"), "--layer fc"),
             (dict(pool="auto"), "--invariance-pool auto"),
             (dict(preprocessing=Preprocess(size=(64, 64), channels=3, prewhiten=True).to_dict()),
              "--invariance-preprocess")]
    for change, option in cases:
        kw = {"sha256": SHA, "layer": "emb", "pool": "gap", "preprocessing": ok, **change}
        with pytest.raises(InvalidParameterError, match=option) as err:
            src.check_run(**kw)
        assert "\n" not in str(err.value)
    write_shard(tmp_path / "b.parquet", ["y"], {"emb": np.ones((1, 2))}, _meta(pool="auto", pre=pre))
    with pytest.raises(DataError, match="shards disagree: a.parquet records .*pool=gap.* but b.parquet"):
        ParquetEmbeddings(tmp_path)


# ----------------------------------------------------------------------------- through pytest


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_factor_folder", REPO / "scripts" / "make_factor_folder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    root = tmp_path_factory.mktemp("lfw") / "faces"
    mod.make_lfw_folder(root, n_faces=40, per_face=4, seed=0)
    (root / "invariance.toml").write_text('[preprocess]\nsize = [64, 64]\nchannels = 3\n')
    model = export_onnx(grid_cnn(8, 3, 16, padding=1), tmp_path_factory.mktemp("model") / "grid.onnx", (3, 64, 64))
    return root, model


@pytest.fixture(scope="module")
def shards(faces, tmp_path_factory):
    from pytest_invariance.cli import main

    root, model = faces
    out = tmp_path_factory.mktemp("emb") / "shards"
    assert main(["extract", "--suite", str(REPO / "audits" / "factors"), "--data-dir", str(root), "--model",
                 str(model), "--out", str(out), "--shard-rows", "64", "--progress", "off"]) == 0
    return out


def test_extract_writes_the_format(shards, faces):
    src = ParquetEmbeddings(shards)
    assert src.n_rows == 160 and [p.name for p in src.files] == ["part-000000000.parquet", "part-000000064.parquet",
                                                                   "part-000000128.parquet"]
    from pytest_invariance.models._common import sha256_file

    assert src.meta.model_sha256 == sha256_file(faces[1]) and src.meta.layers == ("output",)
    assert src.meta.preprocessing["size"] == [64, 64] and src.meta.pool == "auto"


def test_extract_leaves_no_half_written_out_and_does_not_clobber(faces, shards, tmp_path, capsys):
    from PIL import Image

    from pytest_invariance.cli import main

    root, model = faces
    images = tmp_path / "images"
    images.mkdir()
    for i, f in enumerate(sorted(p for p in (root / "img").rglob("*") if p.is_file())[:12]):
        Image.open(f).save(images / f"{i:02d}.png")
    (images / "99.png").write_bytes(b"not a png")  # the last shard fails to decode
    out = tmp_path / "out"
    args = ["extract", "--images", str(images), "--model", str(model), "--preprocess", "size=64",
            "--shard-rows", "4", "--progress", "off"]
    assert main([*args, "--out", str(out)]) == 2  # after three shards were written
    assert "99.png" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no partial sibling
    (images / "99.png").unlink()
    assert main([*args, "--out", str(out)]) == 0 and len(ParquetEmbeddings(out).files) == 3
    # an --out that is not empty is never replaced without --overwrite, and never when it holds other files
    assert main([*args, "--out", str(out), "--shard-rows", "6"]) == 2
    assert "is not empty (3 files" in capsys.readouterr().err and len(ParquetEmbeddings(out).files) == 3
    assert main([*args, "--out", str(out), "--shard-rows", "6", "--overwrite"]) == 0
    assert len(ParquetEmbeddings(out).files) == 2
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--out", str(out), "--overwrite"]) == 2
    assert "not Parquet shards (e.g. notes.txt)" in capsys.readouterr().err and (out / "notes.txt").exists()


def test_extract_images_writes_each_file_once_however_many_links_name_it(faces, tmp_path, capsys):
    """real/ holds 4 images; sub -> real (a folder alias), a hard link and a symbolic link to
    a file: 4 rows, one per file, each equal to that file's own embedding; the output says
    which names were left out."""
    import os

    from PIL import Image

    from pytest_invariance.cli import main

    root, model = faces
    images = tmp_path / "images"
    (images / "real").mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in (root / "img").rglob("*") if p.is_file())[:4]):
        Image.open(f).save(images / "real" / f"{i}.png")
    (images / "sub").symlink_to(images / "real", target_is_directory=True)
    os.link(images / "real" / "0.png", images / "real" / "hard.png")
    (images / "soft.png").symlink_to(images / "real" / "1.png")
    args = ["extract", "--images", str(images), "--model", str(model), "--preprocess", "size=64", "--progress", "off"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    got = ParquetEmbeddings(tmp_path / "out")
    assert sorted(got._ids) == ["real/0.png", "real/1.png", "real/2.png", "real/3.png"]
    assert "extract: 2 image name(s) are another name of a file already extracted (a hard link or a symbolic link " \
           "to a file), left out: its row's id is the first name, e.g. real/hard.png = real/0.png, soft.png = " \
           "real/1.png" in said
    assert "extract: 1 linked folder(s) lead to a folder read under another name, so their images are extracted " \
           "once, under that name, e.g. sub -> real" in said
    # each row is its own file's embedding: the same as a folder of the plain files
    plain = tmp_path / "plain" / "real"
    plain.mkdir(parents=True)
    for i in range(4):
        (plain / f"{i}.png").write_bytes((images / "real" / f"{i}.png").read_bytes())
    assert main([*args[:2], str(tmp_path / "plain"), *args[3:], "--out", str(tmp_path / "ref")]) == 0
    ref = ParquetEmbeddings(tmp_path / "ref")
    ids = sorted(ref._ids)
    np.testing.assert_allclose(got.lookup(ids, "output"), ref.lookup(ids, "output"), rtol=0, atol=0)


def test_local_ray_extraction_equals_in_process(shards, faces, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'pytest-invariance[ray]'")
    from pytest_invariance._extract_plan import suite_job
    from pytest_invariance.embeddings._export import run_ray
    from pytest_invariance.settings import Settings

    root, model = faces
    job = suite_job(Settings(model=str(model), data_dir=str(root), no_cache=True), REPO / "audits" / "factors", 64)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a local instance
    try:
        run_ray(job, tmp_path / "ray", actors=2)
    finally:
        ray.shutdown()
    a, b = ParquetEmbeddings(tmp_path / "ray"), ParquetEmbeddings(shards)
    assert [p.name for p in a.files] == [p.name for p in b.files] and a.meta == b.meta
    ids = list(b._ids)
    np.testing.assert_allclose(a.lookup(ids, "output"), b.lookup(ids, "output"), rtol=0, atol=1e-6)


@pytest.fixture
def suite(pytester):
    return copy_suite(pytester, "factors")


_run = run_and_read


def test_audit_of_the_shards_equals_the_audit_of_the_model(suite, faces, shards):
    root, model = faces
    args = ("audits/factors/test_factors.py::test_factor", "-k", "occluded or rotation", f"--invariance-data-dir={root}")
    ran, by_model = _run(suite, *args, f"--model={model}")
    ran.assert_outcomes(passed=2)
    ran, by_shards = _run(suite, *args, f"--invariance-embeddings={shards}")
    ran.assert_outcomes(passed=2)
    ran.stdout.fnmatch_lines([f"invariance: embeddings from {shards} (3 shards, 160 rows, layers output, *"])
    assert by_model["run"]["embeddings_source"]["kind"] == "model"
    src = by_shards["run"]["embeddings_source"]
    assert src["kind"] == "parquet" and src["path"] == str(shards) and src["rows"] == 160
    assert by_shards["run"]["model_sha256"] == by_model["run"]["model_sha256"]
    fig = lambda doc: {(c["nodeid"], c["metric"]): (c["value"], c["ci_low"], c["ci_high"]) for c in doc["checks"]}  # noqa: E731
    assert fig(by_shards) == fig(by_model) and len(fig(by_model)) >= 5


def test_shards_of_another_model_are_refused_once(suite, faces, shards, tmp_path):
    root, _ = faces
    other = export_onnx(grid_cnn(4, 3, 16, seed=1), tmp_path / "o.onnx", (3, 64, 64))
    ran, doc = _run(suite, "audits/factors", f"--invariance-data-dir={root}", f"--model={other}",
                    f"--invariance-embeddings={shards}", "-n", "2")
    assert ran.ret == 4 and doc is None  # a usage error before any test
    assert ran.stderr.str().count("the shards record model sha256") == 1
    ran.stderr.fnmatch_lines(["ERROR: --invariance-embeddings * --model has *; pass the --model they were "
                              "extracted from, or drop --model"])


def test_shards_narrower_than_the_models_layer_are_refused_once(suite, faces, shards, tmp_path):
    # the metadata is the model's (copied), the vectors are not: only their width can tell
    import pyarrow as pa
    import pyarrow.parquet as pq

    narrow = tmp_path / "narrow"
    narrow.mkdir()
    for f in sorted(shards.glob("*.parquet")):
        table = pq.read_table(f)
        layer = [c for c in table.column_names if c != "id"][0]
        X = np.stack(table.column(layer).to_numpy(zero_copy_only=False))[:, :16].astype(np.float32)
        cut = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 16)
        pq.write_table(table.set_column(table.column_names.index(layer), layer, cut)
                       .replace_schema_metadata(table.schema.metadata), narrow / f.name)
    root, model = faces
    ran, doc = _run(suite, "audits/factors", f"--invariance-data-dir={root}", f"--model={model}",
                    f"--invariance-embeddings={narrow}")
    assert ran.ret == 4 and doc is None  # a usage error before any test, not 16-wide figures
    ran.stderr.fnmatch_lines(["ERROR: --invariance-embeddings *: layer * holds 16-wide vectors but --model * reads "
                              "128 there (pool auto); re-extract the shards with this model*"])


def _spoil(shards: Path, out: Path, kind: str) -> tuple[str, str]:
    """Copy the shards, spoiling row 5 of the second one the way a pipeline might; returns
    (the spoiled file's name, what the error must say)."""
    shutil.copytree(shards, out)
    f = out / "part-000000064.parquet"
    table = pq.read_table(f)
    X = np.stack(table.column("output").to_numpy(zero_copy_only=False)).astype(np.float64)
    rows = list(X)
    if kind == "nan":
        rows[5] = rows[5].copy()
        rows[5][3] = np.nan
        col, says = pa.array(rows, pa.list_(pa.float64())), "1 vectors with NaN or Inf"
    elif kind == "inf":
        X[5, 0], X[9, 1] = np.inf, -np.inf
        col, says = pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float32).ravel()), X.shape[1]), \
            "2 vectors with NaN or Inf"
    elif kind == "overflow":  # finite in the file's float64, Inf once read as float32
        X[5, 2] = 1e39
        col, says = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1]), \
            "1 vectors with values beyond float32's range"
    elif kind == "ragged":
        rows[5] = rows[5][:-1]
        col, says = pa.array(rows, pa.list_(pa.float32())), "1 vectors whose length is not 128 (lengths [127])"
    elif kind == "null":
        rows[5] = None
        col, says = pa.array(rows, pa.list_(pa.float32())), "1 null vectors"
    elif kind == "narrower_shard":  # one shard of another width: ragged over shards
        col, says = pa.FixedSizeListArray.from_arrays(pa.array(X[:, :64].astype(np.float32).ravel()), 64), \
            "holds 64-wide vectors but part-000000000.parquet holds 128-wide ones"
    else:  # strings: not numbers at all
        col, says = pa.array([[str(v) for v in r] for r in rows], pa.list_(pa.string())), \
            "metadata names layer 'output' but it is list<element: string>, not a list of numbers"
    pq.write_table(table.set_column(1, "output", col).replace_schema_metadata(table.schema.metadata), f)
    return f.name, says


@pytest.mark.parametrize("kind", ["nan", "inf", "overflow", "ragged", "null", "narrower_shard", "strings"])
def test_bad_vectors_stop_the_run_once_at_start_up(suite, faces, shards, tmp_path, kind):
    name, says = _spoil(shards, tmp_path / "bad", kind)
    ran, doc = _run(suite, "audits/factors", f"--invariance-data-dir={faces[0]}",
                    f"--invariance-embeddings={tmp_path / 'bad'}", "-n", "2")
    assert ran.ret == 4 and doc is None  # a usage error before any test, not an ERROR per test
    err = ran.stderr.str()
    assert err.count(says) == 1 and f"{name}: column 'output'" in err.replace("metadata names layer", "column"), err
    assert "--invariance-embeddings" in err
    if kind in ("nan", "overflow", "ragged", "null"):  # the row's id is quoted
        ids = pq.read_table(tmp_path / "bad" / name, columns=["id"]).column("id").to_pylist()
        assert f"(e.g. ids {ids[5]!r})" in err


def test_shards_that_do_not_say_how_they_were_made_are_refused_unless_accepted(suite, faces, shards, tmp_path):
    bare, partial = tmp_path / "bare", tmp_path / "partial"
    for folder, keep in ((bare, ()), (partial, ("invariance.model_sha256",))):
        folder.mkdir()
        for f in sorted(shards.glob("*.parquet")):
            table = pq.read_table(f)
            meta = {k: v for k, v in table.schema.metadata.items() if k.decode() in keep}
            pq.write_table(table.replace_schema_metadata(meta or None), folder / f.name)
    root, model = faces
    args = ("audits/factors/test_factors.py::test_factor", "-k", "occluded", f"--invariance-data-dir={root}")
    ran, doc = _run(suite, *args, f"--invariance-embeddings={bare}", "-n", "2")
    assert ran.ret == 4 and doc is None
    assert ran.stderr.str().count("the shards do not record") == 1
    ran.stderr.fnmatch_lines(["ERROR: --invariance-embeddings *: the shards do not record model_sha256, layers, pool, "
                              "preprocessing (metadata *), so the audit cannot tell *, or pass "
                              "--invariance-embeddings-unverified to audit them as they are*"])
    # naming the column says which layer; the pool and preprocessing still are not said
    ran, doc = _run(suite, *args, f"--invariance-embeddings={partial}", "--layer=output")
    assert ran.ret == 4 and doc is None
    ran.stderr.fnmatch_lines(["ERROR: *: the shards do not record pool, preprocessing (metadata invariance.pool, "
                              "invariance.preprocessing)*--invariance-embeddings-unverified to audit them as they are"])
    ran, by_model = _run(suite, *args, f"--model={model}")
    ran.assert_outcomes(passed=1)
    ran, doc = _run(suite, *args, f"--invariance-embeddings={bare}", "--invariance-embeddings-unverified")
    ran.assert_outcomes(passed=1)
    src = doc["run"]["embeddings_source"]
    assert src["verified"] is False and src["unrecorded"] == ["model_sha256", "layers", "pool", "preprocessing"]
    fig = lambda d: sorted((c["metric"], c["value"]) for c in d["checks"])  # noqa: E731
    assert fig(doc) == fig(by_model)  # the vectors are the model's: accepted, they give its figures
    assert by_model["run"]["embeddings_source"]["kind"] == "model"


def test_shards_that_record_no_model_are_versioned_by_their_bytes(suite, faces, shards, tmp_path):
    # Under one "precomputed" tag a second set of such shards replaced the first in the
    # history, and --invariance-baseline latest compared nothing ("a first run").
    from pytest_invariance.history import HistoryStore

    sets = {}
    for name, shift in (("one", 0.0), ("two", 1.0)):
        folder = sets[name] = tmp_path / name
        folder.mkdir()
        for f in sorted(shards.glob("*.parquet")):
            table = pq.read_table(f).replace_schema_metadata(None)
            col = table.column("output")
            X = to_matrix(col, "output") + shift  # another set of vectors under the same ids
            table = table.set_column(table.schema.get_field_index("output"), "output",
                                     pa.array(X.tolist(), col.type))
            pq.write_table(table, folder / f.name)
    root, _ = faces
    args = ("audits/factors/test_factors.py::test_factor", "-k", "occluded", f"--invariance-data-dir={root}",
            "--invariance-embeddings-unverified", "--layer=output", "--invariance-baseline=latest")
    _run(suite, *args, f"--invariance-embeddings={sets['one']}")
    ran, doc = _run(suite, *args, f"--invariance-embeddings={sets['two']}")
    versions = HistoryStore(suite.path / "h.sqlite").versions()
    assert len(versions) == 2 and all(v.startswith("emb-") for v in versions), versions
    ran.stdout.fnmatch_lines([f"invariance: baseline {versions[0]} (recorded *): * checks compared*"])


def test_the_data_folders_own_preprocessing_is_checked_at_start_up(suite, faces, shards, tmp_path):
    root, model = faces
    other = tmp_path / "faces"
    shutil.copytree(root, other)  # the same images, now asking to be read at 48 x 48
    (other / "invariance.toml").write_text('[preprocess]\nsize = [48, 48]\nchannels = 3\n')
    ran, doc = _run(suite, "audits/factors", f"--invariance-data-dir={other}", f"--model={model}",
                    f"--invariance-embeddings={shards}", "-n", "2")
    assert ran.ret == 4 and doc is None  # before any test, not one ERROR per study
    assert ran.stderr.str().count("the shards of") == 1
    ran.stderr.fnmatch_lines(["ERROR: --invariance-preprocess: the shards of * record preprocessing *'size': "
                              "[[]64, 64[]]* but this run feeds *'size': [[]48, 48[]]*; pass --invariance-preprocess to "
                              "match, or re-extract"])


def test_duplicate_ids_stop_the_run_at_start_up(suite, faces, shards, tmp_path):
    bad = tmp_path / "dup"
    shutil.copytree(shards, bad)
    shutil.copy(bad / "part-000000064.parquet", bad / "again.parquet")
    ran, doc = _run(suite, "audits/factors", f"--invariance-data-dir={faces[0]}", f"--invariance-embeddings={bad}",
                    "-n", "2")
    assert ran.ret == 4 and doc is None
    assert ran.stderr.str().count("ids occur more than once") == 1
    ran.stderr.fnmatch_lines(["ERROR: --invariance-embeddings *: 64 ids occur more than once (128 rows of 224), e.g. *"])


def test_missing_ids_are_one_collection_error(suite, faces, shards, tmp_path):
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(shards / "part-000000000.parquet", part)
    ran, doc = _run(suite, "audits/factors", f"--invariance-data-dir={faces[0]}", f"--invariance-embeddings={part}",
                    "-n", "2")
    ran.assert_outcomes(errors=1)
    assert ran.stdout.str().count("96 of 160 images of") == 1
    assert not doc["checks"] or all(c["status"] != "passed" for c in doc["checks"])


def test_suites_that_make_their_own_images_are_not_joinable():
    from pytest_invariance._precomputed import not_joinable
    from pytest_invariance.checks import Suite

    for name in ("mnist_rotation", "face_perturbation"):
        reason = not_joinable(Suite.load(REPO / "audits" / name / "invariance.toml"))
        assert reason and reason.startswith(f"{name}: --invariance-embeddings cannot be joined to this suite")
    for name in ("face_attributes", "face_pose", "factors"):
        assert not_joinable(Suite.load(REPO / "audits" / name / "invariance.toml")) is None


# ----------------------------------------------------------------------------- another pipeline's CelebA shards


def _own_celeba_shards(folder: Path, celeba: dict, drop: int = 0) -> Path:
    """Embeddings from 'another pipeline': 16 float64 dims, Smiling written into dim 0, written
    with plain pyarrow (list<double>, rows shuffled, two shards), no preprocessing recorded."""
    from pytest_invariance.data.celeba import ATTRIBUTES

    n = len(celeba["attrs"])
    rng = np.random.default_rng(5)
    X = rng.normal(size=(n, 16))
    X[:, 0] += 3.0 * celeba["attrs"][:, ATTRIBUTES.index("Smiling")]
    ids = np.array([f"{i + 1:06d}.jpg" for i in range(n)])
    keep = rng.permutation(n)[: n - drop]
    folder.mkdir()
    for k, part in enumerate(np.array_split(keep, 2)):
        t = pa.table({"id": ids[part], "vec": pa.array(list(X[part]), pa.list_(pa.float64()))})
        pq.write_table(t.replace_schema_metadata({"invariance.model_sha256": "ef" * 32, "invariance.model": "mine",
                                                  "invariance.pool": "auto"}), folder / f"{k}.parquet")
    return folder


@pytest.fixture
def face_suites(pytester):
    return copy_suite(pytester, "face_attributes", "face_perturbation")


def test_own_celeba_shards_are_audited_without_the_model(face_suites, tmp_path):
    from test_face_suites import make_celeba

    celeba = make_celeba(face_suites.path / "data" / "celeba")
    emb = _own_celeba_shards(tmp_path / "emb", celeba)
    args = ("audits/face_attributes", "audits/face_perturbation", "-k", "Smiling or Wearing_Necklace or rotation",
            "--invariance-data-dir=data", f"--invariance-embeddings={emb}")
    ran, doc = _run(face_suites, *args)  # they record no layers and no preprocessing
    assert ran.ret == 4 and doc is None
    ran.stderr.fnmatch_lines(["ERROR: --invariance-embeddings *: the shards do not record layers, preprocessing, "
                              "image_digest (metadata invariance.layers, invariance.preprocessing; column "
                              "image_digest)*pass "
                              "--invariance-embeddings-unverified to audit them as they are (or name the columns "
                              "with --layer)"])
    ran, doc = _run(face_suites, *args, "--invariance-embeddings-unverified")
    ran.assert_outcomes(passed=1, failed=1, skipped=3)
    ran.stdout.fnmatch_lines(["invariance: embeddings NOT verified: the shards do not record layers, preprocessing, "
                              "image_digest (accepted by --invariance-embeddings-unverified)"])
    src = doc["run"]["embeddings_source"]
    assert src["verified"] is False and src["unrecorded"] == ["layers", "preprocessing", "image_digest"]  # Smiling leaks; the perturbation suite cannot join
    ran.stdout.fnmatch_lines(["*face_perturbation: --invariance-embeddings cannot be joined to this suite (it "
                              "perturbs its faces itself: the levels have no ids)*"])
    by = {(c["details"].get("attribute"), c["metric"]): c for c in doc["checks"] if c["status"] in ("passed", "failed")}
    assert by["Smiling", "fn_rate"]["value"] < 0.1 and by["Smiling", "fn_rate"]["details"]["model"] == "mine"
    assert by["Wearing_Necklace", "fn_rate"]["ci_low"] <= 0.5 <= by["Wearing_Necklace", "fn_rate"]["ci_high"]
    assert doc["run"]["embeddings_source"]["model_sha256"] == "ef" * 32 and doc["run"]["model_version"] == "ef" * 6


def test_own_celeba_shards_missing_rows_stop_the_run_once(face_suites, tmp_path):
    from test_face_suites import make_celeba

    celeba = make_celeba(face_suites.path / "data" / "celeba")
    emb = _own_celeba_shards(tmp_path / "emb", celeba, drop=30)
    ran, doc = _run(face_suites, "audits/face_attributes", "--invariance-data-dir=data",
                    f"--invariance-embeddings={emb}", "--invariance-embeddings-unverified", "-n", "2")
    assert ran.ret == 4 and doc is None
    err = ran.stderr.str()
    assert err.count("have no row") == 1 and "extract embeddings for every image the suite audits" in err
    ran.stderr.fnmatch_lines(["ERROR: --invariance-embeddings *: * of * images of face_attributes CelebA * "
                              "have no row (e.g. *"])


def test_a_layer_sweep_reads_every_selected_layer_from_the_shards(suite, faces, tmp_path):
    from pytest_invariance.cli import main

    root, model = faces
    layers = ["/pool/AveragePool_output_0", "output"]
    out = tmp_path / "sweep"
    assert main(["extract", "--suite", str(REPO / "audits" / "factors"), "--data-dir", str(root), "--model",
                 str(model), "--out", str(out), "--layer", layers[0], "--layer", layers[1], "--progress", "off"]) == 0
    assert ParquetEmbeddings(out).meta.layers == tuple(layers)  # one pass, one column per layer
    typed = tmp_path / "typed"  # typed last-first: the shards still list them in forward order
    assert main(["extract", "--suite", str(REPO / "audits" / "factors"), "--data-dir", str(root), "--model",
                 str(model), "--out", str(typed), "--layer", layers[1], "--layer", layers[0], "--progress", "off"]) == 0
    assert ParquetEmbeddings(typed).meta.layers == tuple(layers)
    args = ("audits/factors/test_factors.py::test_factor", "-k", "occluded", f"--invariance-data-dir={root}",
            f"--layer={layers[0]}", f"--layer={layers[1]}")
    ran, by_model = _run(suite, *args, f"--model={model}")
    ran.assert_outcomes(passed=2)
    ran, by_shards = _run(suite, *args, f"--invariance-embeddings={out}")
    ran.assert_outcomes(passed=2)
    fig = lambda doc: {(c["nodeid"], c["layer"], c["metric"]): (c["value"], c["ci_low"], c["ci_high"])  # noqa: E731
                       for c in doc["checks"]}
    assert fig(by_shards) == fig(by_model) and {k[1] for k in fig(by_model)} == set(layers)
    assert by_shards["run"]["models"][by_shards["run"]["embeddings_source"]["model"]]["layers"] == layers
    ran, _ = _run(suite, "audits/factors", f"--invariance-data-dir={root}", f"--invariance-embeddings={out}")
    assert ran.ret == 4
    ran.stderr.fnmatch_lines(["ERROR: --invariance-embeddings * holds layers /pool/AveragePool_output_0, output; "
                              "pick with --layer NAME (repeatable) or --invariance-layers all"])


def test_a_terminated_extraction_leaves_nothing_and_a_killed_ones_leftovers_are_named(tmp_path):
    """SIGTERM (what Kubernetes and Slurm send) cleans up like Ctrl-C; a folder left by SIGKILL is warned about."""
    import os
    import signal

    from pytest_invariance.embeddings._export import _publish
    from pytest_invariance.errors import InvarianceWarning

    def write(folder):
        (folder / "part-000000000.parquet").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        return []

    out, before = tmp_path / "out", signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        _publish(out, False, write)
    assert exc.value.code == 128 + signal.SIGTERM and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    (tmp_path / ".out.partial-1").mkdir()  # as a SIGKILLed run leaves it
    with pytest.warns(InvarianceWarning, match=r"unfinished folder\(s\) of an earlier killed extraction"):
        _publish(out, False, lambda folder: [])
    assert out.is_dir()


def _dead(tmp_path):
    """grid_cnn whose ReLU is dead on every image (conv bias -1e3): its output is all zero."""
    net = grid_cnn(8, 3, 16, padding=1)
    with torch.no_grad():
        net.conv.bias.fill_(-1e3)
    return export_onnx(net, tmp_path / "dead.onnx", (3, 64, 64))


def test_extract_of_a_constant_layer_is_refused_in_one_line_and_writes_nothing(faces, tmp_path, capsys):
    from pytest_invariance.cli import main

    root, _ = faces
    out = tmp_path / "out"
    args = ["extract", "--suite", str(REPO / "audits" / "factors"), "--data-dir", str(root), "--model",
            str(_dead(tmp_path)), "--out", str(out), "--shard-rows", "64", "--progress", "off"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pytest-invariance: error: --layer output: ")
    assert "same embedding (all zero) for all 160 images" in err[0] and "extract another layer with --layer NAME" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dead.onnx"]  # no --out, no hidden partial folder


def test_a_constant_layer_of_the_shards_names_extract_not_list_layers(suite, faces, shards, tmp_path):
    # --invariance-list-layers and a --layer the shards lack cannot help: the fix is a re-extraction
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted(shards.glob("*.parquet")):
        table = pq.read_table(f)
        X = np.zeros((table.num_rows, 8), np.float32)
        col = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 8)
        pq.write_table(table.set_column(table.column_names.index("output"), "output", col)
                       .replace_schema_metadata(table.schema.metadata), flat / f.name)
    root, _ = faces
    ran, _doc = _run(suite, "audits/factors/test_factors.py::test_factor", "-k", "occluded",
                     f"--invariance-data-dir={root}", f"--invariance-embeddings={flat}")
    ran.assert_outcomes(errors=1)
    out = ran.stdout.str()
    assert "gives the same embedding (all zero)" in out
    assert "re-extract another layer of the model: pytest-invariance extract --layer NAME" in out
    assert "--invariance-list-layers" not in out


def test_shards_of_other_images_under_the_same_ids_are_refused_once(suite, faces, shards, tmp_path):
    """A new version of the data folder (same file names, other pixels): the shards embed the
    old images, so joining by id alone would report the old images' figures as verified."""
    import csv

    new = tmp_path / "faces_v2"
    shutil.copytree(faces[0], new)
    with open(new / "labels.csv", newline="") as f:
        names = [row["image"] for row in csv.DictReader(f)]
    swapped = names[:6]  # each of these files now holds the next one's bytes
    data = [(new / n).read_bytes() for n in swapped]
    for n, b in zip(swapped, data[1:] + data[:1]):
        (new / n).write_bytes(b)
    args = ("audits/factors", f"--invariance-data-dir={new}", f"--invariance-embeddings={shards}")
    ran, doc = _run(suite, *args, "-n", "2")
    ran.assert_outcomes(errors=1)
    out = ran.stdout.str()
    assert out.count("are not the images the shards were made from") == 1, out
    ran.stdout.fnmatch_lines([f"*: 6 of 160 images of *labels.csv are not the images the shards were made from (their "
                              f"file bytes differ, e.g. '{swapped[0]}'*); re-run pytest-invariance extract on this "
                              "data, or pass --invariance-embeddings-unverified to join on ids alone"])
    ran, doc = _run(suite, *args, "--invariance-embeddings-unverified")
    src = doc["run"]["embeddings_source"]
    assert src["verified"] is False and src["images_differ"] == 6 and src["unrecorded"] == []
    ran, doc = _run(suite, "audits/factors", f"--invariance-data-dir={faces[0]}", f"--invariance-embeddings={shards}")
    assert doc["run"]["embeddings_source"]["verified"] is True and doc["run"]["embeddings_source"]["images_differ"] == 0


def test_image_digests_are_the_file_bytes_and_old_shards_without_them_are_not_verified(tmp_path):
    import hashlib

    import pandas as pd

    from pytest_invariance.data.folder import FileImageSet
    from pytest_invariance.embeddings._parquet import image_digests

    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(bytes([i]) * 50)
    images = FileImageSet(files, pd.DataFrame({"image": [f.name for f in files]}), size=None, fingerprint="a")
    want = [hashlib.blake2b(f.read_bytes(), digest_size=16).hexdigest() for f in files]
    assert image_digests(images) == want
    X = np.eye(3, dtype=np.float32)
    write_shard(tmp_path / "new" / "a.parquet", [f.name for f in files], {"emb": X}, _meta(pre={"size": [2, 2]}),
                want)
    ParquetEmbeddings(tmp_path / "new").check_images(images)  # the same bytes: accepted
    upper = [want[0].upper(), *want[1:]]  # hex in capitals is the same digest
    write_shard(tmp_path / "upper" / "a.parquet", [f.name for f in files], {"emb": X}, _meta(pre={"size": [2, 2]}),
                upper)
    ParquetEmbeddings(tmp_path / "upper").check_images(images)
    write_shard(tmp_path / "blank" / "a.parquet", [f.name for f in files], {"emb": X}, _meta(pre={"size": [2, 2]}),
                [want[0], None, want[2]])  # an empty cell records nothing: not "the bytes differ"
    with pytest.raises(InvalidParameterError, match=r"1 of 3 rows record no image_digest \(an empty cell, e\.g\. "
                                                    r"'1\.png'\).*pass --invariance-embeddings-unverified"):
        ParquetEmbeddings(tmp_path / "blank").check_images(images)
    blank = ParquetEmbeddings(tmp_path / "blank")
    blank.check_images(images, unverified=True)
    assert blank.images_differ == 0 and blank.describe(True)["verified"] is False
    assert blank.describe(True)["images_without_digest"] == 1
    # With --invariance-embeddings-unverified, a process that compared no rows (the xdist
    # controller: its workers join) cannot say the images matched.
    src = ParquetEmbeddings(tmp_path / "new")
    assert (src.describe(True)["images_differ"], src.describe(True)["verified"]) == (None, False)
    src.check_images(images, unverified=True)
    assert (src.describe(True)["images_differ"], src.describe(True)["verified"]) == (0, True)
    files[1].write_bytes(b"other")
    moved = FileImageSet(files, images.labels, size=None, fingerprint="b")
    with pytest.raises(InvalidParameterError, match=r"1 of 3 images are not the images the shards were made from .*"
                                                    r"e\.g\. '1\.png'.*pass --invariance-embeddings-unverified"):
        ParquetEmbeddings(tmp_path / "new").check_images(moved)
    write_shard(tmp_path / "old" / "a.parquet", [f.name for f in files], {"emb": X}, _meta(pre={"size": [2, 2]}))
    old = ParquetEmbeddings(tmp_path / "old")  # written before shards recorded their images
    assert old.meta.unrecorded == ("image_digest",) and old.describe()["verified"] is False
    with pytest.raises(InvalidParameterError, match=r"do not record image_digest \(column image_digest\).*"
                                                    r"re-extract with pytest-invariance extract"):
        old.check_provenance(unverified=False, layers_named=False)
    old.check_provenance(unverified=True, layers_named=False)
