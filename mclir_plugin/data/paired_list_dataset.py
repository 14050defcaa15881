"""``PairedListDataset``: paired images named by a list file, for many-to-one and differently named datasets.

BasicSR's ``PairedImageDataset`` derives each LQ name from its GT name, which cannot express RESIDE's many hazy
images per clear image, SOTS-outdoor's ``.jpg`` vs ``.png``, Rain100's ``rain-``/``norain-`` or SPA-Data's lists
(``docs/archs_datasets.md`` §6.1). Here every pair is a line ``<lq path> <gt path>`` of a list file (format in
:mod:`mclir_plugin.data.pair_layouts`; ``tools/make_pair_list.py`` writes one for each known layout).

Example option blocks (``type: PairedListDataset``)::

    train:                                   # RESIDE ITS, from disk
      dataroot: datasets/RESIDE/ITS          # list paths are relative to it (or set dataroot_lq / dataroot_gt)
      list_file: datasets/RESIDE/ITS/pairs.txt
      io_backend: {type: disk}
      gt_size: 128
      use_hflip: true
      use_rot: true
    val:                                     # SOTS-indoor, from an lmdb made by tools/create_lmdb.py
      dataroot: datasets/RESIDE/SOTS_indoor.lmdb
      list_file: datasets/RESIDE/SOTS/indoor/pairs.txt
      io_backend: {type: lmdb}
      gt_crop: center                        # the GT has a 10-px border: centre-crop it to the hazy size

**Images smaller than the patch** (RESIDE OTS holds some below 256 pixels a side): BasicSR's random crop would
stop the run in the middle of an epoch. ``min_size_policy`` decides, for training only:

* ``skip`` (default; what DehazeFormer did to OTS): at start, read every LQ image's size (its header on disk, the
  meta file of an lmdb), drop the pairs smaller than ``gt_size / scale`` and log how many and which;
* ``resample`` (FFA-Net's loader): keep them listed; a draw that hits one takes a random other pair instead
  (Python's ``random``, seeded by BasicSR as the crops are; each small image logged once per process);
* ``error``: stop at start, naming them.

With ``io_backend: {type: lmdb}`` each list path is read under the key :func:`~mclir_plugin.data.lmdb_writer.
path_to_key` gives it (``hazy/1_1_0.90179.png -> hazy/1_1_0%2E90179``); one lmdb may hold both sides (a common
``dataroot``) or each side its own. Without ``list_file``, the pairs are the keys the LQ and GT lmdbs share, as
in BasicSR (lmdbs of plain paired folders).
"""
from __future__ import annotations

import os
import random
from typing import Any, NamedTuple

import numpy as np
from torch.utils import data

from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, get_root_logger, img2tensor
from basicsr.utils.file_client import LmdbBackend
from basicsr.utils.registry import DATASET_REGISTRY
from mclir_plugin.data.image_io import FILE_FIX, LMDB_FIX, decode_image
from mclir_plugin.data.lmdb_writer import LmdbMismatchError, check_lmdb, key_to_path, path_to_key, shared_env
from mclir_plugin.data.pair_layouts import PairLine, read_pair_list
from mclir_plugin.utils.option_schema import Boolean, Choice, Integer, Optional, OptionError, check_options

GT_CROPS = ('center', 'topleft', 'none')
BACKENDS = ('disk', 'lmdb')
MIN_SIZE_POLICIES = ('skip', 'resample', 'error')
RESAMPLE_TRIES = 100  # draws before ``resample`` gives up (then nearly every image is too small: stop, named)
SHOWN = 5  # files named in a log line or message


class _Pair(NamedTuple):
    line: int  # line of the list file; 0 without one
    lq: str  # path relative to the LQ root
    gt: str
    lq_key: str  # lmdb keys ('' on disk)
    gt_key: str


class SharedLmdbBackend(LmdbBackend):
    """BasicSR's ``LmdbBackend`` reading through this process's shared handles (:func:`shared_env`).

    BasicSR's backend opens its own handles, so a second dataset on the same lmdb in one process (a validation
    set cut from the training lmdb, a test) fails with lmdb's "already open in this process"; and handles held
    at a fork block the DataLoader workers. The shared handles avoid both and pickle as plain paths.
    """

    def __init__(self, db_paths: list[str], client_keys: list[str], **kwargs: Any) -> None:
        self.db_paths = [str(path) for path in db_paths]
        self._paths = dict(zip(client_keys, self.db_paths))
        self._kwargs = kwargs

    def get(self, filepath: str, client_key: str) -> 'bytes | None':
        with shared_env(self._paths[client_key], **self._kwargs).begin(write=False) as txn:
            return txn.get(str(filepath).encode('ascii'))


class ListFileClient(FileClient):
    """BasicSR's ``FileClient`` with :class:`SharedLmdbBackend` as its ``lmdb`` backend (disk unchanged).

    ``get`` returns the raw bytes (or None): the dataset names a bad value itself, with its list line.
    """

    _backends = dict(FileClient._backends, lmdb=SharedLmdbBackend)

    def get(self, filepath: str, client_key: str = 'default') -> 'bytes | None':
        return self.client.get(filepath, client_key) if self.backend == 'lmdb' else self.client.get(filepath)


def crop_gt_to(img_gt: np.ndarray, height: int, width: int, mode: str, where: str) -> np.ndarray:
    """Crop a GT image that is larger than the LQ image (times the scale) to ``height x width``.

    Args:
        img_gt (np.ndarray): HWC GT image.
        height (int): Target height (LQ height times scale).
        width (int): Target width.
        mode (str): ``'center'`` (FFA-Net's ``CenterCrop`` of SOTS-indoor's GT, offsets rounded as torchvision
            does), ``'topleft'`` (BasicSR's SR benchmarks), or ``'none'`` (sizes must already agree).
        where (str): The pair, for error messages.

    Raises:
        ValueError: The GT is smaller than the target, or differs with ``mode='none'``.
    """
    h, w = img_gt.shape[:2]
    if (h, w) == (height, width):
        return img_gt
    if h < height or w < width:
        raise ValueError(f'{where}: GT is {h}x{w}, smaller than LQ x scale ({height}x{width}); check the pairing '
                         'or `scale`')
    if mode == 'none':
        raise ValueError(f'{where}: GT is {h}x{w} but LQ x scale is {height}x{width}; set gt_crop: center (or '
                         'topleft) to crop the GT')
    top, left = (0, 0) if mode == 'topleft' else (int(round((h - height) / 2)), int(round((w - width) / 2)))
    return img_gt[top:top + height, left:left + width, ...]


@DATASET_REGISTRY.register()
class PairedListDataset(data.Dataset):
    """Paired LQ/GT images listed in a file, read from disk or lmdb through BasicSR's ``FileClient``.

    Training: a paired random crop of ``gt_size`` (``paired_random_crop``), then flips/rotations (``augment``),
    exactly as ``PairedImageDataset``. Validation: whole images. In both, a GT larger than ``scale`` times the LQ
    (SOTS-indoor: 640x480 GT, 620x460 hazy) is first cropped as ``gt_crop`` says.

    Args:
        opt (dict): The dataset option block:

            * list_file (str | None): The pair list. Required on disk; with lmdb, None pairs equal keys.
              Defaults to None.
            * dataroot (str | None): Root of both columns' paths (a folder, or an lmdb holding both sides).
              Defaults to None.
            * dataroot_lq (str | None): Root of the LQ paths. Defaults to ``dataroot``.
            * dataroot_gt (str | None): Root of the GT paths. Defaults to ``dataroot``.
            * io_backend (dict): ``{type: disk}`` or ``{type: lmdb}`` (other keys go to ``lmdb.open``).
              Defaults to ``{type: disk}``.
            * phase (str): ``'train'`` crops and augments, anything else returns whole images (BasicSR sets it).
            * scale (int): GT size / LQ size (BasicSR copies the top-level ``scale`` in). Defaults to 1.
            * gt_size (int): Train: side of the GT patch. Required for training.
            * use_hflip (bool): Train: random horizontal flips. Defaults to True.
            * use_rot (bool): Train: random vertical flips and transpositions. Defaults to True.
            * gt_crop (str): ``center`` | ``topleft`` | ``none``, how a larger GT is cropped. Defaults to
              ``center`` (FFA-Net's RESIDE protocol; BasicSR's SR benchmarks use ``topleft``).
            * check_files (bool): On disk, check at start that every listed file exists. Defaults to True.
            * min_size_policy (str): Train: ``skip`` | ``resample`` | ``error``, what to do with LQ images
              smaller than the patch (module docstring). Defaults to ``skip``.

    Each item is ``{'lq', 'gt'}`` (RGB CHW float32 in [0, 1]) and ``{'lq_path', 'gt_path'}`` (the list path
    joined to its root; for lmdb the root is the lmdb folder).
    """

    OPTIONS = {  # the typed keys of the block (list_file and the roots are checked as paths below)
        'scale': Optional(Integer(low=1)),
        'gt_size': Optional(Integer(low=1)),
        'gt_crop': Choice(*GT_CROPS),
        'min_size_policy': Choice(*MIN_SIZE_POLICIES),
        'use_hflip': Boolean(),
        'use_rot': Boolean(),
        'check_files': Boolean(),
        'io_backend.type': Choice(*BACKENDS),
    }

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        backend = dict(opt.get('io_backend') or {'type': 'disk'})
        try:
            checked = check_options(self.OPTIONS, {**opt, 'io_backend.type': backend.pop('type', 'disk')})
        except OptionError as err:
            raise err.within(self._name()) from None
        self.scale = checked.get('scale') or 1
        self.gt_crop = checked.get('gt_crop', 'center')
        self.train = opt.get('phase') == 'train'
        if self.train and not opt.get('gt_size'):
            raise KeyError(f'{self._name()}: training needs gt_size (the GT patch side), e.g. gt_size: 128')
        self.min_size_policy = checked.get('min_size_policy', 'skip')
        self.backend = checked['io_backend.type']
        self.lq_root, self.gt_root = self._roots(opt)
        list_file = opt.get('list_file')
        self.list_file = os.path.expanduser(list_file) if list_file else None
        lines = read_pair_list(self.list_file) if self.list_file else None
        if self.backend == 'disk':
            if lines is None:
                raise KeyError(f'{self._name()}: list_file is required with io_backend disk (write one with '
                               'tools/make_pair_list.py)')
            self.pairs = [_Pair(p.line, p.lq, p.gt, '', '') for p in lines]
            if opt.get('check_files', True):
                self._check_files()
            self.client_kwargs: dict[str, Any] = {}
        else:
            self.pairs, self.meta = self._lmdb_pairs(lines)
            shared = os.path.realpath(self.lq_root) == os.path.realpath(self.gt_root)
            self.clients = {'lq': 'default', 'gt': 'default'} if shared else {'lq': 'lq', 'gt': 'gt'}
            self.client_kwargs = dict(backend, db_paths=[self.lq_root] if shared else [self.lq_root, self.gt_root],
                                      client_keys=['default'] if shared else ['lq', 'gt'])
        self.file_client = None  # made on first read, in the process that reads
        self._small: set[int] = set()  # resample: indices found too small in this process
        if self.train and self.min_size_policy in ('skip', 'error'):
            self._drop_small_pairs()

    def _name(self) -> str:
        return f"dataset {self.opt.get('name')!r} (PairedListDataset)"

    def _roots(self, opt: dict) -> tuple[str, str]:
        roots = []
        for key in ('dataroot_lq', 'dataroot_gt'):
            root = opt.get(key) or opt.get('dataroot')
            if not root:
                raise KeyError(f'{self._name()}: set dataroot (the root of both list columns) or {key}')
            root = os.path.expanduser(root)
            if not os.path.exists(root):
                raise FileNotFoundError(f'{self._name()}: {key if opt.get(key) else "dataroot"} {root!r} does not '
                                        'exist; fix the option file')
            roots.append(root)
        return roots[0], roots[1]

    def _check_files(self) -> None:
        """Name the first listed file that does not exist, with its line."""
        seen = set()
        for pair in self.pairs:
            for side, root, rel in (('lq', self.lq_root, pair.lq), ('gt', self.gt_root, pair.gt)):
                path = os.path.join(root, rel)
                if path not in seen:
                    if not os.path.isfile(path):
                        raise FileNotFoundError(f'{self.list_file}, line {pair.line}: {side} file {path!r} does not '
                                                f'exist (dataroot_{side} {root!r}); fix the list or the dataroot')
                    seen.add(path)

    @property
    def lq_patch(self) -> int:
        """Side of the LQ training patch, ``gt_size // scale`` (what ``paired_random_crop`` cuts)."""
        return self.opt['gt_size'] // self.scale

    def _where(self, pair: _Pair, side: str) -> str:
        """A pair's file (or lmdb key) and list line, for messages."""
        text = f'{side} {os.path.join(getattr(self, f"{side}_root"), getattr(pair, side))!r}'
        if self.backend == 'lmdb':
            text += f' (lmdb key {getattr(pair, f"{side}_key")!r})'
        return text + (f' ({self.list_file}, line {pair.line})' if pair.line else '')

    def _fix(self, pair: _Pair) -> str:
        if self.backend == 'lmdb':
            return LMDB_FIX
        return FILE_FIX if not pair.line else f'replace the file with a good copy, or remove line {pair.line}'

    def _lq_size(self, pair: _Pair) -> tuple[int, int]:
        """``(h, w)`` of a pair's LQ image without decoding it: the lmdb meta file, or the file's header."""
        if self.backend == 'lmdb':
            return self.meta['lq'][pair.lq_key][:2]
        from PIL import Image  # Pillow reads only the header here
        path = os.path.join(self.lq_root, pair.lq)
        try:
            with Image.open(path) as img:
                return img.size[1], img.size[0]
        except Exception:  # noqa: BLE001  (a format Pillow lacks, or a bad file: let OpenCV decide and name it)
            with open(path, 'rb') as handle:
                return decode_image(handle.read(), self._where(pair, 'lq'), self._fix(pair)).shape[:2]

    def _drop_small_pairs(self) -> None:
        """``skip``/``error``: find the pairs whose LQ is smaller than the patch, before training starts."""
        small = [(pair, size) for pair in self.pairs if min(size := self._lq_size(pair)) < self.lq_patch]
        if not small:
            return
        names = '; '.join(f'{self._where(pair, "lq")}: {h}x{w}' for pair, (h, w) in small[:SHOWN])
        more = f' and {len(small) - SHOWN} more' if len(small) > SHOWN else ''
        what = (f'{self._name()}: {len(small)} of {len(self.pairs)} pairs have an LQ image smaller than the '
                f'{self.lq_patch}x{self.lq_patch} LQ patch (gt_size {self.opt["gt_size"]}, scale {self.scale}): '
                f'{names}{more}')
        if len(small) == len(self.pairs):
            raise ValueError(f'{what}. Nothing would be left to train on: lower gt_size.')
        if self.min_size_policy == 'error':
            raise ValueError(f'{what}. Lower gt_size, remove them from {self.list_file or "the lmdb"}, or set '
                             'min_size_policy: skip (drop them) or resample (draw another pair instead)')
        dropped = {id(pair) for pair, _ in small}
        self.pairs = [pair for pair in self.pairs if id(pair) not in dropped]
        get_root_logger().warning(f'{what}; skipped (min_size_policy: skip), {len(self.pairs)} pairs remain.')

    def _lmdb_pairs(self, lines: list[PairLine] | None) -> tuple[list[_Pair], dict[str, dict]]:
        """The pairs and both sides' meta information, checked against the lmdbs."""
        meta = {'lq': check_lmdb(self.lq_root)}
        same = os.path.realpath(self.gt_root) == os.path.realpath(self.lq_root)
        meta['gt'] = meta['lq'] if same else check_lmdb(self.gt_root)
        if lines is None:  # BasicSR's rule: equal keys in both lmdbs
            lq_keys, gt_keys = list(meta['lq']), set(meta['gt'])
            if set(lq_keys) != gt_keys:
                raise LmdbMismatchError(f'{self._name()}: without list_file the LQ and GT lmdbs must hold the same '
                                        f'keys; {len(set(lq_keys) ^ gt_keys)} differ. Give a list_file.')
            return [_Pair(0, key_to_path(k) + '.png', key_to_path(k) + '.png', k, k) for k in lq_keys], meta
        pairs = [_Pair(p.line, p.lq, p.gt, path_to_key(p.lq), path_to_key(p.gt)) for p in lines]
        for pair in pairs:
            for side in ('lq', 'gt'):
                key = getattr(pair, f'{side}_key')
                if key not in meta[side]:
                    raise LmdbMismatchError(
                        f'{self.list_file}, line {pair.line}: {side} {getattr(pair, side)!r} (lmdb key {key!r}) is '
                        f'not in {getattr(self, f"{side}_root")!r}; build the lmdb from this list with '
                        'tools/create_lmdb.py (it resumes and adds the missing keys)')
        return pairs, meta

    def _read(self, pair: _Pair, side: str) -> np.ndarray:
        """Read one side of a pair as float32 BGR HWC in [0, 1], with errors naming the file and the line."""
        rel, root = getattr(pair, side), getattr(self, f'{side}_root')
        where = self._where(pair, side)
        if self.backend == 'lmdb':
            key = getattr(pair, f'{side}_key')
            buf = self.file_client.get(key, self.clients[side])
            if buf is None:
                raise LmdbMismatchError(f'{where}: key {key!r} is listed in meta_info.txt but not stored; rebuild '
                                        'the lmdb with tools/create_lmdb.py')
        else:
            try:
                buf = self.file_client.get(os.path.join(root, rel))
            except OSError as err:
                raise FileNotFoundError(f'{where}: cannot read ({err})') from err
        # Decoded here, not by imfrombytes: an empty or undecodable value is named with its key and list line.
        img = decode_image(buf, where, self._fix(pair)).astype(np.float32) / 255.
        if self.backend == 'lmdb' and self.meta[side][key][:2] != img.shape[:2]:
            raise LmdbMismatchError(f'{where}: image is {img.shape[0]}x{img.shape[1]} but meta_info.txt of '
                                    f'{root!r} says {self.meta[side][key][0]}x{self.meta[side][key][1]}; rebuild '
                                    'the lmdb with tools/create_lmdb.py')
        return img

    def _resample(self, index: int, pair: _Pair, img_lq: np.ndarray) -> int:
        """``resample``: a random pair index in place of ``index``, whose LQ is too small (logged once)."""
        if index not in self._small:
            self._small.add(index)
            get_root_logger().warning(
                f'{self._name()}: {self._where(pair, "lq")} is {img_lq.shape[0]}x{img_lq.shape[1]}, smaller than the '
                f'{self.lq_patch}x{self.lq_patch} LQ patch; drawing another pair instead (min_size_policy: '
                f'resample; {len(self._small)} such images met so far in this process)')
        return random.randrange(len(self.pairs))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.file_client is None:
            self.file_client = ListFileClient(self.backend, **self.client_kwargs)
        for _ in range(RESAMPLE_TRIES):
            pair = self.pairs[index]
            img_lq = self._read(pair, 'lq')
            if not self.train or min(img_lq.shape[:2]) >= self.lq_patch or self.min_size_policy != 'resample':
                break
            index = self._resample(index, pair, img_lq)
        else:
            raise ValueError(f'{self._name()}: {RESAMPLE_TRIES} random draws in a row found only LQ images smaller '
                             f'than the {self.lq_patch}x{self.lq_patch} patch; lower gt_size or use '
                             'min_size_policy: skip to drop them at start')
        img_gt = self._read(pair, 'gt')
        where = f'pair {pair.lq!r} / {pair.gt!r}' + (f' (line {pair.line})' if pair.line else '')
        img_gt = crop_gt_to(img_gt, img_lq.shape[0] * self.scale, img_lq.shape[1] * self.scale, self.gt_crop, where)
        if self.train:
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.opt['gt_size'], self.scale, pair.gt)
            img_gt, img_lq = augment([img_gt, img_lq], self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': os.path.join(self.lq_root, pair.lq),
                'gt_path': os.path.join(self.gt_root, pair.gt)}

    def __len__(self) -> int:
        return len(self.pairs)
