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

With ``deblur_radius=R > 0`` the network also carries an isotropic linear deblurring filter
(:class:`RingFilter`, one weight per ring of radius 0..R), fitted by least squares on the network's outputs for
motion-blurred training photos (:mod:`vlmir.training.deblur`). The network itself leaves camera-shake blur nearly
as it is: a trajectory kernel of random direction and shape is not something this small a network undoes. The
embedded restorer applies ``y + w * (ring(y) - y)`` after the network, with ``w`` the encoder's probability of
``motion-blurry`` (1 or 0 when the type is given), so an image the encoder does not see as blurred is not
filtered.

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


class RingFilter(nn.Module):
    """An isotropic linear filter ``(2R+1, 2R+1)``: one weight per ring ``round(|offset|) = j``, j = 0..R (offsets
    beyond R + 0.5 px weigh 0), applied to each channel with reflected borders. Starts as the identity.

    Args:
        radius: R >= 1.
    """

    def __init__(self, radius: int) -> None:
        super().__init__()
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
            raise ValueError(f"radius must be an int >= 1, got {radius!r}")
        self.radius = radius
        ax = torch.arange(-radius, radius + 1, dtype=torch.float32)
        r = (ax[:, None] ** 2 + ax[None, :] ** 2).sqrt()
        rings = torch.stack([((r.round() == j) & (r <= radius + 0.5)).float() for j in range(radius + 1)])
        self.register_buffer("rings", rings, persistent=False)  # (R+1, k, k) indicator of each ring
        self.register_buffer("weights", torch.zeros(radius + 1))
        self.weights[0] = 1.0

    def kernel(self) -> torch.Tensor:
        """The filter (k, k), k = 2R + 1."""
        return (self.weights[:, None, None] * self.rings).sum(0)

    def _filter(self, x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """Each channel of ``x`` (B, C, H, W) filtered by each of ``kernels`` (N, k, k): (B, C, N, H, W), with
        reflected borders (replicated where a side is too short to reflect)."""
        b, c, h, w = x.shape
        r = self.radius
        xp = F.pad(x.reshape(b * c, 1, h, w), (r, r, r, r), mode="reflect" if min(h, w) > r else "replicate")
        return F.conv2d(xp, kernels[:, None].to(x.dtype)).reshape(b, c, -1, h, w)

    def ring_responses(self, x: torch.Tensor) -> torch.Tensor:
        """Each ring's response (B, C, R+1, H, W) to ``x`` (B, C, H, W): the filter is their weighted sum."""
        return self._filter(x, self.rings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._filter(x, self.kernel()[None])[:, :, 0]


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
        deblur_radius: R of the fitted deblurring :class:`RingFilter` carried as :attr:`deblur` (module
            docstring); 0 (default): none. The network's forward does not apply it.

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
        deblur_radius: int = 0,
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
            deblur_radius=int(deblur_radius),
        )
        self.cond_dim = cond_dim
        self.deblur = RingFilter(int(deblur_radius)) if deblur_radius else None
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
