"""mclir_plugin: model-contrastive learning (MCLIR, "Learning from History", AAAI 2024) for BasicSR.

Importing the package first makes PyPI ``basicsr`` 1.4.2 work on current torch/torchvision (see
:mod:`mclir_plugin.compat`), then registers its parts in BasicSR's registries:

* ``SPNLoss`` (``LOSS_REGISTRY``), :mod:`mclir_plugin.losses.spn_loss`: the Self-Prior guided Negative loss;
* ``HistoryNegativeHook`` (mmengine ``HOOKS``), :mod:`mclir_plugin.hooks.history_negative_hook`: the negative models;
* ``MCLIRModel`` (``MODEL_REGISTRY``), :mod:`mclir_plugin.models.mclir_model`: the contrastive model wrapper;
* ``SyntheticPairedDataset`` (``DATASET_REGISTRY``), :mod:`mclir_plugin.data`: built-in demo data;
* ``calculate_psnr_float``, ``calculate_ssim_dehazeformer``, ``calculate_ssim_ffanet`` (``METRIC_REGISTRY``),
  :mod:`mclir_plugin.metrics.float_metrics`: the papers' float evaluation protocols (with ``val.save_best``,
  :mod:`mclir_plugin.models.validation`).
"""
from mclir_plugin import compat as _compat

_compat.install_import_shim()  # before anything imports basicsr
_compat.patch_basicsr()

from mclir_plugin.losses import SPNLoss, VGGFeatures  # noqa: E402
from mclir_plugin.hooks import HistoryNegativeHook  # noqa: E402
from mclir_plugin.models import MCLIRModel  # noqa: E402
from mclir_plugin import archs, data  # noqa: E402,F401  (register the architectures and datasets)

__version__ = '0.2.0'
__all__ = ['SPNLoss', 'VGGFeatures', 'HistoryNegativeHook', 'MCLIRModel', '__version__']
