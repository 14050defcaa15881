"""IDT, the Image De-raining Transformer (Xiao, Fu, Liu, Wu and Zha, TPAMI 2022), registered as ``IDT``.

A port of the authors' ``model.py`` (github.com/jiexiaou/IDT at d72510c, MIT licence, Copyright (c) 2022 JieXiao),
rewritten without timm/einops. Parameter names and shapes are upstream's; with equal weights the output is
bit-identical to upstream's on CPU (tiled: within 4e-7, from batching the tiles). The random initialisation is
upstream's too: under the same ``torch.manual_seed`` both constructors draw identical weights (same module order,
same inverse-CDF truncated normal as upstream's timm copy). ``tests/archs/golden/golden_idt.pt`` holds upstream outputs.

Caveats up front:

* **Fixed input size.** The network runs only on ``img_size`` x ``img_size`` inputs (128 in every published model):
  the spatial layers' attention grids, their relative-position tables and their position convolutions are built
  for that size, and token sequences are folded back into square maps of side ``sqrt(L)``. Any other input raises
  a ``ValueError`` unless ``tile=True`` (below). ``img_size`` must be 64 or a multiple of 128.
* **Token-order quirk (kept on purpose).** The spatial layer treats each channel of the (C, H, W) map as
  ``n = (H/8)(W/8)`` tokens, token ``j`` being the j-th 8x8 window in raster order and its 64 features the window's
  pixels ``p`` in raster order; attention runs across windows. Upstream writes the result ``Y[c, j, p]`` back as
  sequence position ``t = 64 j + p`` and adds it to the raster-ordered shortcut, whose position ``t`` is pixel
  ``(t // W, t % W)``. For ``W > 8`` the output of window ``j`` therefore lands on pixels outside window ``j``:
  a fixed permutation, which the trained weights have adapted to. It is reproduced exactly; "fixing" it would give
  a different network that published checkpoints do not fit.
* **``depths`` only sets the drop-path schedule.** The number of window blocks per stage is fixed at
  (3, 3, 2, 2, 1, 1, 2, 2, 3), as upstream hard-codes it. The default here is the list upstream's training and test
  scripts pass; the upstream class default ``[2] * 9`` changes drop-path rates only (parameter count unchanged).
* **Left out:** upstream's ``mask`` argument and shifted-window code (never used: every shift is 0), and the unused
  ``patch_norm``/``norm_layer``/``dowsample``/``upsample`` arguments.
* **Tiled evaluation** (``tile=True``) reproduces upstream's ``test_full_size.py``: ``img_size`` tiles every
  ``img_size - tile_overlap`` pixels with the last one flush with the border, merged with weights that fall off with
  the distance from the tile centre. Two extensions: images smaller than a tile are padded (reflect, or replicate
  where the image is too small to reflect) instead of failing as upstream does for sides <= 128, and the merge does
  not clamp to [0, 1] (upstream clamps afterwards; BasicSR's ``tensor2img`` does the same before metrics/saving).

Loading published checkpoints (strict): upstream saves ``DataParallel(model).state_dict()`` as a bare dict whose
keys start with ``module.``. In a BasicSR option file set ``path: {pretrain_network_g: <file>, param_key_g: ~,
strict_load_g: true}``; BasicSR strips the ``module.`` prefix itself. In plain PyTorch::

    state = torch.load(file, map_location='cpu')
    net.load_state_dict({k.removeprefix('module.'): v for k, v in state.items()}, strict=True)

The relative-position index tensors are non-persistent buffers (plain attributes upstream), so the state dict has
exactly upstream's 571 entries.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn
from torch.utils import checkpoint

from mclir_plugin.archs.frozen_cache import FrozenNegativeCache

SPATIAL_WINDOW = 8  # window side of the spatial layers: upstream never overrides it, whatever win_size is
ENC_BLOCKS, DEC_BLOCKS = (3, 3, 2, 2), (1, 2, 2, 3)  # window blocks per stage, hard-coded upstream
ENC_K_BOUNDS, DEC_K_BOUNDS = (16, 8, 4, 2), (2, 4, 8, 16)  # clamp of the spatial layers' relative positions


def trunc_normal_(tensor: Tensor, std: float = 0.02, a: float = -2., b: float = 2.) -> Tensor:
    """Fill ``tensor`` from N(0, std^2) truncated to [a, b] by the inverse-CDF method.

    With the normal CDF :math:`\\Phi`, draw :math:`u \\sim U(2\\Phi(a/\\sigma) - 1, 2\\Phi(b/\\sigma) - 1)` and set
    :math:`x = \\sqrt{2}\\,\\sigma\\,\\operatorname{erf}^{-1}(u)`, clamped to [a, b]. This is the method of the timm
    copy upstream uses; ``torch.nn.init.trunc_normal_`` now samples differently, so it would not reproduce upstream's
    initialisation for a given seed. (As upstream, a and b are absolute, so std 0.02 is in effect untruncated.)
    """
    def cdf(v: float) -> float:
        return (1. + math.erf(v / math.sqrt(2.))) / 2.

    with torch.no_grad():
        tensor.uniform_(2 * cdf(a / std) - 1, 2 * cdf(b / std) - 1).erfinv_()
        return tensor.mul_(std * math.sqrt(2.)).clamp_(min=a, max=b)


def tokens_to_map(x: Tensor) -> Tensor:
    """(B, L, C) raster-ordered tokens to a (B, C, s, s) map, s = sqrt(L)."""
    b, length, c = x.shape
    side = math.isqrt(length)
    return x.transpose(1, 2).reshape(b, c, side, side)


def map_to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) map to (B, H*W, C) raster-ordered tokens."""
    return x.flatten(2).transpose(1, 2)


def relative_position_index(grid: int, k_bound: int) -> Tensor:
    """Table index of every token pair of a ``grid`` x ``grid`` window (tokens in raster order).

    ``index[i, j] = (dy + k - 1)(2k - 1) + (dx + k - 1)`` with ``(dy, dx) = clamp(pos_i - pos_j, -(k-1), k-1)``,
    ``k = k_bound``: offsets beyond ``k - 1`` share the border entries of the (2k-1)^2-row table.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing='ij')).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).clamp(1 - k_bound, k_bound - 1) + k_bound - 1
    return rel[0] * (2 * k_bound - 1) + rel[1]


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Tile offsets along one axis of ``length >= size`` pixels, as upstream's ``splitimage``.

    Offsets ``0, s, 2s, ...`` (``s = size - overlap``) while the tile ends before the border, then one tile flush
    with it (``length - size``); the last two may overlap by more than ``overlap``.
    """
    return [start for start in range(0, length, size - overlap) if start + size < length] + [length - size]


def centre_weights(size: int) -> Tensor:
    """Merge weights of a ``size`` x ``size`` tile: ``w(i, j) = 1 / sqrt((i - size/2)^2 + (j - size/2)^2 + 1e-3)``.

    Computed in float64 and rounded once, which gives upstream's ``get_scoremap`` values bit for bit.
    """
    r = torch.arange(size, dtype=torch.float64) - size / 2
    return 1 / torch.sqrt(r[:, None] ** 2 + r[None, :] ** 2 + 1e-3)


def pad_to(x: Tensor, size: int) -> Tensor:
    """Pad the bottom and right of ``x`` to at least ``size`` pixels: reflect, or replicate if the side is too short."""
    for dim, pad in ((-2, lambda n: (0, 0, 0, n)), (-1, lambda n: (0, n, 0, 0))):
        missing = size - x.shape[dim]
        if missing > 0:
            x = F.pad(x, pad(missing), mode='reflect' if missing < x.shape[dim] else 'replicate')
    return x


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``p``, scale the rest by 1/(1-p).

    Args:
        p: Drop probability. Defaults to 0.
    """

    def __init__(self, p: float = 0.) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0 or not self.training:
            return x
        keep = 1 - self.p
        mask = torch.rand((x.shape[0], ) + (1, ) * (x.dim() - 1), dtype=x.dtype, device=x.device).add_(keep).floor_()
        return x.div(keep) * mask

    def extra_repr(self) -> str:
        return f'p={self.p}'


class LinearProjection(nn.Module):
    """Query, key, value and positional value ``v_r`` of a window: ``q = x W_q``, ``[k, v, v_r] = x W_kv``.

    Args:
        dim: Token width C.
        heads: Number of heads (dividing C).
        bias: Linear biases. Defaults to True.
    """

    def __init__(self, dim: int, heads: int, bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(dim, 3 * dim, bias=bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B', N, C) tokens to q, k, v of shape (B', heads, N, C/heads) and ``v_r`` as a (B', C, s, s) map."""
        b, n, c = x.shape
        q = self.to_q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        k, v, v_r = self.to_kv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        side = math.isqrt(n)
        return q, k, v, v_r.transpose(-1, -2).reshape(b, c, side, side)  # head-major channels


class WindowAttention(FrozenNegativeCache, nn.Module):
    """Relative-position enhanced multi-head self-attention over one square window of ``win_size^2`` tokens.

    .. math::

        \\operatorname{out} = \\Big(\\operatorname{softmax}\\big(q k^\\top / \\sqrt{d} + B\\big)\\, v
            + \\operatorname{PE}(v_r)\\Big) W_o,
        \\qquad B_h[i, j] = T[\\operatorname{index}(i, j), h]

    with ``d = dim / num_heads``, ``T`` the learnt ((2k-1)^2, heads) table (``k = k_bound``, see
    :func:`relative_position_index`), and ``PE`` a depthwise conv (5x5, 3x3 or 1x1 as the window allows) followed by
    a 1x1 conv grouped by head, applied to ``v_r`` laid out as a window-shaped map. In a frozen negative
    (:meth:`~mclir_plugin.archs.frozen_cache.FrozenNegativeCache.freeze_for_negative`) ``B`` is added to the logits in
    place (gathering it is too cheap to cache).

    Args:
        dim: Token width.
        win_size: Window side, in tokens.
        num_heads: Number of heads (dividing ``dim``).
        qkv_bias: Biases of the q/kv projections. Defaults to True.
        qk_scale: Overrides ``d^-1/2``. Defaults to None.
        k_bound: Clamp of relative offsets. Defaults to 8.
    """

    def __init__(self,
                 dim: int,
                 win_size: int,
                 num_heads: int,
                 qkv_bias: bool = True,
                 qk_scale: float | None = None,
                 k_bound: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'IDT: {num_heads} heads do not divide a width of {dim} channels.')
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads)**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * k_bound - 1)**2, num_heads))
        reach = min(win_size - 1, 2)
        self.Position_Extract = nn.Sequential(  # upstream's name, kept for checkpoint keys
            nn.Conv2d(dim, dim, 2 * reach + 1, padding=reach, groups=dim),
            nn.Conv2d(dim, dim, 1, groups=num_heads))
        self.register_buffer('relative_position_index', relative_position_index(win_size, k_bound), persistent=False)
        self.qkv = LinearProjection(dim, num_heads, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v, v_r = self.qkv(x)
        attn = torch.softmax(self.add_bias((q * self.scale) @ k.transpose(-2, -1), self._bias), dim=-1)
        position = self.Position_Extract(v_r).reshape(b, c, n).transpose(1, 2)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c) + position)

    def _bias(self) -> Tensor:
        """``B``, (1, heads, N, N)."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)


class LeFF(nn.Module):
    """Locally enhanced feed-forward: ``h = GELU(x W_1)``, ``h = h + GELU(DWConv3x3(h))``, ``out = h W_2``.

    Args:
        dim: Token width.
        hidden_dim: Hidden width.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU())
        self.dwconv = nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim), nn.GELU())
        self.linear2 = nn.Sequential(nn.Linear(hidden_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = tokens_to_map(self.linear1(x))
        return self.linear2(map_to_tokens(self.dwconv(h) + h))


class IDTBlock(nn.Module):
    """Pre-norm window transformer block, never shifted: ``x += WA(LN1(x))`` per window, then ``x += LeFF(LN2(x))``.

    Args:
        dim: Token width.
        resolution: Side of the (square) token map.
        num_heads: Number of heads.
        win_size: Window side; shrinks to ``resolution`` when that is smaller. Defaults to 8.
        mlp_ratio: LeFF hidden width over ``dim``. Defaults to 4.
        qkv_bias: See :class:`WindowAttention`. Defaults to True.
        qk_scale: See :class:`WindowAttention`. Defaults to None.
        drop_path: Stochastic depth rate of both branches. Defaults to 0.
    """

    def __init__(self,
                 dim: int,
                 resolution: int,
                 num_heads: int,
                 win_size: int = 8,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 qk_scale: float | None = None,
                 drop_path: float = 0.) -> None:
        super().__init__()
        self.win_size = min(win_size, resolution)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.win_size, num_heads, qkv_bias, qk_scale)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LeFF(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        b, length, c = x.shape
        w = self.win_size
        n = math.isqrt(length) // w  # windows per side
        windows = self.norm1(x).reshape(b, n, w, n, w, c).transpose(2, 3).reshape(-1, w * w, c)
        out = self.attn(windows).reshape(b, n, n, w, w, c).transpose(2, 3).reshape(b, length, c)
        x = x + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SpatialTransformerLayer(nn.Module):
    """Attention across 8x8 windows, per channel, plus a LeFF (see the module notes for its token order).

    Each (sample, channel) pair is a sequence of ``(res/8)^2`` window tokens of width 64; there is no norm before the
    attention. The LeFF runs on the C-channel tokens with a hidden width of ``64 * mlp_ratio`` whatever C is.

    Args:
        resolution: Side of the token map.
        num_heads: Number of heads (dividing 64).
        channel: Token width C of the stage.
        mlp_ratio: LeFF hidden width over 64. Defaults to 4.
        qkv_bias: See :class:`WindowAttention`. Defaults to True.
        qk_scale: See :class:`WindowAttention`. Defaults to None.
        drop_path: Stochastic depth rate. Defaults to 0.
        k_bound: Clamp of window offsets. Defaults to 8.
    """

    def __init__(self,
                 resolution: int,
                 num_heads: int,
                 channel: int,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 qk_scale: float | None = None,
                 drop_path: float = 0.,
                 k_bound: int = 8) -> None:
        super().__init__()
        dim = SPATIAL_WINDOW**2
        self.attn = WindowAttention(dim, resolution // SPATIAL_WINDOW, num_heads, qkv_bias, qk_scale, k_bound)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(channel)
        self.mlp = LeFF(channel, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        b, length, c = x.shape
        w = SPATIAL_WINDOW
        # unfold: (B, C*64, n) with channel-major rows, i.e. (B*C, 64, n); tokens are windows in raster order
        windows = F.unfold(tokens_to_map(x), w, stride=w).reshape(b * c, w * w, -1).transpose(1, 2)
        out = self.attn(windows)
        # upstream's fold: position 64*j + p gets window j, pixel p (window-major, not raster: the quirk)
        out = out.reshape(b, c, -1, w * w).permute(0, 2, 3, 1).reshape(b, length, c)
        x = x + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicIDTLayer(nn.Module):
    """One stage: ``num_blocks`` :class:`IDTBlock` s, then a :class:`SpatialTransformerLayer` if ``spatial``.

    Args:
        dim: Token width.
        resolution: Side of the token map.
        num_heads: Number of heads.
        num_blocks: Number of window blocks.
        drop_path: The stage's drop-path rates: the window blocks use the first, the spatial layer the last.
        win_size: Window side of the blocks. Defaults to 8.
        mlp_ratio: LeFF width ratio. Defaults to 4.
        qkv_bias: See :class:`WindowAttention`. Defaults to True.
        qk_scale: See :class:`WindowAttention`. Defaults to None.
        k_bound: Clamp of the spatial layer's offsets. Defaults to 8.
        spatial: Append the spatial layer. Defaults to True.
        use_checkpoint: Recompute each block in the backward pass to save memory. Defaults to False.
    """

    def __init__(self,
                 dim: int,
                 resolution: int,
                 num_heads: int,
                 num_blocks: int,
                 drop_path: Sequence[float],
                 win_size: int = 8,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 qk_scale: float | None = None,
                 k_bound: int = 8,
                 spatial: bool = True,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        blocks = [
            IDTBlock(dim, resolution, num_heads, win_size, mlp_ratio, qkv_bias, qk_scale, drop_path[0])
            for _ in range(num_blocks)
        ]
        if spatial:
            blocks.append(
                SpatialTransformerLayer(resolution, num_heads, dim, mlp_ratio, qkv_bias, qk_scale, drop_path[-1],
                                        k_bound))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class InputProj(nn.Module):
    """Conv3x3 + LeakyReLU(0.01), image to tokens."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return map_to_tokens(self.proj(x))


class OutputProj(nn.Module):
    """Conv3x3 without activation, tokens to image."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(tokens_to_map(x))


class Downsample(nn.Module):
    """Conv4x4, stride 2, on the token map: half the side."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return map_to_tokens(self.conv(tokens_to_map(x)))


class Upsample(nn.Module):
    """ConvTranspose2x2, stride 2, on the token map: twice the side."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.deconv = nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2))

    def forward(self, x: Tensor) -> Tensor:
        return map_to_tokens(self.deconv(tokens_to_map(x)))


def check_img_size(img_size: int, win_size: int) -> None:
    """Raise unless every stage side ``img_size / 2^i`` (i = 0..4) fits the windows and the spatial layers' 8x8 grid."""
    for i in range(5):
        side = img_size / 2**i
        fits = side == int(side) and side % min(win_size, side) == 0 and (i == 4 or side % SPATIAL_WINDOW == 0)
        if not fits:
            raise ValueError(f'IDT: img_size {img_size} does not fit its stages (side {side} at stage {i}); use 128 '
                             '(the published size), 64 or another multiple of 128.')


@ARCH_REGISTRY.register()
class IDT(nn.Module):
    """Image De-raining Transformer: a 4-level U-shaped transformer with a global residual, ``x + f(x)``.

    Stages (E = ``embed_dim``, s = ``img_size``): input Conv3x3 (3 -> E); encoders at widths E, 2E, 4E, 8E and sides
    s, s/2, s/4, s/8, each followed by a stride-2 Conv4x4 doubling the width; a 16E bottleneck at s/16 without a
    spatial layer; decoders at widths 16E, 8E, 4E, 2E, each fed ``[upsampled, skip]`` concatenated on channels;
    output Conv3x3 (2E -> 3). Input and output are in [0, 1].

    Args:
        img_size: The one input side the network accepts. Defaults to 128.
        in_chans: Image channels. Defaults to 3.
        embed_dim: E. Defaults to 32.
        depths: Nine numbers setting the drop-path schedule only (see the module notes). Defaults to
            ``(3, 3, 2, 2, 1, 1, 2, 2, 3)``.
        num_heads: Heads of the nine stages. Defaults to ``(1, 2, 4, 8, 16, 16, 8, 4, 2)``.
        win_size: Window side of the window blocks. Defaults to 8.
        mlp_ratio: LeFF width ratio. Defaults to 4.
        qkv_bias: Biases of the q/kv projections. Defaults to True.
        qk_scale: Overrides the attention scale ``d^-1/2``. Defaults to None.
        drop_path_rate: Largest stochastic depth rate. Defaults to 0.1.
        use_checkpoint: Gradient checkpointing of every block. Defaults to False.
        tile: Accept any input size >= 1 by tiling: inputs that are not ``img_size`` x ``img_size`` go through
            :meth:`forward_tiled`. Without it they raise a ValueError. Defaults to False.
        tile_overlap: Overlap of neighbouring tiles, in pixels (upstream's evaluation uses 20). Defaults to 20.
        tile_batch: Tiles per forward pass in :meth:`forward_tiled`. Defaults to 8.
    """

    def __init__(self,
                 img_size: int = 128,
                 in_chans: int = 3,
                 embed_dim: int = 32,
                 depths: Sequence[int] = (3, 3, 2, 2, 1, 1, 2, 2, 3),
                 num_heads: Sequence[int] = (1, 2, 4, 8, 16, 16, 8, 4, 2),
                 win_size: int = 8,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 qk_scale: float | None = None,
                 drop_path_rate: float = 0.1,
                 use_checkpoint: bool = False,
                 tile: bool = False,
                 tile_overlap: int = 20,
                 tile_batch: int = 8) -> None:
        super().__init__()
        if len(depths) != 9 or len(num_heads) != 9 or min(depths) < 1:
            raise ValueError(f'IDT: depths and num_heads need 9 entries each (depths >= 1), got {list(depths)} and '
                             f'{list(num_heads)}.')
        if not 0 <= tile_overlap < img_size or tile_batch < 1:
            raise ValueError(f'IDT: need 0 <= tile_overlap < img_size ({img_size}) and tile_batch >= 1, got '
                             f'{tile_overlap} and {tile_batch}.')
        check_img_size(img_size, win_size)
        self.img_size, self.tile, self.tile_overlap, self.tile_batch = img_size, tile, tile_overlap, tile_batch
        e = embed_dim
        common = dict(win_size=win_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                      use_checkpoint=use_checkpoint)
        # drop path: linspace over the encoder depths, stage i takes its slice; the decoder mirrors it
        enc_dpr = torch.linspace(0, drop_path_rate, sum(depths[:4])).tolist()
        enc_cut = [sum(depths[:i]) for i in range(5)]
        dec_dpr, dec_cut = enc_dpr[::-1], [sum(depths[5:5 + i]) for i in range(5)]

        # creation order as upstream's, so that a seed draws the same weights
        self.input_proj = InputProj(in_chans, e)
        self.output_proj = OutputProj(2 * e, in_chans)
        for i in range(4):
            setattr(self, f'encoderlayer_{i}',
                    BasicIDTLayer(e * 2**i, img_size // 2**i, num_heads[i], ENC_BLOCKS[i],
                                  enc_dpr[enc_cut[i]:enc_cut[i + 1]], k_bound=ENC_K_BOUNDS[i], **common))
            setattr(self, f'dowsample_{i}', Downsample(e * 2**i, e * 2**(i + 1)))  # sic, upstream's key
        self.bottle = BasicIDTLayer(16 * e, img_size // 16, num_heads[4], 1, [drop_path_rate] * depths[4],
                                    k_bound=1, spatial=False, **common)
        for i in range(4):
            width = e * 2**(4 - i)  # decoder width: upsampled half + skip half
            setattr(self, f'upsample_{i}', Upsample(16 * e if i == 0 else 2 * width, width // 2))
            setattr(self, f'decoderlayer_{i}',
                    BasicIDTLayer(width, img_size // 2**(3 - i), num_heads[5 + i], DEC_BLOCKS[i],
                                  dec_dpr[dec_cut[i]:dec_cut[i + 1]], k_bound=DEC_K_BOUNDS[i], **common))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """Linear: truncated normal (std 0.02), zero bias; LayerNorm: (1, 0); convolutions keep PyTorch's default."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Restore a (B, C, H, W) batch: the network itself at ``img_size`` x ``img_size``, tiles otherwise."""
        if x.shape[-2:] == (self.img_size, self.img_size):
            return self.forward_patch(x)
        if not self.tile:
            raise ValueError(f'IDT runs only on {self.img_size}x{self.img_size} inputs (its attention layers are built '
                             f'for that size), got {x.shape[-2]}x{x.shape[-1]}. Set `tile: true` in network_g to '
                             f'process other sizes as overlapping {self.img_size}x{self.img_size} tiles (the authors\' '
                             'full-size evaluation), or crop the input.')
        return self.forward_tiled(x)

    def forward_patch(self, x: Tensor) -> Tensor:
        """The network on a (B, C, img_size, img_size) batch."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f'IDT.forward_patch needs {self.img_size}x{self.img_size} inputs, got '
                             f'{x.shape[-2]}x{x.shape[-1]}.')
        y = self.input_proj(x)
        skips = []
        for i in range(4):
            y = getattr(self, f'encoderlayer_{i}')(y)
            skips.append(y)
            y = getattr(self, f'dowsample_{i}')(y)
        y = self.bottle(y)
        for i in range(4):
            y = torch.cat([getattr(self, f'upsample_{i}')(y), skips.pop()], dim=-1)
            y = getattr(self, f'decoderlayer_{i}')(y)
        return x + self.output_proj(y)

    def forward_tiled(self, x: Tensor) -> Tensor:
        """Restore a (B, C, H, W) batch of any size >= 1 from overlapping ``img_size`` tiles (upstream's merge).

        Tiles start at :func:`tile_starts` offsets on each axis (images smaller than a tile are padded first) and go
        through :meth:`forward_patch` ``tile_batch`` at a time. With ``w`` the :func:`centre_weights` of a tile and
        ``y_t`` the output of tile ``t`` placed at its offset, the result is

        .. math::  \\hat y(p) = \\sum_t w_t(p)\\, y_t(p) \\Big/ \\sum_t w_t(p),

        cropped back to H x W. Differentiable, so it also works in training mode.
        """
        b, c, h, w = x.shape
        size, overlap = self.img_size, self.tile_overlap
        padded = pad_to(x, size)
        hp, wp = padded.shape[-2:]
        starts = [(i, j) for i in tile_starts(hp, size, overlap) for j in tile_starts(wp, size, overlap)]
        tiles = torch.cat([padded[..., i:i + size, j:j + size] for i, j in starts])  # tile-major, (T*B, C, s, s)
        outputs = torch.cat([self.forward_patch(chunk) for chunk in tiles.split(self.tile_batch)]).split(b)
        weight = centre_weights(size).to(x)
        merged, total = x.new_zeros(b, c, hp, wp), x.new_zeros(1, 1, hp, wp)
        for (i, j), out in zip(starts, outputs):
            merged[..., i:i + size, j:j + size] += weight * out
            total[..., i:i + size, j:j + size] += weight
        return (merged / total)[..., :h, :w]
