"""A small CNN that scores how degraded an image crop looks, for the visibility rater.

The rater's head reads the degradation-aware encoder's features. Those towers were trained to tell degradation
*types* apart (DA-CLIP's contrastive loss over names), so severity reaches the head only incidentally, and for
motion blur, raindrops and cast shadows the score barely moves from mild to severe on photos the encoder never
saw. This network is trained for severity alone: on crops degraded by our engine it regresses the target
``r* = 5 - 4 c / 5`` (c the combined severity, 0 clean) and, on the same crop left clean, both scores 5 and ranks
above its degraded version by a margin that grows with c (:mod:`vlmir.training.train_severity`). One scalar for
every type, so the types share one scale from the start.

Architecture: a stride-2 4x4 stem (fine texture, noise and 8-px JPEG blocks are read before any pooling), then
stages of two 3x3 convolutions with batch norm, each halving the resolution; the mean and standard deviation of
every stage's maps over space (a multi-scale description of contrast and detail) go through an MLP to the score.
About 92 thousand parameters with the default widths; a 128 px crop costs about 18 million multiply-adds.

With ``scale=True`` the MLP also reads ``log2(side / 256)``, ``side`` the short side of the image the crop was cut
from at native resolution. Our engine sizes the spatial degradations to the image (a blur trajectory's extent, rain
streaks, drops and flakes are fractions of the short side), and a viewer judges them against the whole picture: the
same 12 px of shake is a mild blur on a 400 px image and a severe one on a 160 px image, and a crop alone cannot
tell those apart.

Example::

    >>> net = SeverityNet()
    >>> net(torch.rand(4, 3, 128, 128)).shape   # one score per crop, about 5 clean ... 1 severe
    torch.Size([4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SeverityNet"]


class SeverityNet(nn.Module):
    """Crops (B, 3, H, W) in [0, 1] -> severity scores (B,) on the rater's scale (5 clean ... 1 severe).

    Args:
        widths: channels of the stem, then of each stage (each stage halves the resolution). Default
            ``(16, 24, 32, 48)``.
        hidden: width of the MLP over the pooled statistics. Default 128.
        scale: also read the short side of the crops' image (``forward``'s ``side``). Default False.
    """

    def __init__(self, widths: Sequence[int] = (16, 24, 32, 48), hidden: int = 128, scale: bool = False) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1 or hidden < 1:
            raise ValueError(f"widths needs a stem and at least one stage of positive sizes, and hidden > 0; "
                             f"got widths={widths}, hidden={hidden}")
        self.scale = bool(scale)
        self.config = dict(widths=widths, hidden=int(hidden), scale=self.scale)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 4, stride=2, padding=1), nn.GELU())
        stages, c = [], widths[0]
        for w in widths[1:]:
            stages.append(nn.Sequential(nn.Conv2d(c, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.GELU(),
                                        nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.GELU()))
            c = w
        self.stages = nn.ModuleList(stages)
        d = 2 * sum(widths)
        # LayerNorm over the statistics, then the MLP (the side joins after the norm)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d + self.scale, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, side: torch.Tensor | float | None = None) -> torch.Tensor:
        """Scores (B,) of crops ``x`` (B, 3, H, W) in [0, 1]; a network with ``scale`` needs ``side``, the short
        side in px of the image each crop was cut from (a number or (B,))."""
        if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < 16:
            raise ValueError(f"expected crops (B, 3, H, W) with sides >= 16, got {tuple(x.shape)}")
        if self.scale:
            if side is None:
                raise ValueError("this severity network reads the image's short side: pass side")
            side = torch.as_tensor(side, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
            if (side <= 0).any():
                raise ValueError("side must be positive (px)")
        h = self.stem((x - 0.45) / 0.25)
        pooled = [h.mean((2, 3)), h.std((2, 3))]
        for stage in self.stages:
            h = stage(h)
            pooled += [h.mean((2, 3)), h.std((2, 3))]
        z = self.head[0](torch.cat(pooled, dim=1))
        if self.scale:
            z = torch.cat([z, torch.log2(side / 256.0).to(z.dtype)[:, None]], dim=1)
        return 3.0 + self.head[1:](z)[:, 0]
