"""Image decoding whose errors name the file or lmdb key, for this package's datasets and BasicSR's.

BasicSR 1.4.2 decodes with ``imfrombytes(file_client.get(path))``: a 0-byte file or an empty lmdb value ends in
OpenCV's ``!buf.empty()`` assertion, an undecodable one in ``'NoneType' object has no attribute 'astype'``, and a
key missing from an lmdb in a ``TypeError``, none of which says which image. :func:`install_named_image_reads`
(called by :func:`mclir_plugin.compat.patch_basicsr`) makes ``FileClient.get`` return bytes that remember where
they came from (:class:`SourcedBytes`) and ``imfrombytes`` raise :class:`ImageReadError` naming that source and the
fix. BasicSR's files on disk are not touched.
"""
from __future__ import annotations

import sys
from typing import Callable

import cv2
import numpy as np

#: ``imfrombytes``' flag names.
IMREAD_FLAGS = {'color': cv2.IMREAD_COLOR, 'grayscale': cv2.IMREAD_GRAYSCALE, 'unchanged': cv2.IMREAD_UNCHANGED}
#: The advice for an lmdb value that cannot be decoded.
LMDB_FIX = ('rewrite it from its source image: run tools/create_lmdb.py again with the arguments that built this '
            'lmdb plus --repair (--verify lists every bad value)')
#: The advice for an image file that cannot be decoded.
FILE_FIX = 'replace the file with a good copy, or remove it (and its pair) from the dataset'


class ImageReadError(ValueError):
    """An image file or lmdb value that is missing, empty or undecodable; the message names it and the fix."""


class SourcedBytes(bytes):
    """Bytes that remember where they were read from (``source``) and how to fix them (``fix``)."""

    source: str
    fix: str


def decode_image(buf: 'bytes | None', source: str, fix: str, flag: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Decode image bytes, naming ``source`` and ``fix`` when they are missing, empty or undecodable.

    Args:
        buf (bytes | None): The encoded image (None: nothing stored).
        source (str): What was read, e.g. ``"file 'a/b.png'"`` or ``"lmdb key 'hazy/1' of 'x.lmdb'"``.
        fix (str): What to do about a bad value, appended to the message.
        flag (int): OpenCV's imread flag. Defaults to ``cv2.IMREAD_COLOR``.

    Returns:
        np.ndarray: The decoded uint8 (or 16-bit) image, HWC BGR (HW for grayscale).

    Raises:
        ImageReadError: ``buf`` is None, empty, or not a decodable image.
    """
    if buf is None:
        raise ImageReadError(f'{source}: nothing is stored there; {fix}')
    if len(buf) == 0:  # OpenCV would stop with "!buf.empty()", naming nothing
        raise ImageReadError(f'{source}: 0 bytes (an empty file or lmdb value, e.g. from an interrupted copy); {fix}')
    try:
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), flag)
    except cv2.error as err:
        raise ImageReadError(f'{source}: OpenCV cannot decode its {len(buf)} bytes ({err}); {fix}') from None
    if img is None:
        raise ImageReadError(f'{source}: cannot decode {len(buf)} bytes: corrupt, truncated or not an image; {fix}')
    return img


def _lmdb_path(client, client_key: str) -> str:
    """The folder of the lmdb a backend reads as ``client_key`` (BasicSR's LmdbBackend or a shared one)."""
    env = getattr(client, '_client', {}).get(client_key)
    if env is not None:
        return env.path()
    return getattr(client, '_paths', {}).get(client_key, '?')


def _named_get(get: Callable) -> Callable:
    """Wrap ``FileClient.get`` to return :class:`SourcedBytes` (disk, lmdb) and name a missing lmdb key."""
    def named_get(self, filepath, client_key='default'):
        value = get(self, filepath, client_key)
        if self.backend == 'lmdb':
            source = f'lmdb key {str(filepath)!r} of {_lmdb_path(self.client, client_key)!r}'
            if value is None:  # BasicSR would fail later in np.frombuffer(None) with a TypeError
                raise ImageReadError(f'{source}: not stored in the lmdb (its meta_info.txt or the dataset lists it); '
                                     're-run tools/create_lmdb.py with the arguments that built it (it adds missing '
                                     'keys)')
            fix = LMDB_FIX
        elif self.backend == 'disk':
            source, fix = f'image file {str(filepath)!r}', FILE_FIX
        else:
            return value
        named = SourcedBytes(value)
        named.source, named.fix = source, fix
        return named
    named_get.__wrapped__ = get
    return named_get


def _named_imfrombytes(imfrombytes: Callable) -> Callable:
    """Wrap BasicSR's ``imfrombytes``: same result, errors naming the source of :class:`SourcedBytes`."""
    def named_imfrombytes(content, flag='color', float32=False):
        img = decode_image(content, getattr(content, 'source', 'image bytes (source not known)'),
                           getattr(content, 'fix', FILE_FIX), IMREAD_FLAGS[flag])
        return img.astype(np.float32) / 255. if float32 else img
    named_imfrombytes.__wrapped__ = imfrombytes
    return named_imfrombytes


def install_named_image_reads() -> None:
    """Install the wrappers on BasicSR's ``FileClient.get`` and on every loaded ``imfrombytes`` (idempotent).

    The datasets import ``imfrombytes`` by name, so each ``basicsr.*`` module's binding is replaced; call this
    after ``basicsr.data`` is imported (``patch_basicsr`` imports it first).
    """
    from basicsr.utils import file_client, img_util
    if not hasattr(file_client.FileClient.get, '__wrapped__'):
        file_client.FileClient.get = _named_get(file_client.FileClient.get)
    original = getattr(img_util.imfrombytes, '__wrapped__', img_util.imfrombytes)
    named = img_util.imfrombytes if original is not img_util.imfrombytes else _named_imfrombytes(original)
    for name, module in list(sys.modules.items()):
        if (name == 'basicsr' or name.startswith('basicsr.')) and getattr(module, 'imfrombytes', None) is original:
            module.imfrombytes = named
