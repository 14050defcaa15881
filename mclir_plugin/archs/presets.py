"""Named ``network_g`` settings, shared by the benchmark (``--arch``), the tests and anyone who wants a quick net.

:func:`network_preset` returns a fresh copy (with changes applied), so a caller can edit it freely::

    network_g = network_preset('swinir_tiny', depths=[1])          # BasicSR's SwinIR, a few thousand parameters

* ``swinir_light``: SwinIR-light x4 (the papers' lightweight SR network, 0.9M parameters);
* ``edsr_light``: EDSR-baseline x4 (BasicSR's EDSR, 16 blocks of 64 channels);
* ``swinir_tiny``: a SwinIR x4 small enough for tests on CPU (8-channel embedding, one stage of two blocks,
  4x4 windows).
"""
from __future__ import annotations

import copy
from typing import Any

NETWORK_PRESETS: dict[str, dict[str, Any]] = {
    'swinir_light': dict(type='SwinIR', upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.,
                         depths=[6, 6, 6, 6], embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2,
                         upsampler='pixelshuffledirect', resi_connection='1conv'),
    'edsr_light': dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=4, res_scale=1,
                       img_range=255., rgb_mean=[0.4488, 0.4371, 0.4040]),
    'swinir_tiny': dict(type='SwinIR', upscale=4, in_chans=3, img_size=8, window_size=4, img_range=1., depths=[2],
                        embed_dim=8, num_heads=[2], mlp_ratio=2, upsampler='pixelshuffledirect',
                        resi_connection='1conv'),
}


def network_preset(name: str, **changes: Any) -> dict[str, Any]:
    """A copy of the preset ``name`` with ``changes`` applied (``network_preset('swinir_tiny', embed_dim=16)``).

    Raises:
        KeyError: for an unknown name, listing the presets.
    """
    if name not in NETWORK_PRESETS:
        raise KeyError(f"Unknown network preset '{name}'; presets: {', '.join(sorted(NETWORK_PRESETS))}.")
    return dict(copy.deepcopy(NETWORK_PRESETS[name]), **changes)
