"""FFA-Net (Qin et al., "FFA-Net: Feature Fusion Attention Network for Single Image Dehazing", AAAI 2020).

Written anew from the paper and the structure of zhilin007/FFA-Net; that repository has no licence file, so none of
its code or comments is reproduced. Parameter names and shapes equal upstream's, so its released checkpoints and MCLIR's
``FFANet`` checkpoints load with ``strict=True``. Registered as ``FFANet``::

    network_g:
      type: FFANet
      gps: 3
      blocks: 19
      input_norm: true   # normalise the [0, 1] input inside forward, as MCLIR's FFA-Net model does before the net

Caveats up front:

* **Input normalisation.** FFA-Net is trained on hazy inputs normalised with mean (0.64, 0.6, 0.58) and std
  (0.14, 0.15, 0.152) against *unnormalised* [0, 1] targets (MCLIR's model does the same in ``feed_data``).
  BasicSR's dataset ``mean``/``std`` options would normalise the target too, so the plugin normalises inside
  ``forward`` instead (``input_norm: true``, the default): a plain ``SRModel`` feeds [0, 1] images and compares
  the output with [0, 1] targets. ``input_norm: false`` is the raw upstream network, which expects an already
  normalised input. The mean/std are non-persistent buffers, so they are not in the state dict.
* **The output is not de-normalised.** The global residual adds the *normalised* input (``post(...) + x_norm``),
  so an untrained network returns roughly ``(x - mean) / std``, not ``x``; the network learns the offset. This is
  upstream's behaviour, kept for checkpoint compatibility.
* **gps.** Upstream asserts ``gps == 3`` and names the groups ``g1``, ``g2``, ``g3``; here any ``gps >= 1`` builds
  (groups ``g1`` ... ``g<gps>``, fusion convs sized ``64 * gps``), which only ``gps = 3`` can load upstream weights
  into. ``blocks`` is free upstream too.
* **Checkpoints.** Upstream saves ``{'step': ..., 'max_psnr': ..., ..., 'model': net.state_dict()}`` from
  ``nn.DataParallel`` (keys start with ``module.``, which BasicSR's ``load_network`` strips), so the BasicSR key is
  ``param_key_g: model``. Those files also pickle NumPy scalars (PSNR/SSIM histories), which torch >= 2.6 refuses
  with its default ``weights_only=True`` load; convert them once, from a trusted source, with
  ``torch.save({'params': torch.load(f, weights_only=False)['model']}, out)`` and load ``out`` with the default
  ``param_key_g: params``. MCLIR's own checkpoints are BasicSR files and load as they are.

Parameters: 4,455,913 for ``gps=3, blocks=19`` (each block 75,481; each group 1,471,067).
"""
from __future__ import annotations

from typing import Sequence

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

FFA_MEAN = (0.64, 0.6, 0.58)
FFA_STD = (0.14, 0.15, 0.152)


def conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    """3x3 convolution with zero 'same' padding and bias (FFA-Net's only spatial conv)."""
    return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=True)


class PixelAttention(nn.Module):
    """``x * sigmoid(conv(relu(conv(x))))`` with a 1-channel map: a weight per pixel, shared by all channels.

    Args:
        channels: Input channels (the hidden layer has ``channels // 8``).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pa = nn.Sequential(nn.Conv2d(channels, channels // 8, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(channels // 8, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pa(x)


class ChannelAttention(nn.Module):
    """``x * sigmoid(conv(relu(conv(GAP(x)))))``: a weight per channel from the global average.

    Args:
        channels: Input channels (the hidden layer has ``channels // 8``).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ca = nn.Sequential(nn.Conv2d(channels, channels // 8, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(channels // 8, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.ca(x.mean(dim=(2, 3), keepdim=True))


class FABlock(nn.Module):
    """Feature-attention block: local residual, then channel and pixel attention, then the block residual.

    .. math::

        r = \\operatorname{conv_2}(\\operatorname{ReLU}(\\operatorname{conv_1}(x)) + x), \\qquad
        y = \\operatorname{PA}(\\operatorname{CA}(r)) + x

    Args:
        dim: Channels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(dim, dim)
        self.conv2 = conv3x3(dim, dim)
        self.calayer = ChannelAttention(dim)
        self.palayer = PixelAttention(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(torch.relu(self.conv1(x)) + x)
        return self.palayer(self.calayer(r)) + x


class Group(nn.Module):
    """``blocks`` FA blocks and a 3x3 conv (``gp``), with a residual around the whole group.

    Args:
        dim: Channels.
        blocks: FA blocks.
    """

    def __init__(self, dim: int, blocks: int) -> None:
        super().__init__()
        self.gp = nn.Sequential(*[FABlock(dim) for _ in range(blocks)], conv3x3(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gp(x) + x


@ARCH_REGISTRY.register()
class FFANet(nn.Module):
    """FFA-Net: groups of feature-attention blocks whose outputs are fused by learned channel weights.

    With group outputs :math:`F_1 ... F_G` (each group feeding the next) and per-channel weights
    :math:`w = \\sigma(\\operatorname{MLP}(\\operatorname{GAP}([F_1, ..., F_G])))` split into G chunks of 64,

    .. math::

        y = \\operatorname{post}(\\operatorname{PA}(\\textstyle\\sum_g w_g F_g)) + x

    where ``post`` is two 3x3 convs with no activation between them and ``x`` is the (normalised) input.

    Args:
        gps: Number of groups (upstream supports 3 only). Defaults to 3.
        blocks: FA blocks per group. Defaults to 19.
        input_norm: Normalise the input by ``mean``/``std`` inside ``forward`` (feed [0, 1] images); False is
            the raw upstream network, fed pre-normalised images. Defaults to True.
        mean: Per-channel mean for ``input_norm``. Defaults to ``(0.64, 0.6, 0.58)``.
        std: Per-channel std for ``input_norm``. Defaults to ``(0.14, 0.15, 0.152)``.
    """

    def __init__(self,
                 gps: int = 3,
                 blocks: int = 19,
                 input_norm: bool = True,
                 mean: Sequence[float] = FFA_MEAN,
                 std: Sequence[float] = FFA_STD) -> None:
        super().__init__()
        if gps < 1 or blocks < 0:
            raise ValueError(f'FFANet: need gps >= 1 and blocks >= 0, got gps={gps}, blocks={blocks}.')
        self.gps, self.blocks, self.dim = gps, blocks, 64
        self.input_norm = bool(input_norm)
        # non-persistent: they follow .to(device) but stay out of the state dict, which then matches upstream's
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        # registered in upstream's order, so that the state-dict keys come in the same order too
        for i in range(gps):
            self.add_module(f'g{i + 1}', Group(self.dim, blocks))
        fused = self.dim * gps
        self.ca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(fused, self.dim // 16, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(self.dim // 16, fused, 1), nn.Sigmoid())
        self.palayer = PixelAttention(self.dim)
        self.pre = nn.Sequential(conv3x3(3, self.dim))
        self.post = nn.Sequential(conv3x3(self.dim, self.dim), conv3x3(self.dim, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm:
            x = (x - self.mean) / self.std
        feat, outs = self.pre(x), []
        for i in range(self.gps):
            feat = getattr(self, f'g{i + 1}')(feat)
            outs.append(feat)
        weights = self.ca(torch.cat(outs, dim=1)).view(-1, self.gps, self.dim, 1, 1)
        fused = sum(weights[:, i] * out for i, out in enumerate(outs))
        return self.post(self.palayer(fused)) + x

    def extra_repr(self) -> str:
        return f'gps={self.gps}, blocks={self.blocks}, input_norm={self.input_norm}'
