"""Datasets of mclir_plugin; importing this package registers them in BasicSR's ``DATASET_REGISTRY``."""
from mclir_plugin.data.synthetic_dataset import (DEFAULT_IMAGES, IMAGE_NAMES, SyntheticPairedDataset, add_haze,
                                                 add_rain, degrade_sr)

__all__ = ['SyntheticPairedDataset', 'degrade_sr', 'add_haze', 'add_rain', 'IMAGE_NAMES', 'DEFAULT_IMAGES']
