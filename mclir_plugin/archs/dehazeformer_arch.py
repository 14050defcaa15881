"""DehazeFormer (Song et al., "Vision Transformers for Single Image Dehazing", TIP 2023) for BasicSR.

A reimplementation of IDKiro/DehazeFormer (MIT licence, (c) 2022 IDKiro) whose parameter names and shapes equal the
upstream ones, so released checkpoints load with ``strict=True``. Registered as ``DehazeFormer``; the named variants
are chosen with ``variant`` and any of the per-stage lists overrides the variant's value::

    network_g:
      type: DehazeFormer
      variant: t            # t, s, b, d, w, m or l (case-insensitive)
      input_range: [0, 1]   # what BasicSR feeds; [-1, 1] gives the raw upstream network

Caveats up front:

* **Value range.** The upstream network works on [-1, 1] (its reconstruction ``K * x - B + x`` depends on it). With
  the default ``input_range: [0, 1]`` the input is mapped ``x -> 2x - 1`` inside ``forward`` and the output back
  ``y -> (y + 1) / 2``, so BasicSR data, losses and metrics stay in [0, 1]. An L1 loss is then half the upstream
  one (upstream computes it on [-1, 1]); keep that in mind when copying learning rates or loss weights.
  ``input_range: [-1, 1]`` skips both maps and is the upstream network bit for bit.
* **No clamp** in ``forward`` (it would cut gradients). Upstream clamps to [-1, 1] at test time; BasicSR's
  ``tensor2img`` clamps to [0, 1], which is the same thing after the map.
* **Sizes.** Any H x W works as upstream does it: the input is reflect-padded bottom/right to a multiple of 4 and
  the output cropped back; each attention block reflect-pads its own map to a multiple of the window (a shifted
  block pads ``window/2`` on the top/left instead of rolling, and uses no attention mask). Reflect padding must be
  smaller than the map, so very small inputs fail upstream; here they raise a ``ValueError`` that names the
  smallest side that always works (25 px for the default variants, whose 1/4-scale stage has attention).
* **Checkpoints.** Upstream saves ``{'state_dict': net.state_dict()}`` from ``nn.DataParallel``, so every key starts
  with ``module.``. BasicSR loads it as is: ``path: {pretrain_network_g: dehazeformer-t.pth, param_key_g:
  state_dict, strict_load_g: true}``; ``load_network`` strips ``module.``. The log-spaced relative positions are a
  persistent buffer, as upstream, so they are part of the state dict.
* ``norm_layer`` accepts ``'RLN'`` only: the blocks unpack (normalised, rescale, rebias) from the norm, so a plain
  LayerNorm cannot be used upstream either. ``attn_loc`` is always ``'last'`` and ``mlp_norm`` False, as in every
  upstream model.

Parameter counts (buffers excluded) equal upstream's: T 687,404; S 1,284,884; B 2,517,612; D 4,983,068;
W 9,686,724; M 4,635,952; L 25,451,652.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from mclir_plugin.archs.frozen_cache import FrozenNegativeCache

_NARROW, _WIDE = [24, 48, 96, 48, 24], [48, 96, 192, 96, 48]
_ATTN = [1 / 4, 1 / 2, 3 / 4, 0, 0]
# The upstream factory functions; every variant uses window 8, mlp_ratios [2, 4, 4, 2, 2] and heads [2, 4, 6, 1, 1].
VARIANTS: dict[str, dict] = {
    't': dict(embed_dims=_NARROW, depths=[4, 4, 4, 2, 2], attn_ratio=[0, 1 / 2, 1, 0, 0], conv_type='DWConv'),
    's': dict(embed_dims=_NARROW, depths=[8, 8, 8, 4, 4], attn_ratio=_ATTN, conv_type='DWConv'),
    'b': dict(embed_dims=_NARROW, depths=[16, 16, 16, 8, 8], attn_ratio=_ATTN, conv_type='DWConv'),
    'd': dict(embed_dims=_NARROW, depths=[32, 32, 32, 16, 16], attn_ratio=_ATTN, conv_type='DWConv'),
    'w': dict(embed_dims=_WIDE, depths=[16, 16, 16, 8, 8], attn_ratio=_ATTN, conv_type='DWConv'),
    'm': dict(embed_dims=_NARROW, depths=[12, 12, 12, 6, 6], attn_ratio=_ATTN, conv_type='Conv'),
    'l': dict(embed_dims=_WIDE, depths=[16, 16, 16, 12, 12], attn_ratio=_ATTN, conv_type='Conv'),
}
CONV_TYPES = ('DWConv', 'Conv')


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float, bound: float = 2.0) -> torch.Tensor:
    """Fill with N(0, std^2) truncated to [-bound, bound] (absolute bounds, as timm's), by inverse-CDF sampling.

    Same distribution as ``torch.nn.init.trunc_normal_``, whose rejection sampler in current torch makes building
    DehazeFormer-L take seconds.
    """
    def cdf(v: float) -> float:
        return 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))

    tensor.uniform_(2 * cdf(-bound / std) - 1, 2 * cdf(bound / std) - 1)
    return tensor.erfinv_().mul_(std * math.sqrt(2.0)).clamp_(-bound, bound)


def _trunc_normal_init(conv: nn.Conv2d, gain: float) -> None:
    """Truncated normal with std = gain * sqrt(2 / (fan_in + fan_out)) (Xavier-like), zero bias; upstream's init."""
    w = conv.weight
    trunc_normal_(w, std=gain * math.sqrt(2.0 / ((w.shape[0] + w.shape[1]) * w[0][0].numel())))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class RLN(nn.Module):
    """Rescale-aware LayerNorm: normalise over (C, H, W) and predict the statistics to restore afterwards.

    With per-sample mean :math:`\\mu` and :math:`\\sigma = \\sqrt{\\operatorname{var} + \\epsilon}` over (C, H, W),
    returns :math:`((x - \\mu) / \\sigma \\cdot w + b,\\ \\operatorname{meta1}(\\sigma),\\ \\operatorname{meta2}(\\mu))`
    with per-channel ``w``, ``b`` and 1x1 convolutions ``meta1`` (bias initialised to 1), ``meta2`` (bias 0).

    Args:
        dim: Channels.
        eps: Added to the variance. Defaults to 1e-5.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.meta1 = nn.Conv2d(1, dim, 1)
        self.meta2 = nn.Conv2d(1, dim, 1)
        trunc_normal_(self.meta1.weight, std=0.02)
        nn.init.ones_(self.meta1.bias)  # the rescale starts at about 1
        trunc_normal_(self.meta2.weight, std=0.02)
        nn.init.zeros_(self.meta2.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = torch.sqrt((x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True) + self.eps)
        return (x - mean) / std * self.weight + self.bias, self.meta1(std), self.meta2(mean)


def relative_log_positions(window_size: int) -> torch.Tensor:
    """(N, N, 2) offsets (dy, dx) between the N = window_size**2 tokens of a window, as sign(d) * log(1 + |d|)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing='ij'))
    coords = coords.flatten(1)  # (2, N), row-major tokens
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    return torch.sign(rel) * torch.log(1. + rel.abs())


class WindowAttention(FrozenNegativeCache, nn.Module):
    """Multi-head self-attention inside a window, with a relative bias predicted by an MLP from log offsets.

    .. math::

        \\operatorname{softmax}(q k^T / \\sqrt{d_h} + \\operatorname{MLP}(\\log\\text{-offsets})) \\, v

    q, k and v come straight from the caller's 1x1 convolutions (no projection here). In a frozen negative
    (:meth:`~mclir_plugin.archs.frozen_cache.FrozenNegativeCache.freeze_for_negative`) the MLP's bias is computed once
    per state of its weights and added to the logits in place.

    Args:
        dim: Channels of each of q, k and v.
        window_size: Window side.
        num_heads: Heads.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.register_buffer('relative_positions', relative_log_positions(window_size))
        self.meta = nn.Sequential(nn.Linear(2, 256), nn.ReLU(True), nn.Linear(256, num_heads))

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        """(windows, N, 3 * dim) with channels [q, k, v] -> (windows, N, dim)."""
        num_win, n, _ = qkv.shape
        q, k, v = qkv.reshape(num_win, n, 3, self.num_heads, self.dim // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(self.add_bias((q * self.scale) @ k.transpose(-2, -1), self._bias, cache=True), dim=-1)
        return (attn @ v).transpose(1, 2).reshape(num_win, n, self.dim)

    def _bias(self) -> torch.Tensor:
        """The relative bias, (heads, N, N)."""
        return self.meta(self.relative_positions).permute(2, 0, 1)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of ``ws`` -> (B * H/ws * W/ws, ws*ws, C), tokens row-major in a window."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: -> (B, C, h, w)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(-1, c, h, w)


class Attention(nn.Module):
    """Token mixer of a block: windowed attention and/or a convolution on V, then a 1x1 projection.

    ========================= ==================================================
    block                     output
    ========================= ==================================================
    attention                 ``proj(conv(V) + attn(QK, V))``
    DWConv, no attention      ``proj(conv(V))``
    Conv, no attention        ``conv(X)`` (no V, no proj)
    ========================= ==================================================

    ``conv`` is a 5x5 depth-wise conv (``DWConv``) or Conv3x3-ReLU-Conv3x3 (``Conv``), reflect-padded.

    Args:
        network_depth: Total number of blocks (sets the init gain ``(8 * depth) ** -0.25``).
        dim: Channels.
        num_heads: Attention heads.
        window_size: Window side.
        shift_size: Shift of the windows (0 or window_size // 2), done by reflect padding.
        use_attn: Whether this block attends.
        conv_type: ``'DWConv'`` or ``'Conv'``.
    """

    def __init__(self, network_depth: int, dim: int, num_heads: int, window_size: int, shift_size: int,
                 use_attn: bool, conv_type: str) -> None:
        super().__init__()
        self.dim, self.window_size, self.shift_size = dim, window_size, shift_size
        self.use_attn, self.conv_type = use_attn, conv_type
        if conv_type == 'Conv':
            self.conv = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, padding_mode='reflect'), nn.ReLU(True),
                                      nn.Conv2d(dim, dim, 3, padding=1, padding_mode='reflect'))
        else:
            self.conv = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, padding_mode='reflect')
        if conv_type == 'DWConv' or use_attn:
            self.V = nn.Conv2d(dim, dim, 1)
            self.proj = nn.Conv2d(dim, dim, 1)
        if use_attn:
            self.QK = nn.Conv2d(dim, dim * 2, 1)
            self.attn = WindowAttention(dim, window_size, num_heads)
        gain = (8 * network_depth) ** -0.25
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _trunc_normal_init(m, 1.0 if m is getattr(self, 'QK', None) else gain)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad to a multiple of the window; a shifted block moves the grid by padding top/left."""
        ws, s = self.window_size, self.shift_size
        pad_h, pad_w = (-x.shape[2]) % ws, (-x.shape[3]) % ws
        if s > 0:
            return F.pad(x, (s, (ws - s + pad_w) % ws, s, (ws - s + pad_h) % ws), mode='reflect')
        return F.pad(x, (0, pad_w, 0, pad_h), mode='reflect')

    def _window_attention(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        h, w, s = x.shape[2], x.shape[3], self.shift_size
        qkv = self._pad(torch.cat([self.QK(x), v], dim=1))
        hp, wp = qkv.shape[2:]
        out = self.attn(window_partition(qkv, self.window_size))
        return window_reverse(out, self.window_size, hp, wp)[:, :, s:s + h, s:s + w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_type == 'Conv' and not self.use_attn:
            return self.conv(x)
        v = self.V(x)
        out = self.conv(v)
        if self.use_attn:
            out = out + self._window_attention(x, v)
        return self.proj(out)


class Mlp(nn.Module):
    """Conv1x1 -> ReLU -> Conv1x1 (``mlp``), initialised with the depth-scaled gain.

    Args:
        network_depth: Total number of blocks (init gain ``(8 * depth) ** -0.25``).
        dim: Input and output channels.
        hidden: Hidden channels.
    """

    def __init__(self, network_depth: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.ReLU(True), nn.Conv2d(hidden, dim, 1))
        for conv in (self.mlp[0], self.mlp[2]):
            _trunc_normal_init(conv, (8 * network_depth) ** -0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class TransformerBlock(nn.Module):
    """``x + mixer(x)`` then ``x + MLP(x)``; attention blocks wrap the mixer in RLN and its rescale/rebias.

    Args:
        network_depth: Total number of blocks (init gain).
        dim: Channels.
        num_heads: Attention heads.
        mlp_ratio: Hidden channels of the MLP relative to ``dim``.
        norm_layer: The norm class (RLN); used only with attention.
        window_size: Window side.
        shift_size: Window shift.
        use_attn: Whether the block attends.
        conv_type: ``'DWConv'`` or ``'Conv'``.
    """

    def __init__(self, network_depth: int, dim: int, num_heads: int, mlp_ratio: float, norm_layer: type,
                 window_size: int, shift_size: int, use_attn: bool, conv_type: str) -> None:
        super().__init__()
        self.use_attn = use_attn
        self.norm1 = norm_layer(dim) if use_attn else nn.Identity()
        self.attn = Attention(network_depth, dim, num_heads, window_size, shift_size, use_attn, conv_type)
        self.mlp = Mlp(network_depth, dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_attn:
            y, rescale, rebias = self.norm1(x)
            x = x + self.attn(y) * rescale + rebias
        else:
            x = x + self.attn(x)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """``depth`` blocks at one scale; the last ``attn_ratio * depth`` attend, odd blocks shift their windows.

    Args:
        network_depth: Total number of blocks (init gain).
        dim: Channels.
        depth: Blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP expansion.
        norm_layer: Norm class for attention blocks.
        window_size: Window side.
        attn_ratio: Share of blocks, counted from the end, that attend.
        conv_type: ``'DWConv'`` or ``'Conv'``.
    """

    def __init__(self, network_depth: int, dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 norm_layer: type, window_size: int, attn_ratio: float, conv_type: str) -> None:
        super().__init__()
        first_attn = depth - attn_ratio * depth  # compared as a float, as upstream
        self.blocks = nn.ModuleList([
            TransformerBlock(network_depth, dim, num_heads, mlp_ratio, norm_layer, window_size,
                             0 if i % 2 == 0 else window_size // 2, i >= first_attn, conv_type)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class ConvEmbed(nn.Module):
    """A strided reflect-padded conv (``proj``): the patch embedding (3x3, stride 1) and the 2x2/s2 merges."""

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride=stride,
                              padding=(kernel_size - stride + 1) // 2, padding_mode='reflect')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ConvUnEmbed(nn.Module):
    """Conv to ``out_chans * scale**2`` channels then PixelShuffle(scale) (``proj``): the splits and the output."""

    def __init__(self, embed_dim: int, out_chans: int, kernel_size: int, scale: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans * scale ** 2, kernel_size, padding=kernel_size // 2, padding_mode='reflect'),
            nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class SKFusion(nn.Module):
    """Selective-kernel fusion of two feature maps: softmax weights over the branches from their pooled sum.

    With :math:`s = \\operatorname{GAP}(a + b)` and ``a_w, b_w = softmax over branches of MLP(s)`` (per channel),
    returns :math:`a_w a + b_w b`; the MLP is 1x1 convs dim -> max(dim/8, 4) -> 2 dim, no bias.

    Args:
        dim: Channels of each input.
        height: Number of inputs. Defaults to 2.
        reduction: MLP reduction. Defaults to 8.
    """

    def __init__(self, dim: int, height: int = 2, reduction: int = 8) -> None:
        super().__init__()
        self.height = height
        d = max(int(dim / reduction), 4)
        self.mlp = nn.Sequential(nn.Conv2d(dim, d, 1, bias=False), nn.ReLU(),
                                 nn.Conv2d(d, dim * height, 1, bias=False))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        b, c = feats[0].shape[:2]
        stacked = torch.stack(list(feats), dim=1)  # (B, height, C, H, W)
        weights = self.mlp(stacked.sum(dim=1).mean(dim=(2, 3), keepdim=True))
        weights = torch.softmax(weights.view(b, self.height, c, 1, 1), dim=1)
        return (stacked * weights).sum(dim=1)


def _per_stage(value, name: str) -> list:
    """A value for each of the 5 stages: a 5-list as given, or one scalar/string repeated."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * 5
    if len(values) != 5:
        raise ValueError(f'DehazeFormer: {name} needs 5 entries (one per stage), got {value!r}.')
    return values


@ARCH_REGISTRY.register()
class DehazeFormer(nn.Module):
    """DehazeFormer: a 5-stage U-shaped Swin-style network with soft reconstruction ``K * x - B + x``.

    Encoder (full, 1/2, 1/4 resolution), decoder (1/2, full) with SK-fusion skips; the last conv predicts a
    1-channel K and a 3-channel B. Per-stage lists have 5 entries; those left ``None`` come from ``variant``.

    Args:
        variant: ``'t'``, ``'s'``, ``'b'``, ``'d'``, ``'w'``, ``'m'`` or ``'l'`` (case-insensitive). Defaults to
            ``'b'`` (upstream's constructor defaults are B).
        embed_dims: Channels per stage; stages 2/4 and 1/5 must match. Defaults to the variant's.
        depths: Blocks per stage. Defaults to the variant's.
        num_heads: Attention heads per stage. Defaults to ``[2, 4, 6, 1, 1]``.
        mlp_ratios: MLP expansion per stage. Defaults to ``[2, 4, 4, 2, 2]``.
        attn_ratio: Share of each stage's blocks (the last ones) that attend. Defaults to the variant's.
        conv_type: ``'DWConv'`` or ``'Conv'``, per stage or one for all. Defaults to the variant's.
        norm_layer: ``'RLN'`` (per stage or one for all). Defaults to ``'RLN'``.
        window_size: Attention window side. Defaults to 8.
        in_chans: Image channels. Defaults to 3.
        input_range: ``[low, high]`` of the images fed in and returned; mapped linearly to the network's
            [-1, 1] and back. ``[-1, 1]`` is the raw upstream network. Defaults to ``[0, 1]``.
    """

    def __init__(self,
                 variant: str = 'b',
                 embed_dims: Sequence[int] | None = None,
                 depths: Sequence[int] | None = None,
                 num_heads: Sequence[int] | None = None,
                 mlp_ratios: Sequence[float] | None = None,
                 attn_ratio: Sequence[float] | None = None,
                 conv_type: str | Sequence[str] | None = None,
                 norm_layer: str | type | Sequence[str | type] = 'RLN',
                 window_size: int = 8,
                 in_chans: int = 3,
                 input_range: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__()
        if str(variant).lower() not in VARIANTS:
            raise ValueError(f'DehazeFormer: unknown variant {variant!r}; choose one of {sorted(VARIANTS)}.')
        preset = VARIANTS[str(variant).lower()]
        embed_dims = _per_stage(embed_dims if embed_dims is not None else preset['embed_dims'], 'embed_dims')
        depths = _per_stage(depths if depths is not None else preset['depths'], 'depths')
        num_heads = _per_stage(num_heads if num_heads is not None else [2, 4, 6, 1, 1], 'num_heads')
        mlp_ratios = _per_stage(mlp_ratios if mlp_ratios is not None else [2., 4., 4., 2., 2.], 'mlp_ratios')
        attn_ratio = _per_stage(attn_ratio if attn_ratio is not None else preset['attn_ratio'], 'attn_ratio')
        conv_type = _per_stage(conv_type if conv_type is not None else preset['conv_type'], 'conv_type')
        norms = [RLN if n in ('RLN', RLN) else None for n in _per_stage(norm_layer, 'norm_layer')]
        if None in norms:
            raise ValueError(f"DehazeFormer: norm_layer must be 'RLN' (the blocks need its rescale/rebias), "
                             f'got {norm_layer!r}.')
        if any(t not in CONV_TYPES for t in conv_type):
            raise ValueError(f'DehazeFormer: conv_type entries must be in {CONV_TYPES}, got {conv_type!r}.')
        if embed_dims[1] != embed_dims[3] or embed_dims[0] != embed_dims[4]:
            raise ValueError(f'DehazeFormer: embed_dims[1] must equal embed_dims[3], and embed_dims[0] must equal '
                             f'embed_dims[4] (skip fusions), got {embed_dims}.')
        low, high = (float(v) for v in input_range)
        if not high > low:
            raise ValueError(f'DehazeFormer: input_range must be [low, high] with high > low, got {input_range!r}.')
        self.input_range = (low, high)
        self.window_size = window_size
        self.config = dict(embed_dims=embed_dims, depths=depths, num_heads=num_heads, mlp_ratios=mlp_ratios,
                           attn_ratio=attn_ratio, conv_type=conv_type)

        total = sum(depths)
        d = embed_dims

        def layer(i: int) -> BasicLayer:
            return BasicLayer(total, d[i], depths[i], num_heads[i], mlp_ratios[i], norms[i], window_size,
                              attn_ratio[i], conv_type[i])

        self.patch_embed = ConvEmbed(in_chans, d[0], 3, 1)
        self.layer1 = layer(0)
        self.patch_merge1 = ConvEmbed(d[0], d[1], 2, 2)
        self.skip1 = nn.Conv2d(d[0], d[0], 1)
        self.layer2 = layer(1)
        self.patch_merge2 = ConvEmbed(d[1], d[2], 2, 2)
        self.skip2 = nn.Conv2d(d[1], d[1], 1)
        self.layer3 = layer(2)
        self.patch_split1 = ConvUnEmbed(d[2], d[3], 1, 2)
        self.fusion1 = SKFusion(d[3])
        self.layer4 = layer(3)
        self.patch_split2 = ConvUnEmbed(d[3], d[4], 1, 2)
        self.fusion2 = SKFusion(d[4])
        self.layer5 = layer(4)
        self.patch_unembed = ConvUnEmbed(d[4], in_chans + 1, 3, 1)  # K (1 channel) and B (in_chans)
        # what the reflect paddings need, checked in forward: (scale, conv_type) per stage, (scale, shift) per
        # attention block
        self._conv_pads = [(scale, t) for scale, t, n in zip([1, 2, 4, 2, 1], conv_type, depths) if n > 0]
        self._attn_pads = [(scale, block.attn.shift_size)
                           for scale, stage in zip([1, 2, 4, 2, 1], [self.layer1, self.layer2, self.layer3,
                                                                     self.layer4, self.layer5])
                           for block in stage.blocks if block.use_attn]

    def fits(self, side: int) -> bool:
        """Whether an image side of ``side`` pixels passes every reflect padding (upstream fails otherwise).

        Reflect padding must be smaller than the padded dimension: the pad to a multiple of 4, each conv's
        ``kernel // 2`` at its scale, and each attention block's pad to a multiple of the window.
        """
        ws, padded = self.window_size, side + (-side) % 4
        if (-side) % 4 >= side:
            return False
        for scale, conv_type in self._conv_pads:
            if padded // scale <= (2 if conv_type == 'DWConv' else 1):
                return False
        for scale, shift in self._attn_pads:
            m = padded // scale
            pads = (shift, (ws - shift + (-m) % ws) % ws) if shift else ((-m) % ws,)
            if max(pads) >= m:
                return False
        return True

    @property
    def min_size(self) -> int:
        """The smallest side from which every larger side fits (from 4 * window_size on, every side does)."""
        side = 4 * max(self.window_size, 3)
        while side > 1 and self.fits(side - 1):
            side -= 1
        return side

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The U-net on a [-1, 1] image whose sides are multiples of 4; returns the (K, B) map."""
        x = self.layer1(self.patch_embed(x))
        skip1 = x
        x = self.layer2(self.patch_merge1(x))
        skip2 = x
        x = self.patch_split1(self.layer3(self.patch_merge2(x)))
        x = self.fusion1([x, self.skip2(skip2)]) + x
        x = self.patch_split2(self.layer4(x))
        x = self.fusion2([x, self.skip1(skip1)]) + x
        return self.patch_unembed(self.layer5(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        if not (self.fits(h) and self.fits(w)):
            raise ValueError(f'DehazeFormer: a {h}x{w} input is too small for its reflect paddings; use sides '
                             f'of at least {self.min_size} px (or pad the image).')
        low, high = self.input_range
        raw = (low, high) == (-1.0, 1.0)
        if not raw:
            x = (x - low) * (2.0 / (high - low)) - 1.0
        x_pad = F.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode='reflect')
        k, b = torch.split(self.forward_features(x_pad), (1, x.shape[1]), dim=1)
        out = (k * x_pad - b + x_pad)[:, :, :h, :w]
        return out if raw else (out + 1.0) * ((high - low) / 2.0) + low

    def extra_repr(self) -> str:
        return ', '.join(f'{k}={v}' for k, v in self.config.items()) + f', input_range={list(self.input_range)}'
