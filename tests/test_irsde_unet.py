"""ConditionalUNet: parity with the reference fixture, official layout, fast == port, loading formats."""

import json
from pathlib import Path

import pytest
import torch

from vlmir.models.irsde_unet import OFFICIAL_CONFIG, ConditionalUNet

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "daclip_reference"


def _need_fixture():
    if not (FIXTURE / "tiny_a_unet.safetensors").is_file():
        pytest.skip(f"reference fixture not found at {FIXTURE}")


@pytest.fixture(scope="module")
def ref():
    _need_fixture()
    from safetensors.torch import load_file

    meta = json.loads((FIXTURE / "tiny_a_meta.json").read_text())
    io = load_file(str(FIXTURE / "tiny_a_io.safetensors"))
    unet = ConditionalUNet.from_pretrained(FIXTURE / "tiny_a_unet.safetensors", **meta["unet_cfg"])
    return meta, io, unet


def _run(unet, io):
    with torch.inference_mode():
        return unet(io["unet.xt"], io["unet.cond"], io["unet.t"], text_context=io["daclip.degra_context"],
                    image_context=io["daclip.image_context"])


@pytest.mark.parametrize("fast", [False, True])
def test_fixture_parity_odd_size(ref, fast):
    _, io, unet = ref
    assert tuple(io["unet.xt"].shape[-2:]) == (40, 56)  # not a multiple of 16: reflect pad + crop
    out = _run(unet.set_fast(fast), io)
    assert out.shape == io["unet.out"].shape
    assert (out - io["unet.out"]).abs().max().item() <= 1e-4
    unet.set_fast(True)


def test_fast_equals_port_and_precomputed_context(ref):
    _, io, unet = ref
    port = _run(unet.set_fast(False), io)
    fast = _run(unet.set_fast(True), io)
    assert (fast - port).abs().max().item() <= 1e-4
    with torch.inference_mode():
        ctx = unet.prepare_context(io["daclip.degra_context"], io["daclip.image_context"])
        cached = unet(io["unet.xt"], io["unet.cond"], io["unet.t"], context=ctx)
        # per sample, with a batch-1 context expanded internally
        one = unet(io["unet.xt"][1:], io["unet.cond"][1:], int(io["unet.t"][1]),
                   context=unet.prepare_context(io["daclip.degra_context"][1:], io["daclip.image_context"][1:]))
    assert (cached - port).abs().max().item() <= 1e-4
    assert (one - port[1:]).abs().max().item() <= 1e-4
    # the contexts matter: another degradation context changes the output
    with torch.inference_mode():
        other = unet(io["unet.xt"], io["unet.cond"], io["unet.t"], text_context=-10 * io["daclip.degra_context"],
                     image_context=-10 * io["daclip.image_context"])
    assert (other - port).abs().max().item() > 1e-3


def test_official_layout_keys_and_shapes():
    _need_fixture()
    layout = json.loads((FIXTURE / "official_key_layout.json").read_text())["universal-ir"]
    with torch.device("meta"):
        big = ConditionalUNet(**OFFICIAL_CONFIG)
    ours = {k: list(v.shape) for k, v in big.state_dict().items()}
    assert len(layout) == 224
    assert set(ours) == set(layout)
    assert ours == {k: list(v) for k, v in layout.items()}


def test_pth_state_dict_and_safetensors_roundtrip(ref, tmp_path):
    meta, io, unet = ref
    pth = tmp_path / "universal-ir.pth"
    torch.save({f"module.{k}": v for k, v in unet.state_dict().items()}, pth)  # DataParallel-style prefix too
    a = ConditionalUNet.from_pretrained(pth, **meta["unet_cfg"])
    d = unet.save_pretrained(tmp_path / "st")
    b = ConditionalUNet.from_pretrained(d)  # config.json beside the weights
    assert b.config == unet.config
    ref_out = _run(unet, io)
    assert torch.equal(_run(a, io), ref_out)
    assert torch.equal(_run(b, io), ref_out)


def test_mismatched_weights_raise(ref, tmp_path):
    meta, _, unet = ref
    pth = tmp_path / "w.pth"
    torch.save(unet.state_dict(), pth)
    with pytest.raises(RuntimeError, match="does not match ConditionalUNet.*missing keys .*'downs.4.0.mlp.1.weight'"):
        ConditionalUNet.from_pretrained(pth, **{**meta["unet_cfg"], "ch_mult": [1, 1, 2, 2, 2]})
    with pytest.raises(RuntimeError, match="shape mismatches.*init_conv.weight"):
        ConditionalUNet.from_pretrained(pth, **{**meta["unet_cfg"], "nf": 64})
    with pytest.raises(FileNotFoundError):
        ConditionalUNet.from_pretrained(tmp_path / "absent.pth")


def test_bad_arguments():
    with pytest.raises(ValueError, match="nf"):
        ConditionalUNet(nf=30)
    with pytest.raises(ValueError, match="ch_mult"):
        ConditionalUNet(nf=32, ch_mult=[])
    u = ConditionalUNet(nf=32, ch_mult=[1, 1], context_dim=8, use_image_context=False)
    with pytest.raises(ValueError, match="too small"):
        u(torch.rand(1, 3, 2, 8), torch.rand(1, 3, 2, 8), 3)
    with pytest.raises(ValueError, match="text_context"):
        u(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), 3, text_context=torch.rand(1, 9))


def test_channels_last_same_output(ref):
    _, io, unet = ref
    base = _run(unet, io)
    unet.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            cl = unet(io["unet.xt"].contiguous(memory_format=torch.channels_last),
                      io["unet.cond"].contiguous(memory_format=torch.channels_last), io["unet.t"],
                      text_context=io["daclip.degra_context"], image_context=io["daclip.image_context"])
    finally:
        unet.to(memory_format=torch.contiguous_format)
    assert (cl - base).abs().max().item() <= 1e-4


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_blocks_equal_port_blocks(channels_last):
    """The re-associated linear attention (blocked online softmax) and the sub-pixel up-convolution compute the
    port's function, for a batch, several sizes, a partial last block and both memory formats."""
    from vlmir.models.irsde_unet import ChannelLayerNorm, LinearAttention, NearestUpConv

    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for mod, shape in ((LinearAttention(64), (2, 64, 48, 80)), (NearestUpConv(64, 32), (2, 64, 12, 20)),
                       (ChannelLayerNorm(64), (2, 64, 9, 7))):
        for p in mod.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 4 and p.shape[0] == 1 else 0.0)
        x = (torch.randn(shape, generator=g) * 3).contiguous(memory_format=fmt)
        with torch.no_grad():
            for m in mod.modules():
                if hasattr(m, "fast"):
                    m.fast = False
            port = mod(x)
            for m in mod.modules():
                if hasattr(m, "fast"):
                    m.fast = True
            fast = mod._forward_fast(x, chunk=1000) if isinstance(mod, LinearAttention) else mod(x)
        assert fast.shape == port.shape
        assert (fast - port).abs().max().item() <= 1e-4 * max(1.0, port.abs().max().item()), type(mod).__name__
