"""A frozen VGG feature extractor whose weights come from a known file, never from the network.

Caveats up front:

* Weights are looked up, in order, in the file named by ``weights`` or in torchvision's cache
  (``$TORCH_HOME/hub/checkpoints/<torchvision file name>``). Nothing is downloaded: offline machines are the norm
  for this plugin, and a silent download inside a training job is worse than a clear error.
* ``fallback='random'`` replaces missing ImageNet weights by a seeded random initialisation. The features are then
  not perceptual; it exists for the built-in demo only and is announced in the log.
* Only the layers up to the deepest requested one are built (VGG16 up to ``relu3_3`` is 1.7 M parameters).

Parameter names follow torchvision's ``vgg*.features`` (``features.<index>.weight``), so torchvision's files load.
"""
from __future__ import annotations

import logging
import os
from os import path as osp
from typing import Iterable

import torch
from torch import nn

from mclir_plugin.utils.checkpoint import load_weights_file
from mclir_plugin.utils.memory_layout import CHANNELS_LAST_OPTION, check_channels_last, use_channels_last
from mclir_plugin.utils.option_schema import Boolean, Choice, MappingOf, Number, Optional, Text, check_options

logger = logging.getLogger('basicsr')

# Channels per conv layer, 'M' = 2x2 max-pool (the VGG paper's configurations A, B, D, E).
_VGG_CONFIGS: dict[str, list] = {
    'vgg11': [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'vgg13': [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'vgg16': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'],
    'vgg19': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'],
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
VGG_FALLBACKS = ('error', 'random')
# The VGG options every feature-space loss takes (the loss's block in the option file, e.g. train.pixel_opt)
VGG_LOSS_OPTIONS = {
    'layer_weights': Optional(MappingOf(Number(low=0), what='vgg layer'), note='~ = the loss\'s default layers'),
    'vgg_type': Choice(*_VGG_CONFIGS),
    'use_input_norm': Boolean(),
    'range_norm': Boolean(),
    'vgg_weights': Text("'imagenet' or the path of a torchvision VGG file"),
    'vgg_fallback': Choice(*VGG_FALLBACKS),
    'channels_last': CHANNELS_LAST_OPTION,
}
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_layer_names(vgg_type: str) -> list[str]:
    """Names of the modules of ``torchvision.models.<vgg_type>().features``, in order.

    ``conv<b>_<i>``/``relu<b>_<i>`` is the i-th convolution of block b and its ReLU; ``pool<b>`` ends block b.
    """
    if vgg_type not in _VGG_CONFIGS:
        raise ValueError(f'vgg_type {vgg_type!r} is not supported; choose one of {sorted(_VGG_CONFIGS)}.')
    names, block, conv = [], 1, 1
    for item in _VGG_CONFIGS[vgg_type]:
        if item == 'M':
            names.append(f'pool{block}')
            block, conv = block + 1, 1
        else:
            names += [f'conv{block}_{conv}', f'relu{block}_{conv}']
            conv += 1
    return names


def torchvision_weights_file(vgg_type: str) -> tuple[str, str]:
    """``(cache_path, url)`` of torchvision's ImageNet weights for ``vgg_type``; the file need not exist."""
    import torchvision
    url = torchvision.models.get_weight(f'{vgg_type.upper()}_Weights.IMAGENET1K_V1').url
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(url)), url


def _build_features(vgg_type: str, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG_CONFIGS[vgg_type]:
        if item == 'M':
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            # not in-place: a requested conv output must not be overwritten by its ReLU
            layers += [nn.Conv2d(in_ch, item, kernel_size=3, padding=1), nn.ReLU()]
            in_ch = item
    return nn.Sequential(*layers[:depth])


class VGGFeatures(nn.Module):
    """Frozen VGG features at named layers, for losses computed in feature space.

    The input is an image batch in [0, 1] (or [-1, 1] with ``range_norm``); with ``use_input_norm`` it is
    normalised by the ImageNet mean and std, as torchvision's weights expect:
    ``x' = (x - mean) / std``. The module stays in eval mode and its parameters never require grad; gradients
    still flow to the *input*.

    Args:
        layers: Layer names, e.g. ``['relu1_2', 'relu2_2', 'relu3_3']`` (see :func:`vgg_layer_names`).
        vgg_type: ``'vgg11'``, ``'vgg13'``, ``'vgg16'`` or ``'vgg19'``. Defaults to ``'vgg16'``.
        weights: ``'imagenet'`` (torchvision's file in its cache) or the path of a local copy of that file.
            Defaults to ``'imagenet'``.
        fallback: What to do when ``weights='imagenet'`` and the cached file is missing: ``'error'`` (raise,
            naming the file and where to put it) or ``'random'`` (seeded random weights; demo use only).
            A missing explicit path is always an error. Defaults to ``'error'``.
        use_input_norm: Normalise the input by the ImageNet mean/std. Defaults to True.
        range_norm: Map the input from [-1, 1] to [0, 1] first. Defaults to False.
        seed: Seed of the random fallback, identical on every rank. Defaults to 0.
        channels_last: Run the convolutions in channels-last memory format (same maths). ``'auto'`` does so on
            CPU, where oneDNN runs this VGG about 30% faster without gradients and 15% faster with them, and not
            on CUDA (see :mod:`mclir_plugin.utils.memory_layout`). The layout follows the input's device at each call.
            Defaults to ``'auto'``.
    """

    def __init__(self,
                 layers: Iterable[str],
                 vgg_type: str = 'vgg16',
                 weights: str = 'imagenet',
                 fallback: str = 'error',
                 use_input_norm: bool = True,
                 range_norm: bool = False,
                 seed: int = 0,
                 channels_last: bool | str = 'auto') -> None:
        super().__init__()
        names = vgg_layer_names(vgg_type)
        self.layers = list(layers)
        if not self.layers:
            raise ValueError('VGGFeatures needs at least one layer name.')
        unknown = [name for name in self.layers if name not in names]
        if unknown:
            raise ValueError(f'Unknown {vgg_type} layer(s) {unknown}; valid names: {", ".join(names)}.')
        check_channels_last(channels_last)
        check_options(VGG_LOSS_OPTIONS, {'vgg_fallback': fallback})  # the name it has in a loss's options
        self.vgg_type = vgg_type
        self._index = {name: names.index(name) for name in self.layers}
        depth = max(self._index.values()) + 1
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG stream is left untouched
            torch.manual_seed(seed)
            self.features = _build_features(vgg_type, depth)
            self.weights_source = self._load_weights(weights, fallback)
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self.channels_last = channels_last
        self._set_layout(channels_last is True)

    def _set_layout(self, channels_last: bool) -> None:
        """Put the convolution weights in channels-last (or the default) layout, if they are not already."""
        weight = self.features[0].weight
        if (weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()) != channels_last:
            # normal tensors even when the first call comes in inference mode: later calls save them for backward
            with torch.inference_mode(False), torch.no_grad():
                self.features.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def uses_channels_last(self, device: torch.device) -> bool:
        """Whether inputs on ``device`` go through the convolutions in channels-last layout."""
        return use_channels_last(self.channels_last, device)

    def _load_weights(self, weights: str, fallback: str) -> str:
        if weights in (None, 'imagenet'):
            path, url = torchvision_weights_file(self.vgg_type)
            if not osp.isfile(path):
                if fallback == 'random':
                    for module in self.features:
                        if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
                            nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
                            nn.init.zeros_(module.bias)
                    return (f'RANDOM weights (seeded; ImageNet file {path} not found, vgg_fallback: random). '
                            'The features are not perceptual: use this for the demo only.')
                raise FileNotFoundError(
                    f'{self.vgg_type.upper()} ImageNet weights not found: expected torchvision\'s file at {path}. '
                    f'Copy {osp.basename(path)} there (it is {url}; set TORCH_HOME to use another cache folder), '
                    f'or name a local copy with `vgg_weights: /path/to/{osp.basename(path)}` in train.pixel_opt.')
        else:
            path = osp.expanduser(str(weights))
            if not osp.isfile(path):
                raise FileNotFoundError(f'vgg_weights file {path!r} does not exist (working directory '
                                        f'{os.getcwd()!r}). Point vgg_weights at a torchvision {self.vgg_type} '
                                        "state dict, or use 'imagenet' for torchvision's cache.")
        if weights in (None, 'imagenet'):
            fix = (f'Delete it and copy {osp.basename(path)} there again ({url}; an interrupted download or copy '
                   'leaves such a file).')
        else:
            fix = f'Copy a complete torchvision {self.vgg_type} state dict there again (or fix vgg_weights).'
        state = load_weights_file(path, f'the {self.vgg_type} weights file', fix, map_location='cpu',
                                  weights_only=True)
        if isinstance(state, dict) and 'state_dict' in state and 'features.0.weight' not in state:
            state = state['state_dict']
        wanted = {key for key in (f'{i}.{p}' for i, m in enumerate(self.features)
                                  if isinstance(m, nn.Conv2d) for p in ('weight', 'bias'))}
        found = {key[len('features.'):]: value for key, value in state.items()
                 if key.startswith('features.') and key[len('features.'):] in wanted}
        missing = sorted(wanted - set(found))
        if missing:
            raise ValueError(f'{path!r} is not a torchvision {self.vgg_type} state dict: it lacks '
                             f'features.{missing[0]} (and {len(missing) - 1} more).')
        try:
            self.features.load_state_dict(found, strict=True)
        except RuntimeError as err:
            raise ValueError(f'{path!r} does not match {self.vgg_type}: {err}') from err
        return f'ImageNet weights from {path}' if weights in (None, 'imagenet') else f'weights from {path}'

    def train(self, mode: bool = True) -> 'VGGFeatures':
        """Stay in eval mode: a frozen extractor must not change behaviour when its owner trains."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{layer: feature}`` for the requested layers."""
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        channels_last = self.uses_channels_last(x.device)
        self._set_layout(channels_last)  # a no-op after the first call on a device
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        wanted = {index: name for name, index in self._index.items()}
        out = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                out[wanted[index]] = x
        return out
