"""EDM's SongUNet (DDPM++ / NCSN++) and EDM preconditioning, state_dict-compatible with NVIDIA EDM.

Module and parameter names follow EDM's `training/networks.py` exactly, so an EDM checkpoint's
`state_dict` (e.g. `model.enc.32x32_conv.weight`) loads into `EDMPrecond` unchanged. Differences
from EDM that do not touch the state_dict: attention goes through `kernels.attention` (backend
chosen per block by the plain attribute `attn_backend`), bad arguments raise ValueError, and the
modules work under `torch.autocast` (weights are cast to the activation dtype, as EDM does).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.functional import silu

import kernels
from kernels import BACKENDS

INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"attn_backend must be one of {BACKENDS}, got {name!r}")
    return name


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random tensor for EDM's init modes (xavier/kaiming, uniform/normal) on the current device."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"init_mode must be one of {INIT_MODES}, got {mode!r}")


class Linear(torch.nn.Module):
    """Fully connected layer (`weight` (out, in), optional `bias`), weights cast to the input dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight: float = 1, init_bias: float = 0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x.add_(self.bias.to(x.dtype))
        return x


class Conv2d(torch.nn.Module):
    """Square 'same' convolution with optional 2x up/downsampling by a separable FIR filter.

    `kernel=0` gives a pure resampler (no weight). The filter is the persistent buffer
    `resample_filter` (1, 1, k, k), present only when `up` or `down`, as in EDM.
    `fused_resample` applies the weight conv at full resolution next to the filter (EDM's variant
    used by NCSN++'s residual encoder); both orders are EDM's.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1, init_bias: float = 0):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down are mutually exclusive")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = (torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans)
                                          * init_weight)
                       if kernel else None)
        self.bias = torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        fused = self.fused_resample and w is not None
        if fused and self.up:
            x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                   stride=2, padding=w_pad + f_pad)
            x = F.conv2d(x, w)
        elif fused and self.down:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                             padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x.add_(self.bias.to(x.dtype).reshape(1, -1, 1, 1))
        return x


class GroupNorm(torch.nn.Module):
    """Group normalisation with min(num_groups, C // min_channels_per_group) groups (EDM's rule)."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        if self.num_groups < 1 or num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels cannot be split into "
                             f"min({num_groups}, {num_channels} // {min_channels_per_group}) equal groups")
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype),
                                              bias=self.bias.to(x.dtype), eps=self.eps)


class UNetBlock(torch.nn.Module):
    """EDM's residual U-Net block: GroupNorm-SiLU-conv, noise-embedding affine, conv, skip, optional attention.

    Attention keeps EDM's qkv channel layout: the qkv conv's 3C output channels are read as
    (heads, C/heads, 3), so q, k, v of head h use channels h*3*Ch + 3*c + {0, 1, 2}.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0, skip_scale: float = 1, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False, adaptive_scale: bool = True,
                 init: dict | None = None, init_zero: dict | None = None, init_attn: dict | None = None,
                 attn_backend: str = "auto"):
        super().__init__()
        init = {} if init is None else init
        init_zero = dict(init_weight=0) if init_zero is None else init_zero
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = (0 if not attention
                          else num_heads if num_heads is not None else out_channels // channels_per_head)
        if self.num_heads and out_channels % self.num_heads:
            raise ValueError(f"UNetBlock: {out_channels} channels not divisible by {self.num_heads} heads")
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        self.attn_backend = _check_backend(attn_backend)

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter,
                            **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init if init_attn is None else init_attn))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = silu(self.norm1(x.add_(params)))
        x = self.conv1(torch.nn.functional.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale
        if self.num_heads:
            x = self.proj(self._attend(self.qkv(self.norm2(x)))).add_(x)
            x = x * self.skip_scale
        return x

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention of a (B, 3C, H, W) qkv map in EDM's layout -> (B, C, H, W)."""
        b, c3, h, w = qkv.shape
        ch = c3 // 3 // self.num_heads
        q, k, v = (t.transpose(-1, -2) for t in qkv.reshape(b, self.num_heads, ch, 3, h * w).unbind(3))
        o = kernels.attention(q, k, v, scale=1 / math.sqrt(ch), backend=self.attn_backend)
        return o.transpose(-1, -2).reshape(b, c3 // 3, h, w)


class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding [cos(x f), sin(x f)] with f = (1/max_positions)^(i/(n/2 - endpoint))."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features [cos(2 pi x f), sin(2 pi x f)], f ~ N(0, scale^2) in the buffer `freqs`."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class SongUNet(torch.nn.Module):
    """DDPM++ / NCSN++ U-Net of Song et al. as re-implemented in EDM (same arguments, same state_dict keys).

    forward(x, noise_labels, class_labels=None, augment_labels=None) -> F(x), same shape as x with
    `out_channels` channels. `attn_backend` selects the `kernels.attention` backend of every block.
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[float] = (1, 1), attn_backend: str = "auto"):
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be 'standard', 'skip' or 'residual', got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be 'standard' or 'skip', got {decoder_type!r}")
        if not channel_mult:
            raise ValueError("channel_mult must not be empty")
        if img_resolution < 1 or img_resolution % (1 << (len(channel_mult) - 1)):
            raise ValueError(f"img_resolution {img_resolution} must be a positive multiple of "
                             f"2^(len(channel_mult) - 1) = {1 << (len(channel_mult) - 1)}")
        if not 0 <= dropout < 1 or not 0 <= label_dropout <= 1:
            raise ValueError(f"dropout must be in [0, 1) and label_dropout in [0, 1], got {dropout}, {label_dropout}")
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5),
                            eps=1e-6, resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                            init=init, init_zero=init_zero, init_attn=init_attn, attn_backend=attn_backend)

        # Mapping of noise level, class label and augmentation label to the block embedding.
        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder: the module order is the execution order (names carry the role).
        self.enc = torch.nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, kernel=0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, kernel=3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if "aux" not in name]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def set_attn_backend(self, name: str) -> None:
        """Route every block's attention through `kernels.attention(..., backend=name)`."""
        _check_backend(name)
        for m in self.modules():
            if isinstance(m, UNetBlock):
                m.attn_backend = name

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [cos, sin] -> [sin, cos], as EDM
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError("class_labels are required: the network was built with label_dim > 0")
            labels = class_labels
            if self.training and self.label_dropout:
                labels = labels * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = silu(self.map_layer1(emb))

        skips = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class EDMPrecond(torch.nn.Module):
    """EDM preconditioning D(x; s) = c_skip x + c_out F(c_in x, c_noise) around `self.model`.

    c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4,
    all in float32; F runs in float16 when `use_fp16` on CUDA (as EDM), otherwise in float32 or under
    the caller's autocast.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "SongUNet", **model_kwargs: Any):
        if model_type != "SongUNet":
            raise ValueError(f"model_type must be 'SongUNet' (the only network here), got {model_type!r}")
        if img_channels < 1 or label_dim < 0 or sigma_data <= 0:
            raise ValueError(f"need img_channels >= 1, label_dim >= 0, sigma_data > 0; got "
                             f"{img_channels}, {label_dim}, {sigma_data}")
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = SongUNet(img_resolution=img_resolution, in_channels=img_channels,
                                             out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def set_attn_backend(self, name: str) -> None:
        """Select the `kernels.attention` backend (one of kernels.BACKENDS) of every attention block."""
        self.model.set_attn_backend(name)

    def round_sigma(self, sigma: Any) -> torch.Tensor:
        """Identity on sigma (EDM's sampler API)."""
        return torch.as_tensor(sigma)

    def _class_labels(self, class_labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """Float (B, label_dim) labels: one-hot vectors, integer class indices, or zeros when None."""
        if self.label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros([x.shape[0], self.label_dim], device=x.device)
        if not class_labels.is_floating_point():
            if class_labels.ndim != 1:
                raise ValueError(
                    f"integer class_labels must be a (B,) tensor of indices, got {tuple(class_labels.shape)}")
            class_labels = torch.nn.functional.one_hot(class_labels.long(), self.label_dim)
        class_labels = class_labels.to(device=x.device, dtype=torch.float32)
        if class_labels.numel() not in (self.label_dim, x.shape[0] * self.label_dim):
            raise ValueError(f"class_labels of shape {tuple(class_labels.shape)} do not match batch "
                             f"{x.shape[0]} x label_dim {self.label_dim}")
        return class_labels.reshape(-1, self.label_dim)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs: Any) -> torch.Tensor:
        """Denoised estimate D(x; sigma) in float32; sigma: scalar, (B,) or (B, 1, 1, 1)."""
        if x.ndim != 4 or x.shape[1] != self.img_channels:
            raise ValueError(f"x must be (B, {self.img_channels}, H, W), got {tuple(x.shape)}")
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        elif sigma.numel() != x.shape[0]:
            raise ValueError(f"sigma must be a scalar or have one value per sample ({x.shape[0]}), "
                             f"got {sigma.numel()} values")
        sigma = sigma.reshape(-1, 1, 1, 1)
        class_labels = self._class_labels(class_labels, x)
        dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32

        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in = 1 / (sigma ** 2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)


PRESETS: dict[str, dict[str, Any]] = {
    # EDM's DDPM++ CIFAR-10 configuration (55.7M parameters at 32x32x3).
    "ddpmpp": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                   decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1], model_channels=128,
                   channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.13),
    # EDM's NCSN++ CIFAR-10 configuration.
    "ncsnpp": dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
                   decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128,
                   channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.13),
    # DDPM++-style net for 32x32 MNIST on two CPU cores: 1.03M parameters, 0.31 GFLOP per image forward
    # (its speed per host kind: docs/default-run/README.md). Most of the cost sits at 32x32, so width goes
    # to the coarse levels (16 -> 32 -> 64 channels).
    "tiny": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                 decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1], model_channels=16,
                 channel_mult=[1, 2, 4], num_blocks=2, attn_resolutions=[8], dropout=0.0),
}


def _levels(img_resolution: int, channel_mult: Sequence[int]) -> list[int]:
    """The resolutions of a SongUNet's levels, finest first (img_resolution >> level)."""
    return [img_resolution >> level for level in range(len(channel_mult))]


def attention_where_missing(preset: str, img_resolution: int) -> list[int] | None:
    """The trainer's attention for a preset at a resolution where none of the preset's own attn_resolutions is a
    level: the coarsest level, where the tiny preset attends at 32x32 (tiny at 28x28: 7); None where the preset's
    apply. The trainer records it as an explicit override, so networks built before this rule load unchanged."""
    own = _levels(img_resolution, PRESETS[preset]["channel_mult"])
    return None if set(PRESETS[preset]["attn_resolutions"]) & set(own) else [own[-1]]


def build_network(preset: str, img_resolution: int, img_channels: int, label_dim: int = 0,
                  **overrides: Any) -> EDMPrecond:
    """EDMPrecond for a named preset ("ddpmpp", "ncsnpp", "tiny"); keyword overrides replace preset values.

    An `attn_resolutions` override must name levels of the network (img_resolution >> level): one that names
    none would silently add no attention, so it is refused. A preset's own attn_resolutions is not checked, as
    SongUNet (and EDM) never did: it applies where the resolution has such a level (the tiny preset's 8 at
    32x32 and 16x16) and adds nothing elsewhere (at 28x28, whose levels are 28, 14, 7); the trainer gives such a
    network attention at its coarsest level instead (`attention_where_missing`).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; choose one of {sorted(PRESETS)}")
    kwargs = copy.deepcopy(PRESETS[preset])
    kwargs.update(overrides)
    if "attn_resolutions" in overrides:
        have = _levels(img_resolution, kwargs["channel_mult"])
        if missing := sorted(set(kwargs["attn_resolutions"]) - set(have)):
            raise ValueError(f"attn_resolutions {', '.join(map(str, missing))}: the {img_resolution}x{img_resolution} "
                             f"network has no such level; its levels are {', '.join(map(str, have))}")
    return EDMPrecond(img_resolution, img_channels, label_dim=label_dim, **kwargs)
