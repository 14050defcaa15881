"""Resumable lmdb writing in BasicSR's format, and the checks that an lmdb matches its ``meta_info.txt``.

An lmdb made here is what BasicSR's ``make_lmdb_from_imgs`` makes: ``<name>.lmdb/{data.mdb, lock.mdb,
meta_info.txt}``, each value a PNG-encoded image (``cv2.imencode('.png', img, [IMWRITE_PNG_COMPRESSION, level])``
of the image read with ``IMREAD_UNCHANGED``), each ``meta_info.txt`` line ``<key>.png (h,w,c) <level>``.

**Key scheme.** The key of a file is its path relative to the dataroot, POSIX separators, without its extension,
percent-encoded so that it holds no ``.``, whitespace, ``%`` or non-ASCII character (:func:`path_to_key`)::

    hazy/1_1_0.90179.png  ->  hazy/1_1_0%2E90179
    clear/1.png           ->  clear/1

Why: BasicSR reads a meta line's key as ``line.split('.')[0]`` and encodes keys as ASCII, so RESIDE's dotted names
(``1_1_0.90179``) would be cut to ``1_1_0`` by BasicSR's own reader, and a space would split the meta line.
Encoded keys are read back correctly by both BasicSR and :class:`~mclir_plugin.data.PairedListDataset`; keys
made by BasicSR's scripts (``0001_s001``) are already in this form.

**Resuming.** :func:`write_lmdb` skips every key already in the database (it reads the database, not the meta
file), commits every ``batch`` images, and on any exit (an error, Ctrl-C) commits what it has written and rewrites
``meta_info.txt`` to list exactly the keys in the database. Re-running the same command continues. A source image
that cannot be read (0 bytes, corrupt) is reported with its key and path after the others are written.

**Verifying and repairing.** A stored value can be bad (a disk error, a copy cut short, an earlier tool): resuming
skips it, since its key is stored. :func:`verify_lmdb` decodes every value and checks it against the meta file,
returning each bad key with the reason; ``write_lmdb(..., rewrite=keys)`` writes those keys again from their source
images (``tools/create_lmdb.py --verify`` / ``--repair``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from urllib.parse import quote, unquote

import cv2
import numpy as np

from mclir_plugin.data.image_io import ImageReadError, decode_image
from mclir_plugin.data.pair_layouts import normalise_rel_path

META_FILE = 'meta_info.txt'
_META_LINE = re.compile(r'(\S+)\s+\((\d+),\s*(\d+)(?:,\s*(\d+))?\)(?:\s+(\d+))?\s*')
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # IHDR colour type -> channels as cv2 decodes them unchanged
_MAX_KEY_BYTES = 511  # lmdb's default maximum key size


class LmdbMismatchError(ValueError):
    """An lmdb and its ``meta_info.txt`` (or the keys a dataset needs) do not agree."""


class BadSourceImagesError(ImageReadError):
    """Source images :func:`write_lmdb` could not store; ``bad`` holds ``(key, path, reason)`` of each and
    ``report`` what was written."""

    def __init__(self, message: str, bad: list[tuple[str, str, str]], report: 'LmdbWriteReport') -> None:
        super().__init__(message)
        self.bad, self.report = bad, report


class BadValuesError(LmdbMismatchError):
    """Stored values that are not PNG images; ``keys`` names them and ``report`` says what was written."""

    def __init__(self, message: str, keys: list[str], report: 'LmdbWriteReport') -> None:
        super().__init__(message)
        self.keys, self.report = keys, report


def path_to_key(rel_path: str) -> str:
    """The lmdb key of a relative path: no extension, percent-encoded (``hazy/1_1_0.9.png -> hazy/1_1_0%2E9``)."""
    stem = os.path.splitext(normalise_rel_path(rel_path))[0]
    # quote() leaves letters, digits, '_.-~' and '/' alone; dots are the one thing BasicSR's reader cuts at.
    return quote(stem, safe='/').replace('.', '%2E')


def key_to_path(key: str) -> str:
    """The relative path (without extension) that :func:`path_to_key` encoded as ``key``."""
    return unquote(key)


def check_key(key: str) -> None:
    """Raise ValueError when ``key`` would be misread by BasicSR or refused by lmdb."""
    if not key or not key.isascii() or '.' in key or any(ch.isspace() for ch in key):
        raise ValueError(f'lmdb key {key!r} must be non-empty ASCII without dots or whitespace (BasicSR reads meta '
                         'keys as line.split(".")[0]); make keys with path_to_key()')
    if len(key.encode('ascii')) > _MAX_KEY_BYTES:
        raise ValueError(f'lmdb key {key[:60]!r}... is longer than {_MAX_KEY_BYTES} bytes; shorten the paths')


def meta_key(name: str) -> str:
    """The key of a meta line's first field: ``<key>.png`` minus its extension (only the last dot)."""
    return name.rsplit('.', 1)[0] if '.' in name else name


def read_meta_info(lmdb_path: str) -> dict[str, tuple[int, int, int]]:
    """``{key: (h, w, c)}`` of ``<lmdb_path>/meta_info.txt``, in file order.

    Raises:
        FileNotFoundError: The lmdb folder or its meta file is missing.
        LmdbMismatchError: A line is malformed, or a key is listed twice (named with its line number).
    """
    meta_path = os.path.join(lmdb_path, META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f'{meta_path!r} does not exist: {lmdb_path!r} is not an lmdb made by '
                                'tools/create_lmdb.py or BasicSR (re-run tools/create_lmdb.py to write it)')
    meta: dict[str, tuple[int, int, int]] = {}
    with open(meta_path, encoding='utf-8') as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            match = _META_LINE.fullmatch(line)
            if not match:
                raise LmdbMismatchError(f'{meta_path}, line {number}: expected "<key>.png (h,w,c) <level>", '
                                        f'got {line.strip()!r}')
            key = meta_key(match.group(1))
            if key in meta:
                raise LmdbMismatchError(f'{meta_path}, line {number}: key {key!r} is listed twice')
            meta[key] = (int(match.group(2)), int(match.group(3)), int(match.group(4) or 1))
    return meta


# py-lmdb refuses to open an environment twice in one process, and a forked child inherits that refusal for every
# environment its parent holds open. So readers share one read-only handle per lmdb and process, and all handles
# are closed just before a fork (DataLoader workers): the child opens its own, the parent reopens on next use.
_SHARED_ENVS: dict = {}


def shared_env(lmdb_path: str, **kwargs: Any):
    """This process's read-only handle of the lmdb at ``lmdb_path`` (opened on first use; kwargs go to lmdb.open)."""
    key = (os.getpid(), os.path.realpath(lmdb_path))  # a handle inherited through a fork must not be used
    env = _SHARED_ENVS.get(key)
    if env is None:
        import lmdb  # lazily: only lmdb users need the package
        if not os.path.isfile(os.path.join(lmdb_path, 'data.mdb')):
            raise FileNotFoundError(f'{lmdb_path!r} is not an lmdb (no data.mdb); build it with tools/create_lmdb.py')
        options = dict(readonly=True, lock=False, readahead=False)
        options.update(kwargs)
        env = _SHARED_ENVS[key] = lmdb.open(lmdb_path, **options)
    return env


def close_shared_envs(lmdb_path: 'str | None' = None) -> None:
    """Close the shared read-only handle of ``lmdb_path`` (all of them when None); the next read reopens it."""
    keys = list(_SHARED_ENVS) if lmdb_path is None else [(os.getpid(), os.path.realpath(lmdb_path))]
    for key in keys:
        env = _SHARED_ENVS.pop(key, None)
        if env is not None:
            env.close()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(before=close_shared_envs)


def read_keys(lmdb_path: str) -> set[str]:
    """All keys stored in the lmdb at ``lmdb_path``."""
    with shared_env(lmdb_path).begin() as txn:
        return {key.decode('ascii') for key in txn.cursor().iternext(keys=True, values=False)}


def _examples(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    return ', '.join(repr(k) for k in keys[:limit]) + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


def check_lmdb(lmdb_path: str) -> dict[str, tuple[int, int, int]]:
    """Read ``meta_info.txt`` and check that it lists exactly the keys stored in the lmdb.

    Returns:
        dict[str, tuple[int, int, int]]: The meta information, ``{key: (h, w, c)}``.

    Raises:
        LmdbMismatchError: Keys in the meta file but not the db, or in the db but not the meta file.
    """
    meta = read_meta_info(lmdb_path)
    stored = read_keys(lmdb_path)
    missing, unlisted = set(meta) - stored, stored - set(meta)
    if missing or unlisted:
        raise LmdbMismatchError(
            f'{lmdb_path}: {META_FILE} does not match the database: {len(missing)} listed keys are not stored '
            f'({_examples(missing)}), {len(unlisted)} stored keys are not listed ({_examples(unlisted)}). Re-run '
            'tools/create_lmdb.py with the same arguments: it resumes and rewrites the meta file.')
    return meta


def png_shape(value: bytes) -> tuple[int, int, int]:
    """``(h, w, c)`` of a PNG from its header, without decoding it."""
    if len(value) < 26 or value[:8] != _PNG_SIGNATURE or value[12:16] != b'IHDR':
        raise ValueError('value is not a PNG image')
    width, height = int.from_bytes(value[16:20], 'big'), int.from_bytes(value[20:24], 'big')
    return height, width, _PNG_CHANNELS.get(value[25], 3)


def encode_image(path: str, compress_level: int = 1) -> tuple[bytes, tuple[int, int, int]]:
    """Read an image file as BasicSR's ``read_img_worker`` does and PNG-encode it.

    Returns:
        tuple[bytes, tuple[int, int, int]]: The PNG bytes and ``(h, w, c)``.

    Raises:
        ImageReadError: The file is empty or cannot be decoded (corrupt or not an image), named.
    """
    # np.fromfile + imdecode rather than cv2.imread: the same decoder, and non-ASCII paths work everywhere.
    img = decode_image(np.fromfile(path, dtype=np.uint8).tobytes(), f'source image {path!r}',
                       'replace it with a good copy (or remove it from the list) and re-run: it resumes',
                       cv2.IMREAD_UNCHANGED)
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise ValueError(f'cannot PNG-encode {path!r} (shape {img.shape}, dtype {img.dtype})')
    h, w = img.shape[:2]
    return buf.tobytes(), (h, w, 1 if img.ndim == 2 else img.shape[2])


@dataclass
class LmdbWriteReport:
    """What :func:`write_lmdb` did: ``total`` distinct keys asked for, ``written`` now (``rewritten`` of them
    replaced a stored value), ``skipped`` (already in)."""

    lmdb_path: str
    total: int
    written: int
    skipped: int
    rewritten: tuple[str, ...] = ()


@dataclass(frozen=True)
class BadValue:
    """A stored value that fails :func:`verify_lmdb`: its ``key`` and the ``reason``."""

    key: str
    reason: str


def check_value(value: 'bytes | None', meta_shape: 'tuple[int, int, int] | None' = None) -> 'str | None':
    """Why a stored value is bad (None when it decodes as a PNG of the meta file's shape).

    Args:
        value (bytes | None): The stored bytes.
        meta_shape (tuple[int, int, int] | None): ``(h, w, c)`` from ``meta_info.txt``; None skips that check.
    """
    if value is None:
        return 'not stored'
    if len(value) == 0:
        return 'empty value (0 bytes)'
    try:
        png_shape(value)
    except ValueError:
        return f'value is not a PNG image ({len(value)} bytes starting {bytes(value[:8])!r})'
    img = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:  # a valid header with cut or damaged data
        return f'PNG data cannot be decoded ({len(value)} bytes: truncated or corrupt)'
    shape = (*img.shape[:2], 1 if img.ndim == 2 else img.shape[2])
    if meta_shape is not None and tuple(meta_shape) != shape:
        return f'image is {shape} but {META_FILE} says {tuple(meta_shape)}'
    return None


def verify_lmdb(lmdb_path: str, progress: bool = True) -> list[BadValue]:
    """Decode every value of an lmdb and check it against ``meta_info.txt``.

    Args:
        lmdb_path (str): The lmdb folder.
        progress (bool): Show a tqdm progress bar. Defaults to True.

    Returns:
        list[BadValue]: Each bad key with its reason (empty, not a PNG, undecodable, shape differing from the meta
        file, listed in the meta file but not stored), in key order; empty when all are good.
    """
    from tqdm import tqdm

    meta = read_meta_info(lmdb_path) if os.path.isfile(os.path.join(lmdb_path, META_FILE)) else {}
    bad = []
    with shared_env(lmdb_path).begin() as txn:
        stored = txn.stat()['entries']
        for raw_key, value in tqdm(txn.cursor(), total=stored, desc=f'verify {os.path.basename(lmdb_path)}',
                                   unit='img', disable=not progress):
            key = raw_key.decode('ascii')
            reason = check_value(value, meta.get(key))
            if not reason and meta and key not in meta:
                reason = f'stored but not listed in {META_FILE} (re-running tools/create_lmdb.py rewrites it)'
            if reason:
                bad.append(BadValue(key, reason))
        bad += [BadValue(key, f'listed in {META_FILE} but not stored') for key in meta
                if txn.get(key.encode('ascii')) is None]
    return sorted(bad, key=lambda item: item.key)


def _unique_items(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop repeated ``(key, file)`` items (RESIDE's GT appears once per hazy image); refuse one key, two files."""
    files: dict[str, str] = {}
    for key, path in items:
        check_key(key)
        if files.setdefault(key, path) != path:
            raise ValueError(f'files {files[key]!r} and {path!r} would both be stored under key {key!r} (they differ '
                             'only in the extension); rename one')
    return list(files.items())


def write_lmdb(items: Sequence[tuple[str, str]],
               lmdb_path: str,
               compress_level: int = 1,
               batch: int = 1000,
               map_size: 'int | None' = None,
               progress: bool = True,
               rewrite: Iterable[str] = ()) -> LmdbWriteReport:
    """Store image files in an lmdb under the given keys, resuming an earlier, interrupted run.

    Args:
        items (Sequence[tuple[str, str]]): ``(key, image file)`` pairs; repeats of the same pair are stored once.
        lmdb_path (str): The lmdb folder, ending in ``.lmdb`` (as BasicSR requires); created when missing.
        compress_level (int): PNG compression level 0-9. Defaults to 1 (BasicSR's default).
        batch (int): Images per transaction; at most this many are redone after a crash. Defaults to 1000.
        map_size (int | None): lmdb map size in bytes. Defaults to None: 10x the source files' size plus the
            current database (space is only used as written).
        progress (bool): Show a tqdm progress bar. Defaults to True.
        rewrite (Iterable[str]): Stored keys to write again from their source (repairing bad values, see
            :func:`verify_lmdb`); each must be one of ``items``' keys. Defaults to ().

    Returns:
        LmdbWriteReport: Counts of the keys written and skipped.

    Raises:
        FileNotFoundError: A source file is missing (checked before anything is written).
        BadSourceImagesError: Source images that are empty or corrupt, each named with its key (the others are
            written and committed first).
        BadValuesError: Stored values (not rewritten) that are not PNG images, named; ``meta_info.txt`` then
            lists the good ones.
        ValueError: A bad key, a key with two files, or a key to rewrite without a source among ``items``.
    """
    if not lmdb_path.endswith('.lmdb'):
        raise ValueError(f"lmdb path {lmdb_path!r} must end with '.lmdb' (BasicSR checks the suffix)")
    items = _unique_items(items)
    rewrite = set(rewrite)
    unknown = rewrite.difference(key for key, _ in items)
    if unknown:
        raise ValueError(f'{lmdb_path}: no source image is given for the keys to rewrite {_examples(unknown)}; '
                         'pass the list or folders this lmdb was built from')
    missing = [path for _, path in items if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f'{len(missing)} source files do not exist, e.g. {missing[:3]}; fix the list or '
                                'the dataroot')
    os.makedirs(lmdb_path, exist_ok=True)
    data_file = os.path.join(lmdb_path, 'data.mdb')
    existing_size = os.path.getsize(data_file) if os.path.isfile(data_file) else 0
    if map_size is None:
        map_size = 10 * sum(os.path.getsize(path) for _, path in items) + 2 * existing_size + (64 << 20)
    import lmdb
    close_shared_envs(lmdb_path)  # a reader's handle in this process would make lmdb refuse the writer's
    env = lmdb.open(lmdb_path, map_size=map_size)
    shapes: dict[str, tuple[int, int, int]] = {}
    failed: list[tuple[str, str, str]] = []
    try:
        with env.begin() as txn:
            stored = {key.decode('ascii') for key in txn.cursor().iternext(keys=True, values=False)}
        todo = [(key, path) for key, path in items if key not in stored or key in rewrite]
        _write_values(env, todo, shapes, compress_level, batch, progress, os.path.basename(lmdb_path), failed)
    finally:
        # Also after an error: the meta file then lists what the committed transactions hold, nothing more.
        bad_values = _write_meta(env, lmdb_path, [key for key, _ in items], shapes, compress_level)
        env.close()
    written = len(todo) - len(failed)
    report = LmdbWriteReport(lmdb_path, len(items), written, len(items) - len(todo),
                             tuple(key for key, _ in todo if key in rewrite and key not in {f[0] for f in failed}))
    if bad_values:
        raise BadValuesError(f'{lmdb_path}: {len(bad_values)} stored values are not PNG images: '
                             f'{_examples(bad_values, 20)}. Run tools/create_lmdb.py again with the same arguments '
                             'plus --repair to rewrite them from their source images (--verify lists every bad value '
                             'and why).', bad_values, report)
    if failed:
        lines = ''.join(f'\n  key {key!r}: {reason}' for key, _, reason in failed[:20])
        more = f'\n  ... and {len(failed) - 20} more' if len(failed) > 20 else ''
        raise BadSourceImagesError(f'{lmdb_path}: {len(failed)} source images could not be stored (the other '
                                   f'{written} were):{lines}{more}', failed, report)
    return report


def _write_values(env, todo: Sequence[tuple[str, str]], shapes: dict, compress_level: int, batch: int,
                  progress: bool, name: str, failed: list) -> None:
    """Put the ``todo`` images (their shapes into ``shapes``), committing every ``batch``.

    A source that cannot be read is appended to ``failed`` as ``(key, path, reason)`` and skipped (a stored value
    it was to replace is deleted, so that nothing bad stays listed). On any other error, the puts that completed
    are committed before it propagates.
    """
    import lmdb
    from tqdm import tqdm

    txn = env.begin(write=True)
    try:
        for count, (key, path) in enumerate(tqdm(todo, desc=f'write {name}', unit='img', disable=not progress), 1):
            try:
                value, shapes[key] = encode_image(path, compress_level)
            except ImageReadError as err:
                failed.append((key, path, str(err)))
                txn.delete(key.encode('ascii'))
                continue
            txn.put(key.encode('ascii'), value)
            if count % batch == 0:
                txn.commit()
                txn = env.begin(write=True)
    except lmdb.MapFullError:
        txn.abort()
        raise RuntimeError(f'{name}: the lmdb map size is full; re-run with a larger --map-size (it resumes)') from None
    except BaseException:
        try:
            txn.commit()  # every put so far completed; keeping them is what makes the re-run shorter
        except lmdb.Error:
            txn.abort()
        raise
    txn.commit()


def _write_meta(env, lmdb_path: str, keys: Sequence[str], shapes: dict, compress_level: int) -> list[str]:
    """Write ``meta_info.txt`` listing every stored key: ``keys``' order first, then any other stored keys.

    Returns:
        list[str]: Stored keys whose value has no readable PNG header; the meta file leaves them out.
    """
    lines, bad = [], []
    with env.begin() as txn:
        stored = {key.decode('ascii') for key in txn.cursor().iternext(keys=True, values=False)}
        in_order = [key for key in keys if key in stored] + sorted(stored.difference(keys))
        for key in in_order:
            # Keys written by an earlier run: their shape comes from the stored PNG header (no decoding).
            try:
                h, w, c = shapes.get(key) or png_shape(txn.get(key.encode('ascii')))
            except ValueError:
                bad.append(key)
                continue
            lines.append(f'{key}.png ({h},{w},{c}) {compress_level}\n')
    tmp = os.path.join(lmdb_path, META_FILE + '.tmp')
    with open(tmp, 'w', encoding='utf-8') as handle:
        handle.writelines(lines)
    os.replace(tmp, os.path.join(lmdb_path, META_FILE))  # atomic: a crash here leaves the old meta file whole
    return bad
