"""LeNet, mu-LeNet and PAIR-LeNet of the paper's section 4, and how to train them.

Layer names follow Caffe's ``lenet_train_test.prototxt`` so that a layer named in the
paper is the layer hooked here and the output exported to ONNX:

===========  ======================================================================
name         what a torch forward hook on it returns
===========  ======================================================================
``conv1``    20x24x24 convolution output (before pooling)
``conv2``    50x8x8 convolution output (before pooling)
``ip1``      **post-ReLU** 500-d features: Caffe's ReLU is in place on the ``ip1``
             blob, so the paper's "ip1 features" are after the ReLU. ``ip1`` is
             therefore ``Sequential(fc, relu)``; hook ``ip1.fc`` for pre-ReLU values.
``ip2``      10 logits (softmax lives in the loss); absent in :class:`MuLeNet`
===========  ======================================================================

Images enter as ``float32[N, 1, 28, 28]`` = uint8 / 256 (Caffe's ``scale: 0.00390625``).
Training uses Caffe's ``lenet_solver.prototxt`` (SGD, lr 0.01, momentum 0.9, weight
decay 5e-4, ``inv`` policy gamma 1e-4 power 0.75, bias lr x2, xavier init) unless told
otherwise (``SolverConfig.optimizer="adam"``: Adam, Kingma & Ba 2015, under the same
``inv`` decay); the batch size is a parameter (Caffe: 64).

:func:`train_group_lenet` is the extension the paper proposes at the end of section 5:
groups of several images of one class pulled toward their group mean.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from numpy.typing import NDArray

PIXEL_SCALE = 1 / 256
#: Weights of PAIR-LeNet's Euclidean losses per layer (see :class:`PairLeNet`).
PAIR_WEIGHTS: dict[str, float] = {"conv1": 0.1, "conv2": 0.1, "ip1": 0.1, "ip2": 0.1}


def _xavier_(module: nn.Module) -> None:
    # Caffe's "xavier" filler: U(-a, a), a = sqrt(3 / fan_in); biases constant 0.
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            bound = (3.0 / fan_in) ** 0.5
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


class LeNet(nn.Module):
    """Caffe's MNIST LeNet: conv1 20@5x5, pool, conv2 50@5x5, pool, ip1 500 + ReLU, ip2 10.

    ``forward`` returns ``(ip1, logits)`` with ``ip1`` post-ReLU, the order of the ONNX
    outputs. :meth:`activations` returns every named blob.

    Examples
    --------
    >>> net = LeNet()
    >>> feats, logits = net(torch.zeros(2, 1, 28, 28))
    >>> tuple(feats.shape), tuple(logits.shape)
    ((2, 500), (2, 10))
    """

    has_classifier = True

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.ip1 = nn.Sequential(OrderedDict(fc=nn.Linear(800, 500), relu=nn.ReLU()))
        if self.has_classifier:
            self.ip2 = nn.Linear(500, 10)
        _xavier_(self)

    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All named blobs: ``conv1``, ``conv2``, ``ip1`` (post-ReLU) and ``ip2`` if present."""
        c1 = self.conv1(x)
        c2 = self.conv2(self.pool1(c1))
        f = self.ip1(self.pool2(c2).flatten(1))
        out = {"conv1": c1, "conv2": c2, "ip1": f}
        if self.has_classifier:
            out["ip2"] = self.ip2(f)
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = self.activations(x)
        return (a["ip1"], a["ip2"]) if self.has_classifier else (a["ip1"],)


class MuLeNet(LeNet):
    """mu-LeNet (section 4.2.1): the LeNet trunk up to ``ip1``, regressed onto class MAVs.

    It has no ``ip2``: the paper trains it with the Euclidean loss at ``ip1`` alone and
    evaluates it only by cosine similarity to the MAVs, so a softmax head would be
    untrained. ``forward`` returns ``(ip1,)``.
    """

    has_classifier = False


class PairLeNet(LeNet):
    """PAIR-LeNet (section 4.2.2): LeNet trained on image pairs with shared weights.

    Loss = softmax loss on the first image + sum over ``conv1, conv2, ip1, ip2`` of
    ``PAIR_WEIGHTS[layer] * 0.5 * mean((a - b)**2)``. The squared difference is averaged
    over elements (not summed, as Caffe's EuclideanLoss does) so that the 11,520-element
    conv1 map does not outweigh the 10 logits by three orders of magnitude; with equal
    weights of 0.1 each term starts near the softmax loss's scale.
    """


# ----------------------------------------------------------------------------- data


@dataclass
class ImageArrays:
    """uint8 images ``[N, 1, 28, 28]`` and int64 labels as torch tensors (no float copy)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float().mul_(PIXEL_SCALE), self.labels[index]


def rotate_uint8(images: "NDArray[np.uint8]", levels: tuple[float, ...], chunk: int = 10_000) -> "NDArray[np.uint8]":
    """Every image at every rotation level, level-major, rounded back to uint8.

    Uses :meth:`PerturbationSpec.apply` (the evaluation's own rotation); rounding to the
    1/256 grid changes a pixel by at most 0.5/256 and keeps 350,000 images at 275 MB.

    Parameters
    ----------
    images : uint8[N, 28, 28]
    levels : angles in degrees

    Returns
    -------
    uint8[len(levels) * N, 28, 28]
    """
    from ..data.perturbations import PerturbationSpec

    spec = PerturbationSpec("rotation", levels)
    out = np.empty((len(spec.levels) * len(images),) + images.shape[1:], np.uint8)
    for k, level in enumerate(spec.levels):
        for s in range(0, len(images), chunk):
            x = torch.from_numpy(images[s : s + chunk, None].astype(np.float32) * PIXEL_SCALE)
            r = spec.apply(x, level)[:, 0].mul_(256).round_().clamp_(0, 255)
            out[k * len(images) + s : k * len(images) + s + len(x)] = r.to(torch.uint8).numpy()
    return out


@torch.no_grad()
def predict(model: LeNet, data: ImageArrays, batch_size: int = 1000) -> dict[str, "NDArray[np.float32]"]:
    """``ip1`` (post-ReLU) and, if the model has one, ``logits`` for every image."""
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {"ip1": [], "logits": []}
    for s in range(0, len(data), batch_size):
        x, _ = data.batch(torch.arange(s, min(s + batch_size, len(data))))
        for name, t in zip(("ip1", "logits"), model(x)):
            outs[name].append(t)
    return {k: torch.cat(v).numpy() for k, v in outs.items() if v}


def class_means(features: "NDArray[np.float32]", labels: "NDArray[np.int64]", n_classes: int = 10) -> "NDArray[np.float64]":
    """Mean activation vector (MAV) per class, ``[n_classes, D]``."""
    return np.stack([features[labels == c].mean(0, dtype=np.float64) for c in range(n_classes)])


def mav_cosine_accuracy(features: "NDArray[np.float32]", labels: "NDArray[np.int64]", mavs: "NDArray[np.float64]") -> float:
    """Fraction of samples whose most cosine-similar MAV is their own class's."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    m = mavs / np.maximum(np.linalg.norm(mavs, axis=1, keepdims=True), 1e-12)
    return float(np.mean((f @ m.T).argmax(1) == labels))


# ----------------------------------------------------------------------------- training


@dataclass
class SolverConfig:
    """Caffe ``lenet_solver.prototxt`` defaults plus the stopping rule."""

    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 1e-4
    power: float = 0.75
    batch_size: int = 64
    max_epochs: float = 3.0
    evals_per_epoch: int = 2
    patience: int = 2  # validation rounds without improvement before stopping
    seed: int = 0
    optimizer: str = "sgd"  # "sgd" (Caffe's solver) or "adam"
    max_seconds: float | None = None  # wall-clock cap: stop at the first step past it, keep the best


@dataclass
class TrainResult:
    """The best model (by validation metric) and how it got there."""

    model: LeNet
    metric: str
    best_value: float
    best_iteration: int
    iterations: int
    epochs: float
    wall_s: float
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    #: why training ended: "patience", "max_epochs" or "max_seconds"
    stop_reason: str = "max_epochs"


def make_optimizer(model: nn.Module, cfg: SolverConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimizer under Caffe's ``inv`` learning-rate policy.

    ``cfg.optimizer == "sgd"``: SGD with momentum, weight decay and Caffe's bias
    ``lr_mult: 2``. ``"adam"``: Adam at ``base_lr`` with ``weight_decay`` as L2 and
    ``momentum`` unused (Adam's step size does not depend on the gradient's scale, so
    no per-group multiplier). Raises ``ValueError`` for any other name.
    """
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=cfg.base_lr,
                                                      weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        opt = torch.optim.SGD(
            [{"params": weights, "lr": cfg.base_lr}, {"params": biases, "lr": 2 * cfg.base_lr}],
            lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        )
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', not {cfg.optimizer!r}")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: (1 + cfg.gamma * it) ** (-cfg.power))
    return opt, sched


def fit(model: LeNet, n_train: int, loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
        evaluate: Callable[[LeNet], float], cfg: SolverConfig, metric: str,
        log: Callable[[str], None] = print,
        order_fn: Callable[[torch.Generator], torch.Tensor] | None = None) -> TrainResult:
    """Generic seeded training loop with early stopping on a higher-is-better validation metric.

    ``loss_fn(index, generator)`` returns the mean loss of the training items ``index``;
    the generator is the run's only source of randomness (order, pairing).
    ``order_fn(generator)`` gives one epoch's item order (default: a random permutation of
    ``n_train``); batches are consecutive ``cfg.batch_size`` slices of it.

    The metric is evaluated ``cfg.evals_per_epoch`` times per epoch, at the last step and
    at the first step past ``cfg.max_seconds``. Training ends after ``cfg.patience``
    evaluations without a strict improvement, at ``cfg.max_epochs`` or at the time cap,
    whichever comes first; the model is returned with the best evaluation's weights.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt, sched = make_optimizer(model, cfg)
    per_epoch = n_train // cfg.batch_size
    if per_epoch < 1:
        raise ValueError(f"{n_train} training items do not fill one batch of {cfg.batch_size}")
    total = int(round(cfg.max_epochs * per_epoch))
    eval_every = max(1, per_epoch // cfg.evals_per_epoch)
    best, best_it, bad, it, history = -np.inf, 0, 0, 0, []
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    reason = ""
    while not reason:
        order = order_fn(gen) if order_fn is not None else torch.randperm(n_train, generator=gen)
        for b in range(len(order) // cfg.batch_size):
            model.train()
            loss = loss_fn(order[b * cfg.batch_size : (b + 1) * cfg.batch_size], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            it += 1
            over_time = cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds
            if it % eval_every == 0 or it >= total or over_time:
                value = evaluate(model)
                history.append({"iteration": it, "epoch": it / per_epoch, "loss": loss.item(), metric: value,
                                "lr": opt.param_groups[0]["lr"], "wall_s": time.perf_counter() - t0})
                log(f"  it {it:6d} ep {it / per_epoch:5.2f} loss {loss.item():.4f} {metric} {value:.4f} "
                    f"({time.perf_counter() - t0:.0f}s)")
                if value > best:
                    best, best_it, bad = value, it, 0
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
                else:
                    bad += 1
                    reason = "patience" if bad >= cfg.patience else ""
            if not reason and it >= total:
                reason = "max_epochs"
            if not reason and over_time:
                reason = "max_seconds"
            if reason:
                break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, metric, float(best), best_it, it, it / per_epoch, time.perf_counter() - t0,
                       reason == "patience", history, reason)


def train_lenet(train: ImageArrays, val: ImageArrays, cfg: SolverConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train :class:`LeNet` with softmax loss; keep the best rotated-validation accuracy.

    Parameters
    ----------
    train, val : ImageArrays
        The rotated training and validation sets.
    cfg : SolverConfig

    Returns
    -------
    TrainResult
    """
    torch.manual_seed(cfg.seed)
    model = LeNet()

    def loss_fn(index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x, y = train.batch(index)
        return F.cross_entropy(model(x)[1], y)

    def evaluate(m: LeNet) -> float:
        return float(np.mean(predict(m, val)["logits"].argmax(1) == val.labels.numpy()))

    return fit(model, len(train), loss_fn, evaluate, cfg, "val_softmax_acc", log)


def normalized_targets(mavs: "NDArray[np.float64]") -> "NDArray[np.float32]":
    """Min-max normalise the MAV matrix to [0, 1] with one global min and max.

    A global (not per-dimension) rescaling keeps the MAVs' relative geometry; per
    dimension would blow up near-constant dimensions into full-range noise targets.
    """
    lo, hi = float(mavs.min()), float(mavs.max())
    return ((mavs - lo) / (hi - lo)).astype(np.float32)


def train_mu_lenet(train: ImageArrays, val: ImageArrays, targets: "NDArray[np.float32]", cfg: SolverConfig,
                   log: Callable[[str], None] = print) -> TrainResult:
    """Train :class:`MuLeNet`: Euclidean loss between ``ip1`` and its class's target MAV.

    The loss is Caffe's EuclideanLoss, ``sum((ip1 - target)**2) / (2 N)``. Validation
    metric: MAV-cosine accuracy of the rotated validation set against ``targets``.
    """
    torch.manual_seed(cfg.seed)
    model = MuLeNet()
    t = torch.from_numpy(targets)

    def loss_fn(index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x, y = train.batch(index)
        return 0.5 * (model(x)[0] - t[y]).pow(2).sum(1).mean()

    def evaluate(m: LeNet) -> float:
        return mav_cosine_accuracy(predict(m, val)["ip1"], val.labels.numpy(), targets)

    return fit(model, len(train), loss_fn, evaluate, cfg, "val_mav_cos_acc", log)


def pair_loss(model: LeNet, xa: torch.Tensor, xb: torch.Tensor, ya: torch.Tensor,
              weights: dict[str, float] = PAIR_WEIGHTS) -> torch.Tensor:
    """Softmax loss on ``xa`` plus weighted per-layer Euclidean losses between the pair."""
    # One forward over the stacked pair: same weights, half the per-call overhead.
    acts = model.activations(torch.cat([xa, xb]))
    n = len(xa)
    loss = F.cross_entropy(acts["ip2"][:n], ya)
    for name, w in weights.items():
        loss = loss + w * 0.5 * (acts[name][:n] - acts[name][n:]).pow(2).mean()
    return loss


def train_pair_lenet(train: ImageArrays, val: ImageArrays, cfg: SolverConfig,
                     log: Callable[[str], None] = print) -> TrainResult:
    """Train :class:`PairLeNet` on same-class pairs under independent random rotations.

    Each training item (one image at one of the 7 angles) is paired, per step, with an
    item drawn uniformly from the same class (any image, any angle), so the pair
    differs in rotation and in writer. Validation metric: rotated-val softmax accuracy.
    """
    torch.manual_seed(cfg.seed)
    model = PairLeNet()
    by_class = [torch.nonzero(train.labels == c).flatten() for c in range(10)]

    def partners(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        out = torch.empty_like(y)
        for c in y.unique().tolist():
            sel = y == c
            pool = by_class[c]
            out[sel] = pool[torch.randint(len(pool), (int(sel.sum()),), generator=gen)]
        return out

    def loss_fn(index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xa, ya = train.batch(index)
        xb, _ = train.batch(partners(ya, gen))
        return pair_loss(model, xa, xb, ya)

    def evaluate(m: LeNet) -> float:
        return float(np.mean(predict(m, val)["logits"].argmax(1) == val.labels.numpy()))

    return fit(model, len(train), loss_fn, evaluate, cfg, "val_softmax_acc", log)


def group_loss(model: LeNet, x: torch.Tensor, y: torch.Tensor, group_size: int,
               weights: dict[str, float] = PAIR_WEIGHTS) -> torch.Tensor:
    """Softmax loss on every image plus each layer's within-group variance.

    ``x`` holds ``len(x) // group_size`` consecutive groups of ``group_size`` images,
    each group of one class. Per layer and group, the term is the unbiased variance of
    the activations around the group mean, averaged over elements:
    ``sum_i mean((a_i - m)**2) / (K - 1)``. It equals the mean of
    ``0.5 * mean((a_i - a_j)**2)`` over the group's ordered pairs ``i != j``, so for
    ``K = 2`` it is PAIR-LeNet's Euclidean term (:func:`pair_loss`) on that pair, and for
    every ``K`` its expectation is the same (the per-element class variance). Terms are
    averaged over groups and weighted by ``weights``. Paper, section 5: "use several
    images of one class ... and try to reduce batch-wise distances".

    Parameters
    ----------
    x : float32[G * K, 1, 28, 28]
    y : int64[G * K], constant within each group
    group_size : K >= 2
    """
    k = group_size
    if k < 2 or len(x) % k:
        raise ValueError(f"group_size must be >= 2 and divide the batch ({len(x)}), not {k}")
    acts = model.activations(x)
    loss = F.cross_entropy(acts["ip2"], y)
    for name, w in weights.items():
        a = acts[name].reshape(len(x) // k, k, -1)
        loss = loss + w * (a - a.mean(1, keepdim=True)).pow(2).sum(1).mean() / (k - 1)
    return loss


def class_groups(labels: torch.Tensor, group_size: int, gen: torch.Generator) -> torch.Tensor:
    """One epoch's order as shuffled groups of ``group_size`` same-class items.

    Each class's items are shuffled and cut into groups (the remainder, fewer than
    ``group_size`` per class, sits out this epoch); the groups are then shuffled. So every
    group is a fresh random draw from all of its class's items, as the paper asks.
    """
    groups = []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n = len(idx) // group_size * group_size
        groups.append(idx[:n].reshape(-1, group_size))
    g = torch.cat(groups)
    return g[torch.randperm(len(g), generator=gen)].flatten()


def train_group_lenet(train: ImageArrays, val: ImageArrays, cfg: SolverConfig, group_size: int,
                      log: Callable[[str], None] = print) -> TrainResult:
    """Train a :class:`PairLeNet` with :func:`group_loss` on groups of ``group_size``.

    A batch is ``cfg.batch_size // group_size`` groups (``cfg.batch_size`` must be a
    multiple of ``group_size``), each of one class, drawn by :func:`class_groups`. An
    epoch visits every item about once, so it costs one LeNet epoch (PAIR: two).
    Validation metric: rotated-val softmax accuracy.
    """
    if cfg.batch_size % group_size:
        raise ValueError(f"batch size {cfg.batch_size} is not a multiple of the group size {group_size}")
    torch.manual_seed(cfg.seed)
    model = PairLeNet()

    def loss_fn(index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x, y = train.batch(index)
        return group_loss(model, x, y, group_size)

    def evaluate(m: LeNet) -> float:
        return float(np.mean(predict(m, val)["logits"].argmax(1) == val.labels.numpy()))

    return fit(model, len(train), loss_fn, evaluate, cfg, "val_softmax_acc", log,
               order_fn=lambda gen: class_groups(train.labels, group_size, gen))
