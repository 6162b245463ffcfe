"""VLMIR: multi-token cross-attention in the UNet, stage 1 (LoRA alignment, degradation predictor), stage 2, CLI."""

import pytest
import torch

from vlmir.models.irsde_unet import ConditionalUNet


def _unet(seed=0):
    torch.manual_seed(seed)
    u = ConditionalUNet(in_nc=3, out_nc=3, nf=32, ch_mult=[1, 1, 2, 2], context_dim=32, use_degra_context=True,
                        use_image_context=True).eval()
    # the zero-free random init keeps every path active
    return u


def _inputs(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 24, 40, generator=g)
    lq = torch.rand(b, 3, 24, 40, generator=g)
    return x, lq


@pytest.mark.parametrize("fast", [True, False])
def test_one_token_context_equals_single_token_path(fast):
    u = _unet().set_fast(fast)
    x, lq = _inputs()
    deg, img = torch.randn(2, 32), torch.randn(2, 32)
    with torch.no_grad():
        single = u(x, lq, 30, text_context=deg, image_context=img)
        tokens = u(x, lq, 30, text_context=deg, image_context=img[:, None], context_mask=torch.ones(2, 1, dtype=torch.bool))
    assert (single - tokens).abs().max().item() <= 1e-5
    assert single.abs().mean().item() > 1e-3


def test_multi_token_fast_equals_port_and_padding_is_ignored():
    u = _unet()
    x, lq = _inputs()
    deg, ctx = torch.randn(2, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        fast = u.set_fast(True)(x, lq, 30, text_context=deg, image_context=ctx, context_mask=mask)
        port = u.set_fast(False)(x, lq, 30, text_context=deg, image_context=ctx, context_mask=mask)
        other = ctx.clone()
        other[0, 3:] = torch.randn(2, 32) * 10  # padded tokens of sample 0 change
        padded = u.set_fast(True)(x, lq, 30, text_context=deg, image_context=other, context_mask=mask)
        unmasked = u(x, lq, 30, text_context=deg, image_context=other)
        # sample 0 with only its three kept tokens, no mask
        short = u(x[:1], lq[:1], 30, text_context=deg[:1], image_context=ctx[:1, :3])
    assert (fast - port).abs().max().item() <= 1e-4
    assert (padded - fast).abs().max().item() <= 1e-5
    assert (short - fast[:1]).abs().max().item() <= 1e-5
    assert (unmasked[0] - fast[0]).abs().max().item() > 1e-4  # without the mask the padding would matter


def test_context_mask_errors():
    u = _unet()
    x, lq = _inputs()
    ctx = torch.randn(2, 3, 32)
    with pytest.raises(ValueError, match="context_mask must have shape"):
        u(x, lq, 30, image_context=ctx, context_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one token"):
        u(x, lq, 30, image_context=ctx, context_mask=torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, M, 32\)"):
        u(x, lq, 30, image_context=torch.randn(2, 3, 16))
