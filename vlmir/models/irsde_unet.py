"""ConditionalUNet: the IR-SDE noise network conditioned on DA-CLIP embeddings.

Papers:
    Luo et al., "Image Restoration with Mean-Reverting Stochastic Differential Equations", ICML 2023 (IR-SDE).
    Luo et al., "Controlling Vision-Language Models for Multi-Task Image Restoration", ICLR 2024 (DA-CLIP), Sec. 3.3
    and Fig. 3: the degradation embedding ``e_d`` joins the time embedding through a learnable prompt, the image
    content embedding ``e_c`` enters the low-resolution levels by cross-attention.
Original code: github.com/Algolzw/daclip-uir,
    ``universal-image-restoration/config/daclip-sde/models/modules/{DenoisingUNet_arch,module_util,attention}.py``.
    This is an independent re-implementation; the module tree and parameter names are kept so that the official
    ``universal-ir.pth`` (224 keys) loads with no missing or unexpected key.

Deviations from the original (none change the numbers of the reference computation):
    - the "fast" path (default, :meth:`ConditionalUNet.set_fast`) uses ``scaled_dot_product_attention`` for the
      spatial self-attention and, because the image context is a single token, evaluates each cross-attention as
      ``to_out(to_v(context))`` (softmax over one key is 1), broadcast over all positions; :meth:`prepare_context`
      computes everything that depends only on the image (prompt embedding, cross-attention outputs) once per image
      instead of once per step. ``set_fast(False)`` selects the straightforward port (explicit attention matrices).
      The fast path also re-associates the linear attention (blocked online softmax over positions; neither v nor
      the attention output is materialised), computes the nearest-upsample + 3x3 conv as a 2x2 conv per output phase
      on the low-resolution map (16/36 of the multiply-adds), runs 1x1 convs as GEMMs and layer norms with the fused
      kernel in channels-last, and fuses FiLM. All are exact up to float summation order (tests: <= 1e-4, gradients
      too); about 1.6x less CPU time per step at 256x256 in channels-last (``benchmarks/irsde.py``).
    - no gradient-checkpointing wrapper inside the transformer block (it only matters for training memory).
    - inputs too small to reflect-pad to a multiple of ``2**len(ch_mult)`` raise ``ValueError`` (the original fails
      inside ``F.pad``).

Example::

    >>> import torch
    >>> u = ConditionalUNet(in_nc=3, out_nc=3, nf=32, ch_mult=[1, 1, 2, 2], context_dim=32)
    >>> x = torch.rand(1, 3, 40, 56); lq = torch.rand(1, 3, 40, 56)
    >>> eps = u(x, lq, 50, text_context=torch.randn(1, 32), image_context=torch.randn(1, 32))
    >>> tuple(eps.shape)
    (1, 3, 40, 56)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The original fixes the attention head width at 32 channels.
HEAD_CHANNELS = 32
CONFIG_NAME = "config.json"


def _conv(dim_in: int, dim_out: int, kernel_size: int = 3, bias: bool = False) -> nn.Conv2d:
    """'Same' convolution, no bias by default (the original ``default_conv``)."""
    return nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2, bias=bias)


def _is_cl(x: torch.Tensor) -> bool:
    """True for a channels-last (NHWC in memory) 4-D tensor with more than one channel."""
    return x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as one matrix product (exactly the same sums): on the (B, H, W, C) view for channels-last
    inputs (the result stays channels-last), else ``W @ x`` on (B, C, H*W)."""
    w = conv.weight.view(conv.out_channels, conv.in_channels)
    b, _, h, wd = x.shape
    if _is_cl(x):
        return F.linear(x.permute(0, 2, 3, 1), w, conv.bias).permute(0, 3, 1, 2)
    y = torch.matmul(w, x.reshape(b, conv.in_channels, h * wd))
    if conv.bias is not None:
        y = y + conv.bias[:, None]
    return y.view(b, conv.out_channels, h, wd)


class NearestUpConv(nn.Sequential):
    """``[Upsample(x2, nearest), Conv2d(3x3, pad 1)]`` (parameters ``1.weight``, ``1.bias``, as the original).

    Fast path (exact up to float summation order): a 3x3 conv of a nearest-upsampled map equals, for each of the
    four output phases (a, b), a 2x2 conv of the low-resolution map whose taps are sums of the 3x3 taps
    (rows: a=0 -> [w0, w1 + w2], a=1 -> [w0 + w1, w2]; the same for columns). One 2x2 conv with 4x the output
    channels on the input padded by 1 computes all phases: 16/36 of the multiply-adds, no upsampled input.
    """

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim_in, dim_out, 3, 1, 1))
        self.fast = True

    def phase_weight(self) -> torch.Tensor:
        """(4 * out, in, 2, 2) phase kernels, phase index ``2a + b`` major."""
        w = self[1].weight  # (O, I, 3, 3)
        rows = (torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2), torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2))
        ks = []
        for r in rows:  # (O, I, 2, 3)
            ks.append(torch.stack([r[..., 0], r[..., 1] + r[..., 2]], -1))  # b = 0
            ks.append(torch.stack([r[..., 0] + r[..., 1], r[..., 2]], -1))  # b = 1
        return torch.cat(ks, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return super().forward(x)
        conv = self[1]
        n, _, h, w = x.shape
        bias = None if conv.bias is None else conv.bias.repeat(4)
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), self.phase_weight(), bias)  # (B, 4 O, H + 1, W + 1)
        y = y.view(n, 2, 2, conv.out_channels, h + 1, w + 1)
        fmt = torch.channels_last if _is_cl(x) else torch.contiguous_format
        out = torch.empty((n, conv.out_channels, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=fmt)
        for a in (0, 1):
            for b in (0, 1):
                out[:, :, a::2, b::2] = y[:, a, b, :, a : a + h, b : b + w]  # phase (a, b)
        return out


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer sinusoidal embedding of the timestep: ``t (B,) -> (B, dim)`` as ``[sin(t w_k), cos(t w_k)]`` with
    ``w_k = 10000^(-k / (dim/2 - 1))``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000) / (half - 1)))
        args = t[:, None] * freqs[None, :]  # (B, half)
        return torch.cat((args.sin(), args.cos()), dim=-1)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channel axis of (B, C, H, W) with a gain ``g`` (1, C, 1, 1) and no bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        if self.fast and _is_cl(x):
            # channels-last: the channel axis is innermost, so the fused layer_norm kernel applies directly
            nhwc = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.g.view(-1), None, eps)
            return nhwc.permute(0, 3, 1, 2)
        if self.fast:
            var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)  # one pass
            return (x - mean) * ((var + eps).rsqrt() * self.g)
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g


class ConvBlock(nn.Module):
    """conv -> optional FiLM ``x * (scale + 1) + shift`` -> SiLU. Parameter: ``proj``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = _conv(dim_in, dim_out)
        self.act = nn.SiLU()
        self.fast = True

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.proj(x)
        if not self.fast:
            if scale_shift is not None:
                scale, shift = scale_shift
                x = x * (scale + 1) + shift
            return self.act(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = torch.addcmul(shift, x, scale + 1)  # one fused pass
        return F.silu(x, inplace=not torch.is_grad_enabled())


class ResBlock(nn.Module):
    """Residual block with a time-embedding FiLM: ``mlp = [SiLU, Linear(time_dim, 2*dim_out)]``."""

    def __init__(self, dim_in: int, dim_out: int, time_emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
        self.block1 = ConvBlock(dim_in, dim_out)
        self.block2 = ConvBlock(dim_out, dim_out)
        self.res_conv = _conv(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()
        self.fast = True

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        emb = self.mlp(time_emb)[:, :, None, None]  # (B, 2*dim_out, 1, 1)
        scale_shift = emb.chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift=scale_shift))
        if not self.fast:
            return h + self.res_conv(x)
        res = _pointwise(self.res_conv, x) if isinstance(self.res_conv, nn.Conv2d) else x
        return h.add_(res) if not torch.is_grad_enabled() else h + res


class LinearAttention(nn.Module):
    """Linear (channel) attention of the high-resolution levels, 4 heads of 32 channels.

    q is softmax-normalised over its channels, k over positions; ``out = (k v^T)^T q``, then a 1x1 conv and a channel
    layer norm (``to_out = [Conv2d, ChannelLayerNorm]``). Context is ignored.
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))
        self.fast = True

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        if self.fast:
            # CPU: blocks that stay in cache; accelerators: large blocks (few kernel launches)
            return self._forward_fast(x, chunk=2048 if x.device.type == "cpu" else 65536)
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))  # (B, heads, d, N)
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        kv = torch.einsum("bhdn,bhen->bhde", k, v)  # (B, heads, d, d)
        out = torch.einsum("bhde,bhdn->bhen", kv, q)  # (B, heads, d, N)
        return self.to_out(out.reshape(b, -1, h, w))

    def _forward_fast(self, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """The same function, re-associated and blocked over positions so that nothing of size (N, 3 * hidden) is
        materialised (the layer is memory-bound on CPU):

        pass 1, per block of positions: ``k = W_k x``; an online softmax over positions (running max ``mx``,
        rescaled sums) accumulates ``s[h, d] = sum_n exp(k - mx)`` and ``M[h, d, :] = sum_n exp(k - mx) x[n, :]``;
        then ``kv = W_v M^T / (N s)`` (the original's softmax over positions and ``v / N``), (B, heads, d, d).
        pass 2, per block: ``y = (W_o kv^T) softmax_d(W_q x) * scale + b_o``, then the channel layer norm.
        """
        b, c, h, w = x.shape
        n = h * w
        hidden = self.to_qkv.out_channels // 3
        d = hidden // self.heads
        wq, wk, wv = self.to_qkv.weight.view(3, hidden, c).unbind(0)
        cl = _is_cl(x)
        xf = x.permute(0, 2, 3, 1).reshape(b, n, c) if cl else x.reshape(b, c, n).transpose(1, 2)  # (B, N, C)
        mx = torch.full((b, 1, hidden), -float("inf"), dtype=x.dtype, device=x.device)
        ssum = torch.zeros((b, 1, hidden), dtype=x.dtype, device=x.device)
        m = torch.zeros((b, hidden, c), dtype=x.dtype, device=x.device)
        wkt, wqt = wk.t(), wq.t()
        for i in range(0, n, chunk):
            xc = xf[:, i : i + chunk]
            kc = torch.matmul(xc, wkt)  # (B, n_c, hidden)
            new_mx = torch.maximum(mx, kc.amax(dim=1, keepdim=True))
            rescale = torch.exp(mx - new_mx)  # (B, 1, hidden); 0 on the first block
            kc = kc.sub_(new_mx).exp_() if not torch.is_grad_enabled() else torch.exp(kc - new_mx)
            ssum = ssum * rescale + kc.sum(dim=1, keepdim=True)
            m = torch.baddbmm(m * rescale.transpose(1, 2), kc.transpose(1, 2), xc)  # (B, hidden, C)
            mx = new_mx
        kv = torch.einsum("bhdc,hec->bhde", m.view(b, self.heads, d, c), wv.view(self.heads, d, c))
        kv = kv / (ssum.view(b, self.heads, d, 1) * n)  # (B, heads, d, e)
        wo = self.to_out[0].weight.view(c, self.heads, d)  # (C, heads, e)
        w_eff_t = (torch.einsum("ohe,bhde->bhdo", wo, kv) * self.scale).reshape(b, hidden, c)  # (B, hidden, C)
        bias = self.to_out[0].bias.view(1, 1, c)
        g = self.to_out[1].g.view(-1)
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        y = torch.empty((b, n, c), dtype=x.dtype, device=x.device)
        for i in range(0, n, chunk):
            qc = torch.matmul(xf[:, i : i + chunk], wqt).unflatten(-1, (self.heads, d)).softmax(dim=-1)
            yc = torch.baddbmm(bias, qc.flatten(2), w_eff_t)  # (B, n_c, C)
            y[:, i : i + chunk] = F.layer_norm(yc, (c,), g, None, eps)  # the ChannelLayerNorm of to_out
        y = y.view(b, h, w, c).permute(0, 3, 1, 2)  # channels-last (B, C, H, W)
        return y if cl else y.contiguous()


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x (B, N, query_dim)`` over ``context (B, M, context_dim)`` (self-attention
    when ``context`` is None). Parameters ``to_q``, ``to_k``, ``to_v`` (no bias), ``to_out.0``."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head**-0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))
        self.fast = True

    def single_token(self, context: torch.Tensor) -> torch.Tensor:
        """Output for a one-token context ``(B, 1, context_dim) -> (B, 1, query_dim)``: softmax over a single key is
        1, so every query receives ``to_out(to_v(context))`` whatever its value."""
        return self.to_out(self.to_v(context))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, M) bool, True for the context tokens to attend to (padding False); each row needs one True.
        Without a mask every token is attended to (the original)."""
        if self.fast and context is not None and context.shape[1] == 1:
            return self.single_token(context).expand(-1, x.shape[1], -1)
        ctx = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).reshape(b, n, self.heads, -1).transpose(1, 2)  # (B, heads, N, d)
        k = self.to_k(ctx).reshape(b, ctx.shape[1], self.heads, -1).transpose(1, 2)  # (B, heads, M, d)
        v = self.to_v(ctx).reshape(b, ctx.shape[1], self.heads, -1).transpose(1, 2)
        keep = None if mask is None else mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, M)
        if self.fast:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        else:
            scores = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale  # (B, heads, N, M)
            if keep is not None:
                scores = scores.masked_fill(~keep, float("-inf"))
            out = torch.einsum("bhij,bhjd->bhid", scores.softmax(dim=-1), v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    """``proj`` to 2*dim_out, then ``x * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Gated feed-forward ``net = [GEGLU(dim, 4 dim), Dropout, Linear(4 dim, dim)]``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the image context, gated feed-forward (tokens (B, N, dim))."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, cross: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``cross`` (B, 1, dim), when given, is the precomputed cross-attention output for a one-token context;
        ``mask`` (B, M) marks the context tokens to attend to."""
        x = self.attn1(self.norm1(x)) + x
        x = (cross if cross is not None else self.attn2(self.norm2(x), context=context, mask=mask)) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm(32) -> 1x1 conv -> transformer blocks on (B, H*W, C) tokens -> 1x1 conv, plus the input."""

    def __init__(self, in_channels: int, n_heads: int, d_head: int, context_dim: int, depth: int = 1):
        super().__init__()
        inner = n_heads * d_head
        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, n_heads, d_head, context_dim=context_dim) for _ in range(depth)]
        )
        self.proj_out = nn.Conv2d(inner, in_channels, 1)
        self.fast = True

    def cross_outputs(self, context: torch.Tensor) -> list[torch.Tensor]:
        """Per transformer block, the cross-attention output for a one-token ``context`` (B, 1, context_dim)."""
        return [blk.attn2.single_token(context) for blk in self.transformer_blocks]

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, cross: list[torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        x_in = x
        if self.fast:  # tokens as a (B, H, W, C) view; 1x1 convs as linears on it
            y = self.norm(x).permute(0, 2, 3, 1)
            tokens = F.linear(y, self.proj_in.weight.flatten(1), self.proj_in.bias).reshape(b, h * w, -1)
            for i, blk in enumerate(self.transformer_blocks):
                tokens = blk(tokens, context=context, cross=None if cross is None else cross[i], mask=mask)
            out = F.linear(tokens, self.proj_out.weight.flatten(1), self.proj_out.bias)  # (B, N, C)
            out = out.reshape(b, h, w, c).permute(0, 3, 1, 2)
            return out + x_in
        x = self.proj_in(self.norm(x))
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        for i, blk in enumerate(self.transformer_blocks):
            x = blk(x, context=context, cross=None if cross is None else cross[i], mask=mask)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        return self.proj_out(x) + x_in


class PreNorm(nn.Module):
    """Channel layer norm, then ``fn``. Parameters ``norm.g``, ``fn.*``."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs)


class Residual(nn.Module):
    """``fn(x) + x``."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.fast = True

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.fast and not torch.is_grad_enabled():
            return self.fn(x, **kwargs).add_(x)
        return self.fn(x, **kwargs) + x


def _attention_block(dim: int, fn: nn.Module) -> Residual:
    return Residual(PreNorm(dim, fn))


def _attn_kwargs(block: Residual, ctx: UNetContext) -> dict:
    """Keyword arguments for an attention block: for spatial transformers the context tokens, their mask and the
    cached one-token outputs."""
    fn = block.fn.fn
    if isinstance(fn, SpatialTransformer):
        return {"context": ctx.image_context, "mask": ctx.context_mask,
                "cross": None if ctx.cross is None else ctx.cross.get(id(fn))}
    return {}


@dataclass
class UNetContext:
    """What the UNet needs from one image's DA-CLIP embeddings, computed once by
    :meth:`ConditionalUNet.prepare_context` and reused at every step.

    Attributes:
        prompt_embedding: ``(B, time_dim)`` prompt embedding added to the time embedding, or None.
        image_context: ``(B, M, context_dim)`` context tokens the spatial transformers attend to (DA-CLIP: the one
            image content token, M = 1), or None.
        cross: per spatial transformer (keyed by ``id(module)``), the list of cross-attention outputs (B, 1, dim)
            for a one-token context.
        context_mask: ``(B, M)`` bool, True for the tokens to attend to, or None (all of them).
    """

    prompt_embedding: torch.Tensor | None = None
    image_context: torch.Tensor | None = None
    cross: dict[int, list[torch.Tensor]] | None = field(default=None)
    context_mask: torch.Tensor | None = None

    def expand(self, batch: int) -> UNetContext:
        """The same context repeated for ``batch`` samples (its batch must be 1 or ``batch``)."""

        def ex(t: torch.Tensor | None) -> torch.Tensor | None:
            return t if t is None or t.shape[0] == batch else t.expand(batch, *t.shape[1:])

        cross = None if self.cross is None else {k: [ex(c) for c in v] for k, v in self.cross.items()}
        return UNetContext(ex(self.prompt_embedding), ex(self.image_context), cross, ex(self.context_mask))


class ConditionalUNet(nn.Module):
    """IR-SDE noise-prediction UNet with DA-CLIP conditioning (original constructor and state-dict layout).

    Args:
        in_nc: image channels (the network sees ``[x_t - mu, mu]``, i.e. ``2 * in_nc`` channels).
        out_nc: output channels (predicted noise).
        nf: base width; level i has ``nf * ch_mult[i]`` channels; the time embedding has ``4 * nf``.
        ch_mult: width multipliers per level; ``len(ch_mult)`` levels, inputs are reflect-padded to a multiple of
            ``2 ** len(ch_mult)`` and cropped back.
        context_dim: DA-CLIP embedding width (512 for ViT-B-32); None or <= 0 disables both contexts.
        use_degra_context: add the prompt embedding of the degradation context to the time embedding.
        use_image_context: cross-attend to the image content context at levels >= 3 and in the middle block.
        upscale: kept for config compatibility; unused, as in the original.

    Shapes: ``forward(xt (B, in_nc, H, W), cond (B, in_nc, H, W), t (B,) | int, text_context (B, context_dim),
    image_context (B, context_dim)) -> (B, out_nc, H, W)``.
    """

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int = 3,
        nf: int = 64,
        ch_mult: list[int] | tuple[int, ...] = (1, 2, 4, 4),
        context_dim: int | None = 512,
        use_degra_context: bool = True,
        use_image_context: bool = False,
        upscale: int = 1,
    ):
        super().__init__()
        for name, v in (("in_nc", in_nc), ("out_nc", out_nc), ("nf", nf)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if nf % HEAD_CHANNELS:
            raise ValueError(f"nf must be a multiple of {HEAD_CHANNELS} (attention heads are 32 wide), got {nf}")
        if not ch_mult or any(not isinstance(m, int) or m <= 0 for m in ch_mult):
            raise ValueError(f"ch_mult must be a non-empty list of positive ints, got {ch_mult!r}")
        self.config = {
            "in_nc": in_nc,
            "out_nc": out_nc,
            "nf": nf,
            "ch_mult": list(ch_mult),
            "context_dim": context_dim,
            "use_degra_context": use_degra_context,
            "use_image_context": use_image_context,
            "upscale": upscale,
        }
        self.depth = len(ch_mult)
        self.upscale = upscale
        self.context_dim = -1 if context_dim is None else context_dim
        self.use_degra_context = use_degra_context
        self.use_image_context = use_image_context
        has_ctx = self.context_dim > 0
        cross = use_image_context and has_ctx

        time_dim = nf * 4
        self.init_conv = _conv(in_nc * 2, nf, 7)
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(nf), nn.Linear(nf, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )
        if has_ctx and use_degra_context:
            # DA-CLIP Sec. 3.3: e_d -> MLP -> softmax -> weights a learnable prompt -> linear -> added to time emb.
            self.prompt = nn.Parameter(torch.rand(1, time_dim))
            self.text_mlp = nn.Sequential(nn.Linear(context_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
            self.prompt_mlp = nn.Linear(time_dim, time_dim)

        def attention(dim: int, level: int) -> nn.Module:
            if cross and level >= 3:
                heads = dim // HEAD_CHANNELS
                return SpatialTransformer(dim, heads, HEAD_CHANNELS, context_dim=context_dim)
            return LinearAttention(dim)

        mults = [1, *ch_mult]
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in range(self.depth):
            dim_in, dim_out = nf * mults[i], nf * mults[i + 1]
            last = i == self.depth - 1
            self.downs.append(
                nn.ModuleList(
                    [
                        ResBlock(dim_in, dim_in, time_dim),
                        ResBlock(dim_in, dim_in, time_dim),
                        _attention_block(dim_in, attention(dim_in, i)),
                        _conv(dim_in, dim_out) if last else nn.Conv2d(dim_in, dim_out, 4, 2, 1),
                    ]
                )
            )
            up_sample = (
                _conv(dim_out, dim_in)
                if i == 0
                else NearestUpConv(dim_out, dim_in)
            )
            self.ups.insert(
                0,
                nn.ModuleList(
                    [
                        ResBlock(dim_out + dim_in, dim_out, time_dim),
                        ResBlock(dim_out + dim_in, dim_out, time_dim),
                        _attention_block(dim_out, attention(dim_out, i)),
                        up_sample,
                    ]
                ),
            )
        mid = nf * mults[-1]
        self.mid_block1 = ResBlock(mid, mid, time_dim)
        self.mid_attn = _attention_block(
            mid,
            SpatialTransformer(mid, mid // HEAD_CHANNELS, HEAD_CHANNELS, context_dim=context_dim)
            if cross
            else LinearAttention(mid),
        )
        self.mid_block2 = ResBlock(mid, mid, time_dim)
        self.final_res_block = ResBlock(nf * 2, nf, time_dim)
        self.final_conv = nn.Conv2d(nf, out_nc, 3, 1, 1)
        self.fast = True

    # ----------------------------------------------------------------------------------------------------------
    def set_fast(self, fast: bool = True) -> ConditionalUNet:
        """Select the optimised path (``True``, default: SDPA, one-token cross-attention shortcut) or the
        straightforward port of the reference (``False``). Both compute the same function (<= 1e-4 apart)."""
        self.fast = bool(fast)
        for m in self.modules():
            if hasattr(m, "fast"):
                m.fast = self.fast
        return self

    def _spatial_transformers(self) -> list[SpatialTransformer]:
        return [m for m in self.modules() if isinstance(m, SpatialTransformer)]

    def prepare_context(
        self, text_context: torch.Tensor | None = None, image_context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> UNetContext:
        """Everything that depends only on the image, computed once (DA-CLIP Sec. 3.3).

        Args:
            text_context: degradation embedding ``(B, context_dim)`` or None.
            image_context: image content embedding ``(B, context_dim)`` (DA-CLIP's single token), or a multi-token
                context ``(B, M, context_dim)`` (VLMIR: content, degradation and caption tokens), or None.
            context_mask: ``(B, M)`` bool, True for the tokens of ``image_context`` to attend to (padding False;
                every row needs at least one True), or None to attend to all of them.
        Returns:
            :class:`UNetContext` to pass as ``forward(..., context=...)``.
        """
        prompt = None
        if self.context_dim > 0 and self.use_degra_context and text_context is not None:
            self._check_context(text_context, "text_context")
            prompt = self.prompt_mlp(torch.softmax(self.text_mlp(text_context), dim=1) * self.prompt)
        img = cross = mask = None
        if self.context_dim > 0 and self.use_image_context and image_context is not None:
            img = image_context.unsqueeze(1) if image_context.ndim == 2 else image_context  # (B, M, context_dim)
            self._check_context(img, "image_context", tokens=True)
            if context_mask is not None:
                if context_mask.shape != img.shape[:2]:
                    raise ValueError(f"context_mask must have shape {tuple(img.shape[:2])} (B, M), got "
                                     f"{tuple(context_mask.shape)}")
                mask = context_mask.to(device=img.device, dtype=torch.bool)
                if not bool(mask.any(dim=1).all()):
                    raise ValueError("context_mask must keep at least one token of every sample")
                if bool(mask.all()):
                    mask = None  # nothing is masked: the plain computation
            if img.shape[1] == 1 and self.fast:
                cross = {id(st): st.cross_outputs(img) for st in self._spatial_transformers()}
        return UNetContext(prompt, img, cross, mask)

    def _check_context(self, c: torch.Tensor, name: str, tokens: bool = False) -> None:
        if tokens:
            if c.ndim != 3 or c.shape[2] != self.context_dim or c.shape[1] < 1:
                raise ValueError(f"{name} must have shape (B, {self.context_dim}) or (B, M, {self.context_dim}), "
                                 f"got {tuple(c.shape)}")
        elif c.ndim != 2 or c.shape[1] != self.context_dim:
            raise ValueError(f"{name} must have shape (B, {self.context_dim}), got {tuple(c.shape)}")

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad bottom/right to a multiple of ``2**depth`` (the original ``check_image_size``)."""
        s = 2**self.depth
        h, w = x.shape[-2:]
        ph, pw = (s - h % s) % s, (s - w % s) % s
        if ph >= h or pw >= w:
            raise ValueError(
                f"input {h}x{w} is too small to reflect-pad to a multiple of {s}; use at least {s // 2 + 1} px per side"
            )
        return F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x

    def forward(
        self,
        xt: torch.Tensor,
        cond: torch.Tensor,
        t: torch.Tensor | int | float,
        text_context: torch.Tensor | None = None,
        image_context: torch.Tensor | None = None,
        *,
        context: UNetContext | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise of ``xt`` at timestep ``t`` given the degraded image ``cond`` (= mu).

        Args:
            xt: state ``(B, in_nc, H, W)``.
            cond: degraded image ``(B, in_nc, H, W)`` (the SDE mean ``mu``), in [0, 1].
            t: timestep(s), an int/float or a tensor ``(B,)`` or ``(1,)``.
            text_context: DA-CLIP degradation embedding ``(B, context_dim)``; ignored when ``context`` is given.
            image_context: DA-CLIP image content embedding ``(B, context_dim)``, or context tokens
                ``(B, M, context_dim)``; ignored when ``context`` is given.
            context: precomputed :meth:`prepare_context` output (batch 1 or B).
            context_mask: ``(B, M)`` bool mask of ``image_context``'s tokens (see :meth:`prepare_context`).
        Returns:
            predicted noise ``(B, out_nc, H, W)``.
        """
        if xt.ndim != 4 or cond.shape != xt.shape:
            raise ValueError(f"xt and cond must be (B, C, H, W) of one shape, got {tuple(xt.shape)} and {tuple(cond.shape)}")
        if not torch.is_tensor(t):
            t = torch.tensor([t], device=xt.device)
        t = t.reshape(-1).to(xt.device)
        if context is None:
            context = self.prepare_context(text_context, image_context, context_mask)
        b = xt.shape[0]
        if b > 1:
            context = context.expand(b)

        x = torch.cat([xt - cond, cond], dim=1)
        h0, w0 = x.shape[-2:]
        x = self.init_conv(self._pad(x))
        x_first = x

        temb = self.time_mlp(t)  # (B or 1, time_dim)
        if context.prompt_embedding is not None:
            temb = temb + context.prompt_embedding

        skips = []
        for b1, b2, attn, down in self.downs:
            x = b1(x, temb)
            skips.append(x)
            x = attn(b2(x, temb), **_attn_kwargs(attn, context))
            skips.append(x)
            x = down(x)

        x = self.mid_block1(x, temb)
        x = self.mid_attn(x, **_attn_kwargs(self.mid_attn, context))
        x = self.mid_block2(x, temb)

        for b1, b2, attn, up in self.ups:
            x = b1(torch.cat([x, skips.pop()], dim=1), temb)
            x = b2(torch.cat([x, skips.pop()], dim=1), temb)
            x = up(attn(x, **_attn_kwargs(attn, context)))

        x = self.final_res_block(torch.cat([x, x_first], dim=1), temb)
        return self.final_conv(x)[..., :h0, :w0].contiguous()

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, map_location: str = "cpu", **config: Any) -> ConditionalUNet:
        """Load weights from a plain state-dict ``.pth``/``.pt`` (``torch.load(weights_only=True)``, as the official
        ``universal-ir.pth``) or a ``.safetensors`` file; ``path`` may also be a folder holding
        ``diffusion_pytorch_model.safetensors`` / ``model.safetensors`` and ``config.json``.

        Constructor arguments come from ``config`` (keyword arguments), else from ``config.json`` beside the weights,
        else the official universal-ir configuration (nf=64, ch_mult=[1, 2, 4, 8], context_dim=512, both contexts).
        Loading is strict: a missing or unexpected key raises ``RuntimeError`` naming them.
        """
        path = Path(path)
        if path.is_dir():
            cands = [path / n for n in ("diffusion_pytorch_model.safetensors", "model.safetensors", "unet.safetensors")]
            cands += sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pth"))
            found = [c for c in cands if c.is_file()]
            if not found:
                raise FileNotFoundError(f"no .safetensors or .pth weights in {path}")
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"ConditionalUNet weights not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device=map_location)
        elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            state = torch.load(str(path), map_location=map_location, weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
            state = {k.removeprefix("module."): v for k, v in state.items()}
        else:
            raise ValueError(f"unsupported weights file {path.name!r}; expected .safetensors, .pth or .pt")
        if not config:
            cfg_file = path.parent / CONFIG_NAME
            config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else dict(OFFICIAL_CONFIG)
            config.pop("_class_name", None)
        model = cls(**config)
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
        if missing or unexpected or shapes:
            raise RuntimeError(
                f"{path.name} does not match ConditionalUNet({config}): missing keys {missing[:6]}, unexpected keys "
                f"{unexpected[:6]}, shape mismatches (file vs model) {shapes[:6]}"
            )
        model.load_state_dict(state, strict=True)
        return model.eval()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (the constructor arguments) into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))
        (directory / CONFIG_NAME).write_text(json.dumps({"_class_name": type(self).__name__, **self.config}, indent=1))
        return directory


# The official universal-ir / universal-ir-mix configuration (options/test.yml of the original).
OFFICIAL_CONFIG: dict[str, Any] = {
    "in_nc": 3,
    "out_nc": 3,
    "nf": 64,
    "ch_mult": [1, 2, 4, 8],
    "context_dim": 512,
    "use_degra_context": True,
    "use_image_context": True,
}
