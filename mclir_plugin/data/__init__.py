"""Datasets of mclir_plugin; importing this package registers them in BasicSR's ``DATASET_REGISTRY``."""
from mclir_plugin.data.synthetic_dataset import (DEFAULT_IMAGES, IMAGE_NAMES, SyntheticPairedDataset,
                                                 SyntheticVideoDataset, add_haze, add_rain, degrade_sr)
from mclir_plugin.data.pair_layouts import (LAYOUTS, PairLine, PairScan, pair_folders, read_pair_list, scan_layout,
                                            split_list_line, suggest_layouts, write_pair_list)
from mclir_plugin.data.image_io import ImageReadError, decode_image
from mclir_plugin.data.lmdb_writer import (BadSourceImagesError, BadValue, BadValuesError, LmdbMismatchError,
                                           LmdbWriteReport, check_lmdb, key_to_path, path_to_key, read_meta_info,
                                           verify_lmdb, write_lmdb)
from mclir_plugin.data.paired_list_dataset import PairedListDataset

__all__ = ['SyntheticPairedDataset', 'SyntheticVideoDataset', 'degrade_sr', 'add_haze', 'add_rain', 'IMAGE_NAMES', 'DEFAULT_IMAGES',
           'PairedListDataset', 'LAYOUTS', 'PairLine', 'PairScan', 'pair_folders', 'scan_layout', 'read_pair_list',
           'write_pair_list', 'split_list_line', 'suggest_layouts', 'ImageReadError', 'decode_image',
           'LmdbMismatchError', 'BadSourceImagesError', 'BadValue', 'BadValuesError', 'LmdbWriteReport', 'check_lmdb',
           'path_to_key', 'key_to_path', 'read_meta_info', 'verify_lmdb', 'write_lmdb']
