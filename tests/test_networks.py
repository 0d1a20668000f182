"""Tests of ambient.networks: EDM-compatible SongUNet / EDMPrecond, presets and FLOP counting."""
import copy
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import ambient.model.networks as nw
from ambient.model.networks import EDMPrecond, GroupNorm, UNetBlock, build_network
from bench.flops import forward_flops

# A small DDPM++-style configuration at a non-power-of-two resolution (24 -> 12 -> 6).
SMALL = dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[12], dropout=0.0)
VARIANTS = {
    "ddpmpp": dict(SMALL),
    "ncsnpp": dict(SMALL, embedding_type="fourier", encoder_type="residual", channel_mult_noise=2,
                   resample_filter=[1, 3, 3, 1]),
    "skip": dict(SMALL, encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1]),
}


def randomize(net: torch.nn.Module, seed: int) -> None:
    """Overwrite all parameters with O(1)-scale random values, so zero-initialised layers matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            for name, p in m.named_parameters(recurse=False):
                r = torch.randn(p.shape, generator=g, dtype=p.dtype)
                if isinstance(m, GroupNorm):
                    p.copy_((1 if name == "weight" else 0) + 0.2 * r)
                else:
                    p.copy_(r / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.2 * r)


def small_net(variant: str = "ddpmpp", seed: int = 0, **kw) -> EDMPrecond:
    torch.manual_seed(seed)
    net = build_network("tiny", 24, 2, **{**VARIANTS[variant], **kw})
    randomize(net, seed)
    return net.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_ddpmpp_parameter_count_and_flops():
    with torch.device("meta"):
        net = build_network("ddpmpp", 32, 3)
    n = sum(p.numel() for p in net.parameters())
    flops = forward_flops(net)
    print(f"DDPM++ 32x32x3: {n} parameters, {flops / 1e9:.2f} GFLOP per image forward")
    assert abs(n - 55.73e6) / 55.73e6 < 0.002
    assert 2 * 20e9 < flops < 2 * 22e9  # EDM's DDPM++ CIFAR-10: about 21 GMAC per image


@pytest.mark.parametrize("preset,channels,batch", [("ddpmpp", 3, 1), ("ncsnpp", 3, 1), ("tiny", 1, 3)])
def test_preset_forward_shapes(preset, channels, batch):
    torch.manual_seed(0)
    net = build_network(preset, 32, channels).eval()
    x = torch.randn(batch, channels, 32, 32)
    with torch.no_grad():
        d = net(x, torch.rand(batch) * 5 + 0.01)
    assert d.shape == x.shape and d.dtype == torch.float32 and torch.isfinite(d).all()


def test_conditional_labels_and_augment():
    net = small_net(label_dim=7, augment_dim=5)
    b = 5
    x, sigma = torch.randn(b, 2, 24, 24), torch.rand(b) + 0.1
    idx = torch.tensor([0, 3, 6, 2, 3])
    onehot = torch.nn.functional.one_hot(idx, 7).float()
    aug = torch.randn(b, 5)
    with torch.no_grad():
        d_idx = net(x, sigma, idx)
        d_hot = net(x, sigma, onehot)
        d_other = net(x, sigma, (idx + 1) % 7)
        d_none = net(x, sigma)
        d_zero = net(x, sigma, torch.zeros(b, 7))
        d_aug = net(x, sigma, onehot, augment_labels=aug)
    assert d_hot.shape == x.shape
    torch.testing.assert_close(d_idx, d_hot)
    torch.testing.assert_close(d_none, d_zero)
    for changed in (d_other, d_aug):  # labels and augment labels both reach the network
        assert (changed - d_hot).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    with pytest.raises(ValueError, match="class_labels"):
        net(x, sigma, torch.zeros(b, 6))


def test_state_dict_keys_follow_edm():
    with torch.device("meta"):
        net = build_network("ddpmpp", 32, 3)
    sd = net.state_dict()
    enc = [f"32x32_{n}" for n in ["conv", "block0", "block1", "block2", "block3"]] + \
          [f"{r}x{r}_{n}" for r in (16, 8) for n in ["down", "block0", "block1", "block2", "block3"]]
    dec = ["8x8_in0", "8x8_in1"] + [f"8x8_block{i}" for i in range(5)] + \
          [f"{r}x{r}_{n}" for r in (16, 32) for n in ["up"] + [f"block{i}" for i in range(5)]] + \
          ["32x32_aux_norm", "32x32_aux_conv"]
    assert list(net.model.enc.keys()) == enc
    assert list(net.model.dec.keys()) == dec
    attn = {k.rsplit(".", 2)[0] for k in sd if k.endswith(".qkv.weight")}
    assert attn == {f"model.enc.16x16_block{i}" for i in range(4)} | {"model.dec.8x8_in0", "model.dec.16x16_block4"}
    expected = {
        "model.map_layer0.weight": (512, 128), "model.map_layer0.bias": (512,),
        "model.map_layer1.weight": (512, 512),
        "model.enc.32x32_conv.weight": (128, 3, 3, 3), "model.enc.32x32_conv.bias": (128,),
        "model.enc.32x32_block0.norm0.weight": (128,), "model.enc.32x32_block0.conv0.weight": (256, 128, 3, 3),
        "model.enc.32x32_block0.affine.weight": (256, 512), "model.enc.32x32_block0.skip.weight": (256, 128, 1, 1),
        "model.enc.32x32_block1.conv1.bias": (256,),
        "model.enc.16x16_down.conv0.resample_filter": (1, 1, 2, 2),
        "model.enc.16x16_down.skip.weight": (256, 256, 1, 1),
        "model.enc.16x16_down.skip.resample_filter": (1, 1, 2, 2),
        "model.enc.16x16_block0.norm2.weight": (256,), "model.enc.16x16_block0.qkv.weight": (768, 256, 1, 1),
        "model.enc.16x16_block0.proj.weight": (256, 256, 1, 1),
        "model.dec.8x8_block0.conv0.weight": (256, 512, 3, 3),
        "model.dec.32x32_up.conv0.resample_filter": (1, 1, 2, 2),
        "model.dec.32x32_block4.conv0.weight": (256, 384, 3, 3),
        "model.dec.32x32_aux_norm.weight": (256,), "model.dec.32x32_aux_conv.weight": (3, 256, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    absent = ["model.map_label.weight", "model.map_augment.weight", "model.map_noise.freqs",
              "model.enc.32x32_block0.conv0.resample_filter", "model.enc.32x32_block1.skip.weight",
              "model.enc.32x32_block0.qkv.weight", "model.dec.8x8_in1.qkv.weight"]
    assert not set(absent) & set(sd)
    torch.testing.assert_close(small_net().state_dict()["model.enc.12x12_down.conv0.resample_filter"],
                               torch.full((1, 1, 2, 2), 0.25))

    with torch.device("meta"):
        sd = build_network("ncsnpp", 32, 3, label_dim=10, augment_dim=9).state_dict()
    for key, shape in {"model.map_noise.freqs": (128,), "model.map_label.weight": (256, 10),
                       "model.map_label.bias": (256,), "model.map_augment.weight": (256, 9),
                       "model.map_layer0.weight": (512, 256),
                       "model.enc.16x16_aux_residual.weight": (256, 3, 3, 3),
                       "model.enc.16x16_aux_residual.resample_filter": (1, 1, 4, 4),
                       "model.enc.8x8_aux_residual.weight": (256, 256, 3, 3)}.items():
        assert tuple(sd[key].shape) == shape, key
    assert "model.map_augment.bias" not in sd

    sd = small_net("skip").state_dict()
    assert {"model.enc.12x12_aux_down.resample_filter", "model.enc.12x12_aux_skip.weight",
            "model.dec.12x12_aux_up.resample_filter", "model.dec.6x6_aux_norm.weight",
            "model.dec.6x6_aux_conv.weight", "model.dec.24x24_aux_conv.weight"} <= set(sd)
    assert "model.enc.12x12_aux_down.weight" not in sd
    f = torch.tensor([1.0, 3, 3, 1])
    torch.testing.assert_close(sd["model.dec.12x12_aux_up.resample_filter"], (torch.outer(f, f) / 64)[None, None])


@pytest.mark.parametrize("variant", ["ddpmpp", "ncsnpp"])
def test_noise_and_label_embedding_closed_form(variant):
    """The input of map_layer0 is [sin(w c), cos(w c)] + map_label(onehot * sqrt(label_dim)), as in EDM."""
    net = small_net(variant, label_dim=5)
    c_noise = torch.randn(4, dtype=torch.float64)
    labels = torch.nn.functional.one_hot(torch.tensor([4, 0, 2, 2]), 5).double()
    seen = []
    net.model.map_layer0.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        net.model(torch.randn(4, 2, 24, 24), c_noise.float(), labels.float())
        n = net.model.map_layer0.in_features
        if variant == "ddpmpp":  # positional, endpoint=True
            w = (1 / 10000) ** (torch.arange(n // 2, dtype=torch.float64) / (n // 2 - 1))
        else:  # random Fourier features
            w = 2 * math.pi * net.model.map_noise.freqs.double()
        lab = net.model.map_label
        ref = torch.cat([torch.sin(c_noise[:, None] * w), torch.cos(c_noise[:, None] * w)], dim=1)
        ref = ref + (labels * math.sqrt(5)) @ lab.weight.double().t() + lab.bias.double()
    assert rel_err(seen[0], ref) < 1e-5


@pytest.mark.parametrize("sigma_form", ["float", "scalar", "vector", "column"])
def test_preconditioning_matches_formulas(sigma_form, monkeypatch):
    net = build_network("tiny", 24, 2, **SMALL)
    b = 4
    x = torch.randn(b, 2, 24, 24, dtype=torch.float64) * 3
    s = torch.exp(torch.empty(b, dtype=torch.float64).uniform_(math.log(0.002), math.log(80)))
    if sigma_form in ("float", "scalar"):
        s = s[:1].expand(b)
    sigma = {"float": float(s[0]), "scalar": s[0].float(), "vector": s.float(),
             "column": s.float()[:, None, None, None]}[sigma_form]

    def fake_f(z, c_noise):  # an arbitrary known function of the model inputs
        return torch.tanh(z) * 1.7 + torch.sin(3 * c_noise)[:, None, None, None] - 0.3 * z ** 2

    class Fake(torch.nn.Module):
        def forward(self, z, noise_labels, class_labels=None):
            assert z.dtype == noise_labels.dtype == torch.float32 and class_labels is None
            return fake_f(z, noise_labels)

    monkeypatch.setattr(net, "model", Fake())
    d = net(x.float(), sigma)
    sd, s4 = 0.5, s[:, None, None, None]
    ref = sd ** 2 / (s4 ** 2 + sd ** 2) * x + s4 * sd / (s4 ** 2 + sd ** 2).sqrt() * fake_f(
        x / (s4 ** 2 + sd ** 2).sqrt(), s.log() / 4)
    assert d.dtype == torch.float32
    assert rel_err(d, ref) < 1e-5


@pytest.mark.parametrize("heads,n_heads,adaptive",
                         [(dict(num_heads=3), 3, False), (dict(channels_per_head=12), 4, True)])
def test_attention_block_matches_edm_einsum(heads, n_heads, adaptive):
    torch.manual_seed(1)
    c, emb_c = 48, 20
    block = UNetBlock(c, c, emb_c, attention=True, eps=1e-6, skip_scale=math.sqrt(0.5), adaptive_scale=adaptive,
                      attn_backend="torch", **heads).eval()
    randomize(block, 1)
    x, emb = torch.randn(2, c, 5, 7), torch.randn(2, emb_c)
    out = block(x, emb)

    ref = copy.deepcopy(block).double()  # EDM's block written out, float64
    x, emb = x.double(), emb.double()
    silu = torch.nn.functional.silu
    h = ref.conv0(silu(ref.norm0(x)))
    p = ref.affine(emb)[:, :, None, None]
    if adaptive:
        scale, shift = p.chunk(2, dim=1)
        h = silu(ref.norm1(h) * (scale + 1) + shift)
    else:
        h = silu(ref.norm1(h + p))
    h = (ref.conv1(h) + x) * ref.skip_scale
    n = ref.num_heads
    assert n == n_heads and ref.skip is None
    q, k, v = ref.qkv(ref.norm2(h)).reshape(h.shape[0] * n, c // n, 3, -1).unbind(2)
    w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
    a = torch.einsum("nqk,nck->ncq", w, v)
    expected = (ref.proj(a.reshape(h.shape)) + h) * ref.skip_scale
    assert rel_err(out, expected) < 1e-5
    assert rel_err(h * ref.skip_scale, expected) > 1e-2  # the attention branch is not negligible


def test_set_attn_backend_reaches_every_block(monkeypatch):
    net = small_net()
    keys = list(net.state_dict())
    blocks = [m for m in net.modules() if isinstance(m, UNetBlock)]
    assert blocks and all(m.attn_backend == "auto" for m in blocks)
    seen = []
    real = nw.kernels.attention

    def spy(q, k, v, *, scale=None, backend="auto"):
        seen.append(backend)
        return real(q, k, v, scale=scale, backend="torch")

    monkeypatch.setattr(nw.kernels, "attention", spy)
    net.set_attn_backend("triton")
    assert all(m.attn_backend == "triton" for m in blocks)
    assert list(net.state_dict()) == keys
    with torch.no_grad():
        net(torch.randn(1, 2, 24, 24), 1.0)
    n_attn = sum(1 for m in blocks if m.num_heads)
    assert seen == ["triton"] * n_attn and n_attn == 3
    with pytest.raises(ValueError, match="attn_backend"):
        net.set_attn_backend("cuda")


@pytest.mark.parametrize("variant", ["ddpmpp", "ncsnpp"])
def test_state_dict_round_trip(variant):
    a = small_net(variant, seed=0, label_dim=3)
    b = small_net(variant, seed=1, label_dim=3)
    x, sigma, y = torch.randn(3, 2, 24, 24), torch.rand(3) + 0.05, torch.tensor([0, 2, 1])
    with torch.no_grad():
        before = b(x, sigma, y)
        result = b.load_state_dict(a.state_dict(), strict=True)
        after, ref = b(x, sigma, y), a(x, sigma, y)
    assert not result.missing_keys and not result.unexpected_keys
    assert rel_err(before, ref) > 1e-3
    assert torch.equal(after, ref)


def test_autocast_bf16_close_to_fp32():
    net = small_net("ncsnpp")
    x, sigma = torch.randn(3, 2, 24, 24), torch.rand(3) * 2 + 0.1
    c_in = 1 / (sigma[:, None, None, None] ** 2 + 0.25).sqrt()
    with torch.no_grad():
        f32 = net.model(c_in * x, sigma.log() / 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = net.model(c_in * x, sigma.log() / 4)
            d = net(x, sigma)
    assert bf16.dtype == torch.bfloat16 and d.dtype == torch.float32
    assert rel_err(bf16, f32) < 3e-2
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = (net(x, sigma) - x).square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_flops_matches_flop_counter(variant):
    net = small_net(variant, label_dim=4, augment_dim=0)
    net.set_attn_backend("torch")
    x = torch.randn(3, 2, 24, 24)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.rand(3) + 0.1, torch.tensor([0, 1, 3]))
    assert forward_flops(net, batch=3) == counter.get_total_flops()
    assert forward_flops(net, batch=3) == 3 * forward_flops(net)


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="preset"):
        build_network("huge", 32, 3)
    with pytest.raises(ValueError, match="embedding_type"):
        build_network("tiny", 32, 1, embedding_type="learned")
    with pytest.raises(ValueError, match="attn_backend"):
        build_network("tiny", 32, 1, attn_backend="flash")
    with pytest.raises(ValueError, match="img_resolution"):
        build_network("tiny", 30, 1)
    with pytest.raises(ValueError, match="model_type"):
        build_network("tiny", 32, 1, model_type="DhariwalUNet")
    net = small_net()
    with pytest.raises(ValueError, match="x must be"):
        net(torch.randn(2, 3, 24, 24), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        net(torch.randn(2, 2, 24, 24), torch.ones(3))
    with pytest.raises(ValueError, match="batch"):
        forward_flops(net, batch=0)


def attention_levels(net: EDMPrecond) -> list[int]:
    """The resolution of every block with self-attention, sorted."""
    return sorted(int(name.split("x")[0]) for part in (net.model.enc, net.model.dec)
                  for name, block in part.items() if isinstance(block, UNetBlock) and block.num_heads)


def test_tiny_at_28x28_runs_on_levels_28_14_7_with_attention_where_asked():
    """MNIST's native 28x28 (--data mnist28): 28 -> 14 -> 7 and back, every skip of the size it joins. The preset's
    attention at 8 has no level there, so only SongUNet's own block at the coarsest level attends unless
    attn_resolutions names 7; a resolution that is no level is refused, naming those that are."""
    default = build_network("tiny", 28, 1, model_channels=8)
    assert sorted({int(name.split("x")[0]) for name in default.model.enc}) == [7, 14, 28]
    assert attention_levels(default) == [7]                        # dec 7x7_in0, as in every SongUNet
    asked = build_network("tiny", 28, 1, model_channels=8, attn_resolutions=[7])
    assert attention_levels(asked) == [7, 7, 7, 7]                 # as the preset's 8 gives at 32x32
    assert attention_levels(build_network("tiny", 32, 1, model_channels=8)) == [8, 8, 8, 8]
    x = torch.randn(3, 1, 28, 28)
    for net in (default, asked):
        randomize(net, 0)
        out = net(x, torch.tensor([0.1, 1.0, 10.0]))
        assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="attn_resolutions 8: the 28x28 network has no such level; its levels "
                                         "are 28, 14, 7"):
        build_network("tiny", 28, 1, attn_resolutions=[8])
    with pytest.raises(ValueError, match="attn_resolutions 3, 28: the 32x32 network has no such level; its levels "
                                         "are 32, 16, 8"):
        build_network("tiny", 32, 1, attn_resolutions=[28, 8, 3, 16])


def test_a_presets_own_attention_resolution_is_not_checked():
    """The 16x16 study models (levels 16, 8, 4) keep the tiny preset's attention at 8, beside SongUNet's own block
    at the coarsest level (at 28x28 the preset's 8 adds nothing and builds, as it always did: above)."""
    assert attention_levels(build_network("tiny", 16, 1, model_channels=8)) == [4, 8, 8, 8]
