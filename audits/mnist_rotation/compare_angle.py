"""How well a linear probe reads the rotation angle from two models' ip1, side by side.

Answers the paper's section 5 question for ``group_lenet`` (the PAIR extension) against
``pair_lenet``: does pulling groups of one class toward their mean lower the angle's
predictability more than pulling pairs together? Per model, on the rotated test set
(10,000 images x 7 angles):

* ``angle_mae``: mean absolute error (degrees) of one least-squares regressor per digit
  (paper section 4.1, Fig. 3; ``LinearRegressionProbe(per_class=True)``); chance = the
  error of predicting each class's training mean angle;
* ``angle_acc``: accuracy of one 7-way linear classifier of the angle, scikit-learn's
  ``LinearDiscriminantAnalysis`` with Ledoit-Wolf shrinkage (closed form: seconds where
  lbfgs logistic regression took minutes per model here); all angles are equally
  frequent, so accuracy equals balanced accuracy; chance 1/7.

Both probes are fitted on the first ``--train-images`` training images at all 7 angles.
CIs: 95 % percentile bootstrap over test items, 1,000 resamples; the difference between
the two models is bootstrapped on the same resampled items (paired), so it is tighter
than the two separate CIs suggest.

Usage::

    python audits/mnist_rotation/compare_angle.py [--models pair_lenet,group_lenet]
           [--train-images 50000] [--threads 2] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pytest_invariance.probes import LinearRegressionProbe
from pytest_invariance.probes.stats import bootstrap_ci

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import train  # noqa: E402  (this folder's train.py: the same rotated data and ONNX runner)


def angles_of(data_len: int) -> np.ndarray:
    """Angle of each rotated item: level-major, as ``train.rotated`` builds them."""
    return np.repeat(np.asarray(train.ANGLES), data_len // len(train.ANGLES))


def per_item(path: Path, data: dict, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Per test item: absolute angle error (deg) and 0/1 angle correctness; plus chance levels."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    feats = {s: train.onnx_outputs(path, data[s])["ip1"].astype(np.float64) for s in ("train", "test")}
    ang = {s: angles_of(len(data[s])) for s in feats}
    digit = {s: data[s].labels.numpy() for s in feats}
    reg = LinearRegressionProbe(per_class=True, n_bootstrap=0, n_permutations=0).fit(
        feats["train"], ang["train"], classes=digit["train"])
    err = np.abs(reg.predict(feats["test"], classes=digit["test"]) - ang["test"])
    means = {c: ang["train"][digit["train"] == c].mean() for c in np.unique(digit["train"])}
    chance_err = np.abs(np.vectorize(means.get)(digit["test"]) - ang["test"])
    clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(feats["train"], ang["train"])
    hit = (clf.predict(feats["test"]) == ang["test"]).astype(np.float64)
    return {"angle_mae": err, "angle_acc": hit, "angle_mae_chance": chance_err}


def figure(values: np.ndarray, seed: int) -> dict[str, float]:
    lo, hi, _ = bootstrap_ci(values, n_bootstrap=1000, random_state=seed)
    return {"value": float(values.mean()), "ci_low": float(lo), "ci_high": float(hi)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="pair_lenet,group_lenet", help="two or more ONNX files in --dir, comma-separated")
    p.add_argument("--dir", type=Path, default=HERE / "models")
    p.add_argument("--train-images", type=int, default=None, help="default: all 50,000")
    p.set_defaults(val_images=None)  # train.rotated reads it; no validation split here
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.models.split(",")
    if len(names) < 2:
        p.error("--models needs at least two names to compare")
    missing = [n for n in names if not (args.dir / f"{n}.onnx").is_file()]
    if missing:
        p.error(f"no {', '.join(missing)}.onnx in {args.dir}: train it with train.py --model NAME")
    data = {s: train.rotated(s, args) for s in ("train", "test")}
    items = {n: per_item(args.dir / f"{n}.onnx", data, args) for n in names}
    out: dict[str, object] = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    for n in names:
        out[n] = {"angle_mae": figure(items[n]["angle_mae"], args.seed),
                  "angle_mae_chance": float(items[n]["angle_mae_chance"].mean()),
                  "angle_acc": figure(items[n]["angle_acc"], args.seed), "angle_acc_chance": 1 / len(train.ANGLES)}
        print(f"{n:14s} angle MAE {out[n]['angle_mae']['value']:6.2f} deg "  # type: ignore[index]
              f"[{out[n]['angle_mae']['ci_low']:.2f}, {out[n]['angle_mae']['ci_high']:.2f}] "  # type: ignore[index]
              f"(chance {out[n]['angle_mae_chance']:.1f})   angle accuracy "  # type: ignore[index]
              f"{100 * out[n]['angle_acc']['value']:5.2f} % [{100 * out[n]['angle_acc']['ci_low']:.2f}, "  # type: ignore[index]
              f"{100 * out[n]['angle_acc']['ci_high']:.2f}] (chance {100 / len(train.ANGLES):.1f} %)")  # type: ignore[index]
    first = names[0]
    for n in names[1:]:
        diff = {m: figure(items[n][m] - items[first][m], args.seed) for m in ("angle_mae", "angle_acc")}
        out[f"{n} - {first}"] = diff
        print(f"{n} - {first}: angle MAE {diff['angle_mae']['value']:+.2f} deg "
              f"[{diff['angle_mae']['ci_low']:+.2f}, {diff['angle_mae']['ci_high']:+.2f}], angle accuracy "
              f"{100 * diff['angle_acc']['value']:+.2f} points [{100 * diff['angle_acc']['ci_low']:+.2f}, "
              f"{100 * diff['angle_acc']['ci_high']:+.2f}] (paired bootstrap; chance of the difference: 0)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
