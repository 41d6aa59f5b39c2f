"""Print the MLP, control-task and LEACE figures of the rotated-MNIST suite for one bundled model (docs/probes.md)."""
import sys, time
from pathlib import Path
import numpy as np
from pytest_invariance._audit import Audit
from pytest_invariance.checks import Suite
from pytest_invariance.settings import Settings
from pytest_invariance.probes import LinearRegressionProbe, MAVProbe
from pytest_invariance.studies.mnist_rotation import Protocol
from pytest_invariance.studies.erasure import ProbeExtras, mnist_extras, mnist_erasure, _mnist_data
root = Path.cwd()
audit = Audit(Settings(rootdir=str(root), device="cpu", progress="off"))
suite = Suite.find(root / "audits/mnist_rotation")
name = sys.argv[1] if len(sys.argv) > 1 else "lenet"
protocol = Protocol.from_config(suite.section("protocol"))
ref = audit.model(suite, name)
t = time.time(); d = _mnist_data(audit, ref, protocol); print("embed", round(time.time() - t, 1), flush=True)
t = time.time()
before = {"angle_mae": LinearRegressionProbe(per_class=True, n_permutations=0).fit(d["Xtr"], d["atr"], classes=d["ytr"]).evaluate(d["Xte"], d["ate"], classes=d["yte"])["mae"],
          "mav_accuracy": MAVProbe().fit(d["Xtr"], d["ytr"]).evaluate(d["Xte"], d["yte"])["accuracy"]}
print("linear+mav", round(time.time() - t, 1), flush=True)
cfg = ProbeExtras()
t = time.time(); ex = mnist_extras(audit, ref, protocol, cfg); print("extras", round(time.time() - t, 1), flush=True)
t = time.time(); er = mnist_erasure(audit, ref, protocol, cfg, {**before, **ex}); print("erasure", round(time.time() - t, 1), flush=True)
for k, e in {**before, **ex, **{k: v for k, v in er.items() if k != "plots"}}.items():
    print(f"{k:32s} {e.value:8.3f} [{e.ci_low:8.3f}, {e.ci_high:8.3f}] chance {e.chance}  {e.details.get('best_epoch', '')}")
Path(f"reports/{name}_erasure.svg").write_text(er["plots"]["erasure_bars"].get("svg", ""))
print(er["plots"]["erasure_table"]["rows"])
