"""A fast, embedding-conditioned feed-forward restorer (NAFNet-style), trained from scratch by ``vlmir.training``.

Papers: Chen et al., "Simple Baselines for Image Restoration" (NAFNet, ECCV 2022, https://github.com/megvii-research/NAFNet)
for the block (LayerNorm -> 1x1 -> depthwise 3x3 -> SimpleGate -> simplified channel attention -> 1x1, then a gated
FFN, each with a learned residual scale); DA-CLIP (Luo et al., ICLR 2024) for conditioning a restorer on the
degradation and content embeddings of a degradation-aware CLIP.

Deviations from DA-CLIP, chosen for CPU latency (a 512x512 image in about a second on two cores instead of 100
IR-SDE steps): a single feed-forward pass, no diffusion; the embeddings condition the network by FiLM modulation
of every block's normalised input (instead of cross-attention), and a scalar *gate* predicted from the embeddings
scales the predicted residual, ``y = x + g(e) * R(x, e)``, so a ``clear`` input can come back unchanged. The input
is pixel-unshuffled by 2 first (work at half resolution), and the output residual is pixel-shuffled back.

With ``prior=True`` the network also takes a *prior* restoration ``p`` of the same image (the embedded restorer
passes the classical baseline's output for the type the encoder predicts, :func:`classical_prior`) and predicts a
per-pixel trust mask ``m`` in (0, 1) beside the residual: ``y = x + g(e) * (m * (p - x) + R(x, p, e))``. The network
learns where the prior helps and where it must be ignored (a wrong predicted type, a method that hurts); the gate
still returns a ``clear`` input unchanged, whatever the prior did to it.

With ``gate=False`` there is no scalar gate (g = 1): ``y = x + m * (p - x) + R(x, p, e)``. The trust mask and the
residual are themselves FiLM-conditioned on the embeddings, so they can return a clean input unchanged on their
own; a scalar gate read from the embedding alone turns out to be the least robust part on photos the encoder has
not seen (it half-closes on clearly degraded images and throws away a good prior).

Example::

    >>> net = ConditionalRestorer()
    >>> x = torch.rand(1, 3, 64, 64); e = torch.randn(1, net.cond_dim)
    >>> net(x, e).shape
    torch.Size([1, 3, 64, 64])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _LayerNorm2d(nn.Module):
    """LayerNorm over channels of (B, C, H, W), as in NAFNet."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + 1e-6)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class _NAFBlock(nn.Module):
    """NAFNet block with FiLM: ``norm(x) * (1 + gamma) + beta`` before the spatial branch, (gamma, beta) from the
    conditioning vector (zero-initialised, so an untrained condition leaves the block a plain NAFNet block)."""

    def __init__(self, channels: int, cond_hidden: int) -> None:
        super().__init__()
        c, dw = channels, channels * 2
        self.norm1 = _LayerNorm2d(c)
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.sca = nn.Conv2d(dw // 2, dw // 2, 1)  # simplified channel attention on the global average
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.norm2 = _LayerNorm2d(c)
        self.conv4 = nn.Conv2d(c, dw, 1)
        self.conv5 = nn.Conv2d(dw // 2, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.film = nn.Linear(cond_hidden, 2 * c)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(h)[..., None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        y = self.norm1(x) * (1 + scale) + shift
        y = self.conv2(self.conv1(y))
        a, b = y.chunk(2, dim=1)
        y = a * b  # SimpleGate
        y = y * self.sca(y.mean((2, 3), keepdim=True))
        x = x + self.conv3(y) * self.beta
        a, b = self.conv4(self.norm2(x)).chunk(2, dim=1)
        return x + self.conv5(a * b) * self.gamma


class ConditionalRestorer(nn.Module):
    """U-shaped NAFNet over a half-resolution (pixel-unshuffled) input, FiLM-conditioned, gated residual output.

    Args:
        width: channels at the first level; doubled at each lower level. Default 24.
        enc_blocks: NAF blocks per encoder level (its length is the number of downsamplings). Default ``(1, 1)``.
        middle_blocks: NAF blocks at the lowest level. Default 2.
        dec_blocks: NAF blocks per decoder level, same length as ``enc_blocks``. Default ``(1, 1)``.
        cond_dim: size of the conditioning vector (the encoder's normalised content and degradation embeddings,
            concatenated: 2 x 128). Default 256.
        cond_hidden: hidden size of the conditioning MLP. Default 128.
        gate_init: initial value of the residual gate (before training). Default 0.5.
        gate: predict the scalar gate g(e); ``False``: g = 1 (module docstring). Default True.
        prior: take a prior restoration as a second input and predict a trust mask for it (module docstring).
            Default False.

    ``forward(x, cond, prior=None)`` takes ``x`` (B, 3, H, W) in [0, 1] with H, W multiples of :attr:`multiple`,
    ``cond`` (B, cond_dim) and, when built with ``prior=True``, ``prior`` (B, 3, H, W); it returns the restored
    image (B, 3, H, W) (not clamped while training; callers clamp).
    """

    def __init__(
        self,
        *,
        width: int = 24,
        enc_blocks: Sequence[int] = (1, 1),
        middle_blocks: int = 2,
        dec_blocks: Sequence[int] = (1, 1),
        cond_dim: int = 256,
        cond_hidden: int = 128,
        gate_init: float = 0.5,
        prior: bool = False,
        gate: bool = True,
    ) -> None:
        super().__init__()
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError(f"enc_blocks {list(enc_blocks)} and dec_blocks {list(dec_blocks)} must have the same length")
        if width < 4 or width % 2:
            raise ValueError(f"width must be an even number >= 4, got {width}")
        if not 0.0 < gate_init < 1.0:
            raise ValueError(f"gate_init must be in (0, 1), got {gate_init}")
        self.config = dict(
            width=width,
            enc_blocks=list(enc_blocks),
            middle_blocks=middle_blocks,
            dec_blocks=list(dec_blocks),
            cond_dim=cond_dim,
            cond_hidden=cond_hidden,
            gate_init=gate_init,
            prior=bool(prior),
            gate=bool(gate),
        )
        self.cond_dim = cond_dim
        self.prior = bool(prior)
        self.multiple = 2 * 2 ** len(enc_blocks)
        self.cond = nn.Sequential(nn.Linear(cond_dim, cond_hidden), nn.GELU(), nn.Linear(cond_hidden, cond_hidden), nn.GELU())
        self.gate = nn.Linear(cond_hidden, 1) if gate else None  # None: g = 1
        if self.gate is not None:
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, float(torch.logit(torch.tensor(gate_init))))
        self.intro = nn.Conv2d(24 if self.prior else 12, width, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        c = width
        for n in enc_blocks:
            self.encoders.append(nn.ModuleList(_NAFBlock(c, cond_hidden) for _ in range(n)))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = nn.ModuleList(_NAFBlock(c, cond_hidden) for _ in range(middle_blocks))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for n in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.ModuleList(_NAFBlock(c, cond_hidden) for _ in range(n)))
        self.ending = nn.Conv2d(width, 16 if self.prior else 12, 3, padding=1)  # (residual, trust mask) x 4

    def gate_value(self, cond: torch.Tensor) -> torch.Tensor:
        """The residual gate g(e) in (0, 1), shape (B,) (ones for a network built with ``gate=False``)."""
        return self._gate(self.cond(cond)).squeeze(-1)

    def _gate(self, h: torch.Tensor) -> torch.Tensor:
        """g (B, 1) from the conditioning MLP's output ``h`` (B, cond_hidden)."""
        return torch.sigmoid(self.gate(h)) if self.gate is not None else h.new_ones(h.shape[0], 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, prior: torch.Tensor | None = None,
                return_gate: bool = False):
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ValueError(f"expected (B, 3, H, W) with H, W multiples of {self.multiple}, got {tuple(x.shape)}")
        if cond.shape != (x.shape[0], self.cond_dim):
            raise ValueError(f"expected cond of shape ({x.shape[0]}, {self.cond_dim}), got {tuple(cond.shape)}")
        if self.prior:
            if prior is None or prior.shape != x.shape:
                got = None if prior is None else tuple(prior.shape)
                raise ValueError(f"this restorer takes a prior restoration of shape {tuple(x.shape)}, got {got}")
        elif prior is not None:
            raise ValueError("this restorer was built without prior=True and takes no prior")
        h = self.cond(cond)  # (B, cond_hidden)
        gate = self._gate(h)[..., None, None]  # (B, 1, 1, 1)
        inp = torch.cat([x, prior], dim=1) if self.prior else x
        y = self.intro(F.pixel_unshuffle(inp, 2))  # (B, width, H/2, W/2)
        skips = []
        for blocks, down in zip(self.encoders, self.downs, strict=True):
            for blk in blocks:
                y = blk(y, h)
            skips.append(y)
            y = down(y)
        for blk in self.middle:
            y = blk(y, h)
        for up, blocks, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            y = up(y) + skip
            for blk in blocks:
                y = blk(y, h)
        head = F.pixel_shuffle(self.ending(y), 2)  # (B, 3 or 4, H, W)
        residual = head[:, :3]
        if self.prior:
            residual = residual + torch.sigmoid(head[:, 3:4]) * (prior - x)  # trust mask m on the prior
        out = x + gate * residual
        return (out, gate.flatten()) if return_gate else out


def classical_prior(x: torch.Tensor, types: Sequence[str | Sequence[str] | None]) -> torch.Tensor:
    """The classical baseline's restoration of each image of ``x`` (B, 3, H, W) in [0, 1] for its type in
    ``types`` (a name, a list applied in order, or ``None`` for the image itself; the classical ``clear`` method
    is the identity too), as (B, 3, H, W)."""
    from vlmir.models.classical import restore_array

    if len(types) != x.shape[0]:
        raise ValueError(f"need one type per image: {x.shape[0]} images, {len(types)} types")
    out = []
    arr = x.detach().float().clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    for img, t in zip(arr, types, strict=True):
        out.append(torch.from_numpy(restore_array(img, t).astype("float32", copy=False) if t else img.copy()))
    return torch.stack(out).permute(0, 3, 1, 2).to(x.device, x.dtype)
