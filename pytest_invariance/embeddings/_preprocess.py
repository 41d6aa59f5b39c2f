"""Preprocessing declared per suite (or by option) and recorded in the results."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidParameterError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Preprocess:
    """How a batch of [0, 1] images becomes model input.

    Order: resize to ``size`` -> convert to ``channels`` -> ``channel_order`` (``bgr``
    reverses RGB, as OpenCV/Caffe-trained models expect) -> ``x * scale`` ->
    ``(x - mean) / std`` per channel (in the model's channel order) -> optional
    per-image ``prewhiten`` (zero mean, unit std per image, std floored at
    1/sqrt(pixels) as FaceNet does).

    Examples
    --------
    >>> Preprocess(size=(160, 160), channels=3, prewhiten=True).key()[:40]
    '{"channels": 3, "mean": [0.0], "prewhite'
    """

    size: tuple[int, int] | None = None
    channels: int | None = None
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    prewhiten: bool = False
    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        if self.channels not in (None, 1, 3):
            raise InvalidParameterError(f"preprocess channels must be 1 or 3; got {self.channels!r}")
        if self.channel_order not in ("rgb", "bgr"):
            raise InvalidParameterError(f"preprocess channel_order must be rgb or bgr; got {self.channel_order!r}")
        if any(s == 0 for s in self.std):
            raise InvalidParameterError("preprocess std must not contain 0")
        for key in ("mean", "std"):
            self._check_count(key, len(getattr(self, key)), self.channels)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.size is not None:
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    @staticmethod
    def _check_count(key: str, given: int, channels: int | None) -> None:
        """One value for every channel, or one per channel: never cycled or cut to fit."""
        if channels is not None and given not in (1, channels):
            raise InvalidParameterError(
                f"--invariance-preprocess {key}= has {given} values for a {channels}-channel input; give 1 value "
                f"(every channel) or {channels} (one per channel, in the model's channel order)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for the header: only what differs from feeding [0, 1] pixels unchanged."""
        d = self.to_dict()
        parts = [f"size={'x'.join(map(str, d['size']))}"] if d["size"] else []
        if d["channels"]:
            parts.append(f"channels={d['channels']}")
        for key, default in (("channel_order", "rgb"), ("scale", 1.0), ("mean", (0.0,)), ("std", (1.0,)),
                             ("prewhiten", False)):
            if d[key] != default:
                v = d[key]
                parts.append(f"{key}={','.join(f'{x:g}' for x in v) if isinstance(v, tuple) else v}")
        return " ".join(parts) or "none (pixels in [0, 1] as the suite feeds them)"

    def key(self) -> str:
        import json

        return json.dumps(self.to_dict(), sort_keys=True)

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch
        from torch.nn import functional as F

        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if self.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif self.channels == 1 and x.shape[1] == 3:
            # ITU-R 601 luma, the usual grey conversion
            x = (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)[:, None, None]).sum(1, keepdim=True)
        if self.channel_order == "bgr" and x.shape[1] == 3:
            x = x.flip(1)
        if self.scale != 1.0:
            x = x * self.scale
        if self.mean != (0.0,) or self.std != (1.0,):
            c = x.shape[1]
            self._check_count("mean", len(self.mean), c)
            self._check_count("std", len(self.std), c)
            mean = torch.tensor(self.mean if len(self.mean) == c else self.mean * c, dtype=x.dtype, device=x.device)
            std = torch.tensor(self.std if len(self.std) == c else self.std * c, dtype=x.dtype, device=x.device)
            x = (x - mean[:c, None, None]) / std[:c, None, None]
        if self.prewhiten:
            flat = x.reshape(len(x), -1)
            mu = flat.mean(1, keepdim=True)
            sd = flat.std(1, keepdim=True, unbiased=False).clamp_min(1.0 / flat.shape[1] ** 0.5)
            x = ((flat - mu) / sd).reshape(x.shape)
        return x.contiguous()


_PREPROCESS_KEYS = ("size", "scale", "mean", "std", "channels", "channel_order", "prewhiten")


def parse_preprocess_item(text: str) -> tuple[str, Any]:
    """``'size=224x224'`` -> ``('size', (224, 224))``; raises ValueError with a one-line reason.

    Examples
    --------
    >>> parse_preprocess_item("mean=0.485,0.456,0.406")
    ('mean', (0.485, 0.456, 0.406))
    """
    key, sep, raw = text.partition("=")
    key, raw = key.strip().lower().replace("-", "_"), raw.strip()
    if not sep or key not in _PREPROCESS_KEYS or not raw:
        raise ValueError(f"{text!r} is not KEY=VALUE with KEY one of {', '.join(_PREPROCESS_KEYS)}")
    try:
        if key == "size":
            dims = [int(v) for v in raw.lower().replace("x", ",").split(",")]
            if len(dims) not in (1, 2) or min(dims) < 1:
                raise ValueError
            return key, (dims[0], dims[-1])
        if key in ("mean", "std"):
            return key, tuple(float(v) for v in raw.split(","))
        if key == "scale":
            return key, float(raw)
        if key == "channels":
            if raw not in ("1", "3"):
                raise ValueError
            return key, int(raw)
        if key == "channel_order":
            if raw.lower() not in ("rgb", "bgr"):
                raise ValueError
            return key, raw.lower()
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError
        return key, raw.lower() in ("true", "1", "yes", "on")
    except ValueError:
        raise ValueError(f"{text!r}: {raw!r} is not a valid {key} "
                         f"(e.g. size=224x224, mean=0.5,0.5,0.5, channel_order=bgr, prewhiten=true)") from None
