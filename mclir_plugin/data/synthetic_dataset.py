"""A built-in paired dataset: scikit-image's photographs, degraded on the fly.

The photographs ship inside the scikit-image wheel, so the demo and the tests run offline with no data to
download. Each (lq, gt) pair is made from a GT crop by one of three degradations, each a pure function of a
float32 HWC RGB image in [0, 1] (and a :class:`numpy.random.Generator` where it is random):

* ``sr``: :func:`degrade_sr`, MATLAB-like bicubic downscaling (the DIV2K "BI" degradation);
* ``haze``: :func:`add_haze`, the atmospheric scattering model with a smooth random depth map;
* ``rain``: :func:`add_rain`, sparse drops motion-blurred into streaks along a random direction.

Example option block (``type: SyntheticPairedDataset``)::

    task: sr              # sr | haze | rain
    images: [astronaut, coffee]
    scale: 4              # sr only (BasicSR copies the top-level scale in; 1 is accepted for haze/rain)
    gt_size: 64           # train: GT patch side
    length: 800           # train: samples per epoch
    val_size: 128         # val: GT center crop side; ~ for the whole image
    degradation: {beta_range: [0.6, 1.8]}   # keyword arguments of the degradation function

:class:`SyntheticVideoDataset` (``type: SyntheticVideoDataset``) makes short clips for BasicSR's video models
from the same photographs: a crop moving by a few pixels a frame, each frame degraded as ``sr`` (plus optional
noise)::

    images: [astronaut, coffee]
    num_frame: 5          # frames per clip
    gt_frames: all        # all: BasicVSR (VideoRecurrentModel); center: EDVR (VideoBaseModel)
    max_shift: 2          # largest motion per frame, GT pixels
    gt_size: 64           # train: GT patch side; val_size for validation
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils import data

from basicsr.data.data_util import generate_frame_indices
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import DATASET_REGISTRY

from mclir_plugin.utils.option_schema import (Boolean, Check, Choice, Integer, Interval, MappingOf, Number, OneOrList,
                                              Optional, OptionError, Text)

#: RGB photographs of ``skimage.data`` that load from the wheel (no download). ``cat`` is scikit-image's
#: alias of ``chelsea``: the very same photograph.
IMAGE_NAMES = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry', 'retina',
               'cat')
#: The images used when the option ``images`` is absent (``cat`` is left out: it duplicates ``chelsea``).
DEFAULT_IMAGES = IMAGE_NAMES[:-1]
TASKS = ('sr', 'haze', 'rain')
SR_SCALES = (2, 3, 4)


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    """``value`` as a ``(lo, hi)`` tuple with ``low <= lo <= hi <= high``, else an OptionError naming ``name``."""
    return Interval(low, high)(value, name)


def degrade_sr(img: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic downscaling by ``scale`` with BasicSR's MATLAB-like ``imresize`` (antialiased).

    With ``k`` the MATLAB cubic kernel widened by ``scale`` (the antialiasing),
    ``lq[i, j] = sum_{p, q} k(p - (i + 0.5) * s + 0.5) * k(q - (j + 0.5) * s + 0.5) * img[p, q]``, separable
    over rows and columns with symmetric padding, as MATLAB's ``imresize(img, 1/s, 'bicubic')``. The result is
    clipped to [0, 1] (the cubic kernel has negative lobes that overshoot at edges) and not quantised.

    Args:
        img (np.ndarray): float32 HWC image in [0, 1]; H and W must be multiples of ``scale``.
        scale (int): Downscaling factor (an integer >= 1).

    Returns:
        np.ndarray: float32 image of shape ``(H // scale, W // scale, C)`` in [0, 1].
    """
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f'degrade_sr: image size {h}x{w} is not a multiple of scale {scale}')
    if scale == 1:
        return img.astype(np.float32, copy=True)
    lq = imresize(np.ascontiguousarray(img, dtype=np.float32), 1 / scale)
    return np.clip(lq, 0, 1).astype(np.float32, copy=False)


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1]: uniform noise on a coarse grid, upsampled bicubically.

    The grid has ``cells`` points along the longer side, so the field has a few blobs whatever the size.
    """
    h, w = shape
    gh, gw = (max(2, round(cells * n / max(h, w))) for n in (h, w))
    coarse = rng.random((gh, gw), dtype=np.float32)
    # The cubic kernel overshoots slightly between grid points; clipping keeps d a valid depth in [0, 1].
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def add_haze(img: np.ndarray,
             rng: np.random.Generator,
             beta_range: Sequence[float] = (0.6, 1.8),
             light_range: Sequence[float] = (0.7, 1.0),
             depth_cells: int = 4) -> np.ndarray:
    """Haze by the atmospheric scattering model.

    ``I(x) = J(x) * t(x) + A * (1 - t(x))`` with transmission ``t(x) = exp(-beta * d(x))``, where ``J`` is the
    clean image, ``d`` a smooth random depth map in [0, 1], ``beta ~ U(beta_range)`` the scattering coefficient
    and ``A ~ U(light_range)`` the (grey) atmospheric light. Every pixel moves towards ``A``:
    ``|I - A| = t * |J - A| <= |J - A|``, so contrast drops and dark regions brighten.

    Args:
        img (np.ndarray): float32 HWC image ``J`` in [0, 1].
        rng (np.random.Generator): Source of ``beta``, ``A`` and the depth map.
        beta_range (Sequence[float]): ``[min, max]`` of ``beta`` (>= 0). Defaults to (0.6, 1.8).
        light_range (Sequence[float]): ``[min, max]`` of ``A`` (within [0, 1]). Defaults to (0.7, 1.0).
        depth_cells (int): Coarse-grid points along the longer side of the depth map; more gives busier
            depth. Defaults to 4.

    Returns:
        np.ndarray: The hazy float32 image ``I``, same shape, in [0, 1].
    """
    beta = rng.uniform(*_check_range('beta_range', beta_range, 0, math.inf))
    light = rng.uniform(*_check_range('light_range', light_range, 0, 1))
    t = np.exp(-beta * _smooth_field(img.shape[:2], rng, depth_cells))[..., None]
    hazy = img * t + light * (1 - t)
    return np.clip(hazy, 0, 1).astype(np.float32, copy=False)


def _line_kernel(length: int, angle: float) -> np.ndarray:
    """A ``length x length`` kernel holding a centred line ``angle`` degrees from vertical, summing to 1."""
    kernel = np.zeros((length, length), np.float32)
    kernel[:, length // 2] = 1
    centre = ((length - 1) / 2, (length - 1) / 2)
    # A line of this length rotated about the centre stays inside the square, so nothing is cut off.
    kernel = cv2.warpAffine(kernel, cv2.getRotationMatrix2D(centre, angle, 1.0), (length, length))
    return kernel / kernel.sum()


def add_rain(img: np.ndarray,
             rng: np.random.Generator,
             density_range: Sequence[float] = (0.002, 0.01),
             length_range: Sequence[int] = (10, 30),
             angle_range: Sequence[float] = (-30, 30),
             intensity_range: Sequence[float] = (0.5, 1.0)) -> np.ndarray:
    """Synthetic rain streaks added to the image.

    Drops ``n(x) = u(x) * [v(x) < rho]`` with ``u, v ~ U(0, 1)`` per pixel and density ``rho ~ U(density_range)``
    are motion-blurred by a line kernel ``k`` (length ``L ~ U(length_range)``, angle ``theta ~ U(angle_range)``
    degrees from vertical, ``sum(k) = 1``), giving the streak layer
    ``R = clip(alpha * L * (k * n), 0, 1)`` with ``alpha ~ U(intensity_range)`` (``L`` undoes the kernel's
    averaging, so a lone drop of value ``u`` leaves a streak of about ``alpha * u``). The same ``R`` is added to
    every channel (white rain): ``I = clip(J + R, 0, 1)``, hence ``I >= J`` everywhere.

    Args:
        img (np.ndarray): float32 HWC image ``J`` in [0, 1].
        rng (np.random.Generator): Source of all the random draws.
        density_range (Sequence[float]): ``[min, max]`` fraction of pixels that seed a streak.
            Defaults to (0.002, 0.01).
        length_range (Sequence[int]): ``[min, max]`` streak length in pixels (integers, >= 1).
            Defaults to (10, 30).
        angle_range (Sequence[float]): ``[min, max]`` streak angle in degrees from vertical. Defaults to (-30, 30).
        intensity_range (Sequence[float]): ``[min, max]`` of the streak strength ``alpha`` (within [0, 1]).
            Defaults to (0.5, 1.0).

    Returns:
        np.ndarray: The rainy float32 image ``I``, same shape, in [0, 1].
    """
    density = rng.uniform(*_check_range('density_range', density_range, 0, 1))
    lo, hi = _check_range('length_range', length_range, 1, math.inf)
    length = int(rng.integers(int(lo), int(hi), endpoint=True))
    angle = rng.uniform(*_check_range('angle_range', angle_range, -180, 180))
    alpha = rng.uniform(*_check_range('intensity_range', intensity_range, 0, 1))
    h, w = img.shape[:2]
    drops = rng.random((h, w), dtype=np.float32) * (rng.random((h, w), dtype=np.float32) < density)
    streaks = cv2.filter2D(drops, -1, _line_kernel(length, angle), borderType=cv2.BORDER_REFLECT)
    streaks = np.clip(alpha * length * streaks, 0, 1)[..., None]
    return np.clip(img + streaks, 0, 1).astype(np.float32, copy=False)


_DEGRADATIONS = {'haze': add_haze, 'rain': add_rain}


def _load_image(name: str) -> np.ndarray:
    """Load ``skimage.data.<name>()`` as float32 RGB in [0, 1]."""
    import skimage.data  # lazily: only this dataset needs scikit-image

    img = getattr(skimage.data, name)()
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:  # guards against a changed skimage image
        raise ValueError(f'skimage.data.{name}() is not an RGB uint8 image (shape {img.shape}, {img.dtype})')
    return img.astype(np.float32) / 255


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC float32 array to a CHW tensor (copied, so flipped views are fine)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class _PhotoDataset(data.Dataset):
    """What both synthetic datasets share: the options they both read, the photographs, BasicSR's flips.

    Every option is checked by a check of :mod:`mclir_plugin.utils.option_schema`, so a bad value reads
    ``<Dataset>.<key> must be <allowed>, got <value>.`` (see :meth:`option`).
    """

    OPTIONS = {
        'phase': Text(),
        'images': OneOrList(Choice(*IMAGE_NAMES)),
        'length': Integer(low=1),
        'seed': Integer(),
        'use_hflip': Boolean(),
        'use_rot': Boolean(),
    }
    DEFAULTS = {'phase': 'train', 'images': DEFAULT_IMAGES, 'length': 1000, 'seed': 0, 'use_hflip': True,
                'use_rot': True}

    def __init__(self, opt: dict[str, Any]) -> None:
        super().__init__()
        self.opt = opt  # BasicSR's validation reads dataset.opt['name']
        self.phase = self.option('phase')
        self.seed = self.option('seed')
        self.use_hflip, self.use_rot = self.option('use_hflip'), self.option('use_rot')
        names = self.option('images')
        self.names = [names] if isinstance(names, str) else names
        self.images = [_load_image(n) for n in self.names]
        if self.phase == 'train':
            self.length = self.option('length')

    def option(self, key: str, check: Check | None = None, default: Any = None) -> Any:
        """``opt[key]`` checked by ``check`` (else ``OPTIONS[key]``), naming ``<class>.<key>``; when ``opt`` lacks
        it, ``default`` (else ``DEFAULTS[key]``)."""
        value = self.opt.get(key, self.DEFAULTS.get(key) if default is None else default)
        return (check or self.OPTIONS[key])(value, f'{type(self).__name__}.{key}')

    def crop_side(self, key: str, reach: int = 0, whole: bool = False, default: int | None = None) -> int | None:
        """A crop side ``opt[key]`` (else ``default``): an integer >= 1, a multiple of ``scale``, that with ``reach``
        more pixels (a moving crop's path) fits in every chosen image; ``whole`` allows ``~`` (the whole image)."""
        side = Integer(low=1, multiple_of=self.scale, note='the scale')
        size = self.option(key, Optional(side, note='the whole image') if whole else side, default)
        for name, img in zip(self.names, self.images):
            if size is not None and min(img.shape[:2]) < size + reach:
                moving = f' moved by up to max_shift {self.max_shift} over {self.num_frame} frames' if reach else ''
                raise ValueError(f'{type(self).__name__}: {key} {size}{moving} needs {size + reach} pixels, more '
                                 f'than image {name!r} has ({img.shape[0]}x{img.shape[1]})')
        return size

    def _augment(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """BasicSR's ``augment`` (hflip, vflip, transpose, each with p = 1/2) driven by ``rng``, on the last three
        axes (H, W, C): an image, or every frame of a clip alike."""
        hflip, vflip, rot90 = rng.random(3) < 0.5
        if self.use_hflip and hflip:
            pixels = pixels[..., ::-1, :]
        if self.use_rot and vflip:
            pixels = pixels[..., ::-1, :, :]
        if self.use_rot and rot90:
            pixels = pixels.swapaxes(-3, -2)
        return np.ascontiguousarray(pixels)


@DATASET_REGISTRY.register()
class SyntheticPairedDataset(_PhotoDataset):
    """Paired (lq, gt) samples made from scikit-image's photographs, for the demo and the tests.

    Training (``phase == 'train'``) gives ``length`` samples, each a random ``gt_size`` crop of a random image,
    randomly flipped/rotated as BasicSR's ``augment`` does, then degraded. Validation (any other phase) gives
    one sample per image, a centre crop of ``val_size`` degraded with a generator seeded by ``(seed, index)``,
    so it is the same pair on every call.

    Randomness: a training sample draws all of its randomness (image, crop, flips, degradation) from
    ``numpy.random.default_rng([seed, index, r])``, where ``r`` is drawn from torch's RNG in ``__getitem__``.
    BasicSR seeds torch (and the DataLoader seeds each worker's torch RNG from it), so runs are reproducible,
    epochs differ (``r`` differs), and workers need no shared state. Python's ``random`` and ``np.random``
    are not used, so BasicSR's ``augment`` (which uses ``random``) is mirrored here with the generator.

    Args:
        opt (dict): The dataset's option block. Keys read (BasicSR's own keys such as ``name``, ``type``,
            ``batch_size_per_gpu``, ``num_worker_per_gpu``, ``io_backend`` ... are ignored):

            * ``task`` (str): ``'sr'``, ``'haze'`` or ``'rain'``. Required.
            * ``phase`` (str): ``'train'`` or another phase (validation). Defaults to ``'train'``.
            * ``images`` (list[str] | str): Names from :data:`IMAGE_NAMES`. Defaults to :data:`DEFAULT_IMAGES`.
            * ``scale`` (int): 2, 3 or 4 for ``sr``; must be 1 (or absent) for haze/rain. Defaults to 1.
            * ``gt_size`` (int): Training GT patch side, a multiple of ``scale``. Defaults to 96.
            * ``length`` (int): Training samples per epoch. Defaults to 1000.
            * ``use_hflip`` (bool): Random horizontal flip in training. Defaults to True.
            * ``use_rot`` (bool): Random vertical flip and transpose (rot90) in training. Defaults to True.
            * ``val_size`` (int | None): Validation GT centre-crop side, a multiple of ``scale``; ``None``
              takes the whole image cropped to a multiple of ``scale``. Defaults to 128 (rounded down to a
              multiple of ``scale``, i.e. 126 for x3).
            * ``seed`` (int): Base seed of every sample's generator. Defaults to 0.
            * ``degradation`` (dict): Keyword arguments of :func:`add_haze` / :func:`add_rain` (e.g.
              ``beta_range``, ``light_range``, ``density_range``). Defaults to {} (their defaults).
    """

    OPTIONS = {**_PhotoDataset.OPTIONS, 'task': Choice(*TASKS),
               'degradation': Optional(MappingOf(Check(), what='argument', min_length=0))}
    DEFAULTS = {**_PhotoDataset.DEFAULTS, 'scale': 1, 'gt_size': 96}

    def __init__(self, opt: dict[str, Any]) -> None:
        super().__init__(opt)
        self.task = self.option('task')
        self.scale = self.option('scale', Choice(*SR_SCALES, note='task sr') if self.task == 'sr' else
                                 Choice(1, note=f'task {self.task} keeps the image size: set the top-level scale to 1'))
        self.degradation = self._check_degradation(self.option('degradation') or {})
        if self.phase == 'train':
            self.gt_size = self.crop_side('gt_size')
        else:
            # the default adapts to x3 (126); a given value must be a multiple of the scale
            self.val_size = self.crop_side('val_size', whole=True, default=128 // self.scale * self.scale)

    def _check_degradation(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Validate the ``degradation`` options (keyword arguments of the task's function) by a trial run."""
        if self.task == 'sr':
            if kwargs:
                raise ValueError(f"SyntheticPairedDataset: task 'sr' takes no degradation options, got {kwargs}")
            return kwargs
        valid = list(inspect.signature(_DEGRADATIONS[self.task]).parameters)[2:]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(f'SyntheticPairedDataset: unknown degradation options {unknown} for task '
                             f'{self.task!r}; valid: {valid}')
        try:
            _DEGRADATIONS[self.task](np.zeros((8, 8, 3), np.float32), np.random.default_rng(0), **kwargs)
        except OptionError as err:
            raise err.under(f'{type(self).__name__}.degradation') from None
        return kwargs

    def _degrade(self, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The task's degradation of a GT crop (a method, not a lambda, so the dataset pickles for workers)."""
        if self.task == 'sr':
            return degrade_sr(gt, self.scale)
        return _DEGRADATIONS[self.task](gt, rng, **self.degradation)

    def __len__(self) -> int:
        return self.length if self.phase == 'train' else len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.phase == 'train':
            # The torch draw makes epochs differ while staying reproducible under BasicSR's torch seeding.
            rng = np.random.default_rng([self.seed, index, int(torch.randint(2**62, ()))])
            image_index = int(rng.integers(len(self.images)))
            gt = self._augment(self._random_crop(self.images[image_index], rng), rng)
            lq_path = f'{self.names[image_index]}_lq'
        else:
            rng = np.random.default_rng([self.seed, index])
            image_index = index
            gt = self._centre_crop(self.images[index])
            lq_path = self.names[index]  # BasicSR names validation outputs after lq_path's base name
        lq = self._degrade(gt, rng)  # crop first: degrading only the patch keeps a sample cheap
        return {'lq': _to_tensor(lq), 'gt': _to_tensor(gt), 'lq_path': lq_path, 'gt_path': self.names[image_index]}

    def _random_crop(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random ``gt_size`` square of ``img``."""
        size = self.gt_size
        top = int(rng.integers(img.shape[0] - size, endpoint=True))
        left = int(rng.integers(img.shape[1] - size, endpoint=True))
        return img[top:top + size, left:left + size]

    def _centre_crop(self, img: np.ndarray) -> np.ndarray:
        """The centred ``val_size`` square, or the whole image cut to multiples of ``scale``."""
        h, w = img.shape[:2]
        ch, cw = (h // self.scale * self.scale, w // self.scale * self.scale) if self.val_size is None else \
            (self.val_size, self.val_size)
        top, left = (h - ch) // 2, (w - cw) // 2
        return img[top:top + ch, left:left + cw]


GT_FRAMES = ('all', 'center')
PADDINGS = ('replicate', 'reflection', 'reflection_circle', 'circle')


@DATASET_REGISTRY.register()
class SyntheticVideoDataset(_PhotoDataset):
    """Short clips made from scikit-image's photographs by a moving crop, for video demos and tests.

    A clip is ``num_frame`` GT crops of one photograph whose window moves by a constant whole-pixel velocity
    ``(vy, vx)``, each component drawn from ``[-max_shift, max_shift]`` per clip (a camera pan), so frame ``t``
    is the crop at ``(top + t * vy, left + t * vx)``. Each frame is degraded on its own as the image set's
    ``sr`` task does (:func:`degrade_sr`, MATLAB-like bicubic), so the low-resolution frames move by sub-pixel
    amounts, plus optional Gaussian noise of ``noise_sigma`` 8-bit levels.

    The samples have the shapes and keys BasicSR's video models read:

    * ``gt_frames: all`` (BasicVSR/IconVSR, ``VideoRecurrentModel``): training items as ``REDSRecurrentDataset``
      (``lq`` (T, C, h, w), ``gt`` (T, C, H, W), ``key``); validation gives one item per photograph as
      ``VideoRecurrentTestDataset`` (the whole clip, ``folder``).
    * ``gt_frames: center`` (EDVR, ``VideoBaseModel``/``EDVRModel``): training items as ``REDSDataset``
      (``gt`` of the centre frame, (C, H, W)); validation gives one item per frame of each clip as
      ``VideoTestDataset``: ``lq`` is the ``num_frame`` window around frame ``i`` (``padding`` at the clip's
      ends, BasicSR's ``generate_frame_indices``), ``gt`` frame ``i``, with ``folder``, ``idx`` (``'i/T'``),
      ``border`` and ``lq_path``.

    ``data_info['folder']`` lists the folder of every validation frame, which BasicSR's video validation counts.
    Randomness follows :class:`SyntheticPairedDataset`: a training clip draws everything from
    ``numpy.random.default_rng([seed, index, r])`` with ``r`` from torch's RNG; validation clips from
    ``default_rng([seed, index])``, so they are the same on every call.

    Args:
        opt (dict): The dataset's option block (BasicSR's generic keys are ignored):

            * ``phase`` (str): ``'train'`` or another phase (validation). Defaults to ``'train'``.
            * ``images`` (list[str] | str): Names from :data:`IMAGE_NAMES`. Defaults to :data:`DEFAULT_IMAGES`.
            * ``scale`` (int): 2, 3 or 4 (BasicSR copies the top-level scale in). Defaults to 4.
            * ``num_frame`` (int): Frames per clip (training and validation); odd for ``gt_frames: center``.
              Defaults to 5.
            * ``gt_frames`` (str): ``'all'`` or ``'center'`` (see above). Defaults to ``'all'``.
            * ``max_shift`` (int): Largest per-frame motion in GT pixels along each axis. Defaults to 2.
            * ``noise_sigma`` (float): Standard deviation of the Gaussian noise added to ``lq``, in 8-bit levels
              (0 = none). Defaults to 0.
            * ``gt_size`` (int): Training GT patch side, a multiple of ``scale``. Defaults to 64.
            * ``length`` (int): Training clips per epoch. Defaults to 1000.
            * ``use_hflip``, ``use_rot`` (bool): Random flips/transpose in training, the same for every frame.
              Default to True.
            * ``val_size`` (int): Validation GT crop side, a multiple of ``scale``. Defaults to 64.
            * ``padding`` (str): Frame padding of ``gt_frames: center`` validation windows. Defaults to
              ``'reflection_circle'`` (BasicSR's EDVR files).
            * ``seed`` (int): Base seed of every clip's generator. Defaults to 0.
    """

    OPTIONS = {**_PhotoDataset.OPTIONS, 'scale': Choice(*SR_SCALES), 'gt_frames': Choice(*GT_FRAMES),
               'num_frame': Integer(low=1), 'max_shift': Integer(low=0),
               'noise_sigma': Number(low=0, note='8-bit levels'), 'padding': Choice(*PADDINGS)}
    DEFAULTS = {**_PhotoDataset.DEFAULTS, 'scale': 4, 'gt_frames': 'all', 'num_frame': 5, 'max_shift': 2,
                'noise_sigma': 0, 'padding': 'reflection_circle', 'gt_size': 64, 'val_size': 64}

    def __init__(self, opt: dict[str, Any]) -> None:
        super().__init__(opt)
        self.scale, self.gt_frames = self.option('scale'), self.option('gt_frames')
        self.num_frame = self.option('num_frame')
        if self.gt_frames == 'center' and self.num_frame % 2 == 0:
            raise ValueError(f'SyntheticVideoDataset: gt_frames center needs an odd num_frame (a centre frame), '
                             f'got {self.num_frame}')
        self.max_shift, self.noise_sigma = self.option('max_shift'), self.option('noise_sigma')
        self.padding = self.option('padding')
        reach = (self.num_frame - 1) * self.max_shift  # the moving window's path at the largest velocity
        if self.phase == 'train':
            self.size = self.crop_side('gt_size', reach)
        else:
            self.size = self.crop_side('val_size', reach)
            # BasicSR's video validation counts the frames of each folder in data_info['folder']
            self.data_info = {'folder': [name for name in self.names for _ in range(self.num_frame)]}

    def __len__(self) -> int:
        if self.phase == 'train':
            return self.length
        return len(self.names) * (self.num_frame if self.gt_frames == 'center' else 1)

    def clip(self, image_index: int, rng: np.random.Generator, centred: bool) -> np.ndarray:
        """GT frames ``(T, H, W, C)`` of one clip: a crop of the image moving by a random constant velocity.

        Args:
            image_index (int): Index into ``images``.
            rng (np.random.Generator): Source of the velocity (and, unless ``centred``, the start).
            centred (bool): Centre the clip's path in the image (validation) instead of a random start.

        Returns:
            np.ndarray: float32 frames in [0, 1].
        """
        img, size, steps = self.images[image_index], self.size, self.num_frame - 1
        vy, vx = (int(v) for v in rng.integers(-self.max_shift, self.max_shift, size=2, endpoint=True))
        corners = []
        for v, side in ((vy, img.shape[0]), (vx, img.shape[1])):
            low, high = -min(0, v * steps), side - size - max(0, v * steps)  # the start keeps every frame inside
            corners.append((low + high) // 2 if centred else int(rng.integers(low, high, endpoint=True)))
        top, left = corners
        return np.stack([img[top + t * vy:top + t * vy + size, left + t * vx:left + t * vx + size]
                         for t in range(self.num_frame)])

    def _degrade(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Bicubic downscaling of every frame, then Gaussian noise if ``noise_sigma`` > 0."""
        lq = np.stack([degrade_sr(frame, self.scale) for frame in frames])
        if self.noise_sigma:
            lq = np.clip(lq + rng.normal(0, self.noise_sigma / 255, lq.shape).astype(np.float32), 0, 1)
        return lq

    @staticmethod
    def _to_tensors(frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, C) float32 array to a new (T, C, H, W) tensor."""
        return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.phase == 'train':
            rng = np.random.default_rng([self.seed, index, int(torch.randint(2**62, ()))])
            image_index = int(rng.integers(len(self.images)))
            gt = self._augment(self.clip(image_index, rng, centred=False), rng)
            lq, gt = self._to_tensors(self._degrade(gt, rng)), self._to_tensors(gt)
            key = f'{self.names[image_index]}/{index:08d}'
            return {'lq': lq, 'gt': gt[self.num_frame // 2] if self.gt_frames == 'center' else gt, 'key': key}
        if self.gt_frames == 'all':  # VideoRecurrentTestDataset: the whole clip of one folder
            rng = np.random.default_rng([self.seed, index])
            gt = self.clip(index, rng, centred=True)
            lq = self._degrade(gt, rng)
            return {'lq': self._to_tensors(lq), 'gt': self._to_tensors(gt), 'folder': self.names[index],
                    'lq_path': f'{self.names[index]}/{self.num_frame // 2:08d}'}
        # VideoTestDataset: one item per frame, its lq the window around it
        clip_index, frame = divmod(index, self.num_frame)
        rng = np.random.default_rng([self.seed, clip_index])  # the same clip for each of its frames
        gt = self.clip(clip_index, rng, centred=True)
        lq = self._degrade(gt, rng)
        window = generate_frame_indices(frame, self.num_frame, self.num_frame, padding=self.padding)
        folder = self.names[clip_index]
        return {'lq': self._to_tensors(lq[window]), 'gt': self._to_tensors(gt[frame:frame + 1])[0],
                'folder': folder, 'idx': f'{frame}/{self.num_frame}',
                'border': int(frame < self.num_frame // 2 or frame >= self.num_frame - self.num_frame // 2),
                'lq_path': f'{folder}/{frame:08d}'}
