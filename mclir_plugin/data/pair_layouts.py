"""Pairing rules of the public dehazing/deraining datasets, and the pair-list file format.

**List file format** (read by :class:`~mclir_plugin.data.paired_list_dataset.PairedListDataset`, written by
``tools/make_pair_list.py``): one pair per line, ``<lq path> <gt path>``, separated by whitespace::

    # lq gt (paths relative to dataroot_lq / dataroot_gt, or both to dataroot)
    hazy/1_1_0.90179.png clear/1.png
    hazy/1_2_0.82193.png clear/1.png
    "rainy image/1_1.jpg" "ground truth/1.jpg"

Blank lines and lines starting with ``#`` are skipped. Paths are always relative (to ``dataroot_lq`` and
``dataroot_gt``, which default to a common ``dataroot``): a leading ``/`` or ``./`` is dropped, so SPA-Data's
official ``real_world.txt`` / ``real_test_1000.txt`` (``/real_world/000/...``) are valid list files as they are.
A GT file may appear on many lines (RESIDE, SPA and DDN are many-to-one).

**Paths with spaces** (DDN's ``rainy image/`` and ``ground truth/``): write the path in double quotes, as
:func:`write_pair_list` does, or separate the two paths of the line by one tab (a line holding a tab is split at
tabs only, so its paths may hold spaces without quotes). A path cannot hold a double quote, a tab or a newline.

**Layouts** (:data:`LAYOUTS`; ``root`` is the folder named in each rule). Every layout scans its folders
recursively, pairs each LQ file with the GT file whose *key* matches, and reports the rest as unmatched:

================  =============================================  ===============================================
layout            LQ -> GT                                       key rule
================  =============================================  ===============================================
``reside_its``    ``hazy/1_1_0.90179.png -> clear/1.png``        ``lq_stem.split('_')[0] == gt_stem``
``reside_ots``    ``hazy/0001_0.8_0.2.jpg -> clear/0001.jpg``    same (``haze/`` and nested ``part*/`` work too)
``sots``          ``hazy/1400_1.png -> gt/1400.png``;            same; the extensions may differ. ``root`` is
                  ``hazy/0001_0.8_0.2.jpg -> gt/0001.png``       ``indoor/``, ``outdoor/`` or their parent
``dehazeformer``  ``hazy/x.png -> GT/x.png`` (DehazeFormer's     equal stems, one-to-one; ``root`` is a split,
                  ``RESIDE-IN``/``-OUT``/``-6K`` repacks)        ``<set>/train`` or ``<set>/test``
``reside6k``      ``hazy/x.png -> GT/x.png``                     equal stems (else ``split('_')[0]``)
``rain_pairs``    ``rain-001.png -> norain-001.png``;            number of ``rain-N`` / ``norain-Nx2`` (LQ) ==
                  ``rain/X2/norain-1x2.png -> norain/norain-1``  number of ``norain-N`` (GT), anywhere in root
``spa``           ``real_world/000/000-1/000-1_0_0.png``         ``{vid}-{frame}_{x}_{y} -> {vid}_{x}_{y}``;
                  ``-> real_world_gt/000/000_0_0.png``;          test set (root ``real_test_1000``):
                  ``rain/000.png -> gt/000gt.png``               ``N -> Ngt``
``ddn``           ``rainy image/1_1.jpg -> ground truth/1.jpg``  ``lq_stem.split('_')[0] == gt_stem``; also
                  (the archive's folder names hold spaces)       ``rainy_image``, ``input``/``groundtruth``
``did``           ``input/1.jpg -> groundtruth/1.jpg``           equal stems (IDT's copy; see below)
``folders``       ``lq/x.png -> gt/x.png``                       equal stems (``--lq-dir``/``--gt-dir``)
================  =============================================  ===============================================

Each layout accepts a few folder names (:attr:`Layout.lq_dirs`, e.g. DDN's official ``rainy image`` or IDT's
``input``). The official DID-MDN release stores each pair side by side in one image: split it into ``input/``
and ``groundtruth/`` first. :func:`suggest_layouts` scans a folder with every layout and ranks them by pairs
found (``tools/make_pair_list.py --layout auto``, and its advice when the chosen layout finds no pairs).
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

#: File extensions recognised as images (compared case-insensitively).
IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')

#: Reasons a scanned file is left out of the pairs (the second item of :attr:`PairScan.unmatched`).
NO_GT = 'LQ without GT'
UNUSED_GT = 'GT never used'
BAD_LQ_NAME = 'LQ name not in the layout'
BAD_GT_NAME = 'GT name not in the layout'
BAD_NAME = 'name not in the layout'  # a shared LQ/GT folder (rain_pairs): neither an LQ nor a GT name
_GT_SIDE = (UNUSED_GT, BAD_GT_NAME)


@dataclass(frozen=True)
class Layout:
    """How one dataset names its pairs.

    Attributes:
        name (str): The ``--layout`` name.
        lq_dirs (tuple[str, ...]): Accepted LQ folder names under the root, first existing wins; ``''`` is the
            root itself.
        gt_dirs (tuple[str, ...]): Accepted GT folder names, likewise.
        lq_keys (Callable): Maps an LQ file stem to its candidate keys, tried in order (empty: not in the layout).
        gt_key (Callable): Maps a GT file stem to its key, or None when the name is not in the layout.
        many_to_one (bool): Whether several LQ files may share one GT file.
        about (str): The datasets it is for, in a few words (shown in suggestions). Defaults to ''.
    """

    name: str
    lq_dirs: tuple[str, ...]
    gt_dirs: tuple[str, ...]
    lq_keys: Callable[[str], tuple[str, ...]]
    gt_key: Callable[[str], 'str | None']
    many_to_one: bool
    about: str = ''


@dataclass
class PairScan:
    """The result of a scan.

    Attributes:
        pairs (list[tuple[str, str]]): ``(lq, gt)`` paths (POSIX, relative to the scanned root), sorted by LQ.
        unmatched (list[tuple[str, str]]): ``(path, reason)`` of the files left out, reason one of
            :data:`NO_GT`, :data:`UNUSED_GT`, :data:`BAD_LQ_NAME`, :data:`BAD_GT_NAME`, :data:`BAD_NAME`.
    """

    pairs: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[tuple[str, str]] = field(default_factory=list)

    def unmatched_by_reason(self, reason: str) -> list[str]:
        """The unmatched paths left out for ``reason``."""
        return [path for path, why in self.unmatched if why == reason]


def _prefix_key(stem: str) -> tuple[str, ...]:
    """RESIDE/DDN: ``1_1_0.90179 -> 1``; a stem without ``_`` is not a degraded image of these sets."""
    return (stem.split('_')[0],) if '_' in stem else ()


def _same_or_prefix_key(stem: str) -> tuple[str, ...]:
    return (stem, stem.split('_')[0]) if '_' in stem else (stem,)


def _regex_key(*patterns: str) -> Callable[[str], tuple[str, ...]]:
    """Key = the number of the first matching pattern, as an int string, so ``rain-001`` pairs with ``norain-1``."""
    compiled = [re.compile(p) for p in patterns]

    def keys(stem: str) -> tuple[str, ...]:
        for pattern in compiled:
            match = pattern.fullmatch(stem)
            if match:
                return ('_'.join(str(int(g)) if g.isdigit() else g for g in match.groups()),)
        return ()
    return keys


def _first(keys: Callable[[str], tuple[str, ...]]) -> Callable[[str], 'str | None']:
    return lambda stem: next(iter(keys(stem)), None)


_HAZY_DIRS = ('hazy', 'haze', 'Hazy')
_CLEAR_DIRS = ('clear', 'gt', 'GT', 'Clear')
_RAIN_LQ_DIRS = ('rainy image', 'rainy_image', 'input', 'rain', 'rainy')  # DDN's archive: 'rainy image'
_RAIN_GT_DIRS = ('ground truth', 'ground_truth', 'groundtruth', 'norain', 'gt')
_identity: Callable[[str], tuple[str, ...]] = lambda stem: (stem,)  # noqa: E731

#: The known layouts by ``--layout`` name. ``spa`` is the training tree; :func:`scan_layout` switches to
#: :data:`SPA_TEST` when the root holds ``rain/`` and ``gt/`` instead.
LAYOUTS: dict[str, Layout] = {
    'reside_its': Layout('reside_its', ('hazy',), _CLEAR_DIRS, _prefix_key, lambda s: s, True,
                         'RESIDE ITS: hazy/1_1_0.90179.png -> clear/1.png'),
    'reside_ots': Layout('reside_ots', _HAZY_DIRS, _CLEAR_DIRS, _prefix_key, lambda s: s, True,
                         'RESIDE OTS: hazy/0001_0.8_0.2.jpg -> clear/0001.jpg'),
    'sots': Layout('sots', _HAZY_DIRS, ('gt', 'GT', 'clear'), _prefix_key, lambda s: s, True,
                   'RESIDE SOTS indoor/outdoor: hazy/1400_1.png -> gt/1400.png'),
    # Before reside6k: on a DehazeFormer repack both find the same pairs, and this name says what the tree is.
    'dehazeformer': Layout('dehazeformer', ('hazy',), ('GT', 'gt', 'clear'), _identity, lambda s: s, False,
                           "DehazeFormer's repacks RESIDE-IN/OUT/6K: <set>/{train,test}/{hazy,GT}, equal names"),
    'reside6k': Layout('reside6k', _HAZY_DIRS, ('GT', 'gt', 'clear'), _same_or_prefix_key, lambda s: s, True,
                       'RESIDE-6K: hazy/x.png -> GT/x.png'),
    'rain_pairs': Layout('rain_pairs', ('',), ('',), _regex_key(r'rain-(\d+)', r'norain-(\d+)x\d+'),
                         _first(_regex_key(r'norain-(\d+)')), False,
                         'Rain100/Rain200: rain-001.png -> norain-001.png, rain/X2/norain-1x2.png -> norain-1.png'),
    'spa': Layout('spa', ('real_world',), ('real_world_gt',), _regex_key(r'(.+)-\d+_(\d+)_(\d+)'),
                  _first(_regex_key(r'(.+)_(\d+)_(\d+)')), True, 'SPA-Data: real_world/ -> real_world_gt/'),
    'ddn': Layout('ddn', _RAIN_LQ_DIRS, _RAIN_GT_DIRS, _prefix_key, lambda s: s, True,
                  "DDN-Data: 'rainy image/1_1.jpg' -> 'ground truth/1.jpg'"),
    'did': Layout('did', ('input', 'rain', 'rainy_image'), ('groundtruth', 'ground_truth', 'norain', 'gt'),
                  _identity, lambda s: s, False, "DID-Data (IDT's copy): input/1.jpg -> groundtruth/1.jpg"),
    'folders': Layout('folders', ('lq',), ('gt',), _identity, lambda s: s, False, 'lq/x.png -> gt/x.png'),
}
#: SPA-Data's test set ``real_test_1000/{rain/000.png, gt/000gt.png}``.
SPA_TEST = Layout('spa', ('rain',), ('gt',), _regex_key(r'(.+)'), _first(_regex_key(r'(.+)gt')), False)


def natural_key(path: str) -> list:
    """Sort key putting ``2_1.png`` before ``10_1.png``."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', path)]


def list_images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursive), as sorted POSIX paths relative to it; hidden files skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith('.')]
        rel_dir = os.path.relpath(dirpath, folder).replace(os.sep, '/')
        for name in filenames:
            if not name.startswith('.') and name.lower().endswith(IMG_EXTENSIONS):
                found.append(name if rel_dir == '.' else f'{rel_dir}/{name}')
    return sorted(found, key=natural_key)


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def pair_folders(lq_folder: str, gt_folder: str, layout: 'Layout | str') -> PairScan:
    """Pair the images of two folders (or one shared folder) by ``layout``'s key rule.

    Args:
        lq_folder (str): Folder of the LQ images (scanned recursively).
        gt_folder (str): Folder of the GT images; may equal ``lq_folder``, then each file is LQ or GT by its name.
        layout (Layout | str): The rule, or a name in :data:`LAYOUTS`.

    Returns:
        PairScan: Pairs with LQ paths relative to ``lq_folder`` and GT paths relative to ``gt_folder``.

    Raises:
        ValueError: Two GT files share a key, or (one-to-one layouts) two LQ files do.
    """
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    shared = os.path.abspath(lq_folder) == os.path.abspath(gt_folder)
    lq_files = list_images(lq_folder)
    gt_files = lq_files if shared else list_images(gt_folder)
    scan = PairScan()

    gt_by_key: dict[str, str] = {}
    for path in gt_files:
        key = layout.gt_key(_stem(path))
        if key is None:
            if not shared:
                scan.unmatched.append((path, BAD_GT_NAME))
            continue
        if key in gt_by_key:
            raise ValueError(f'{layout.name}: GT files {gt_by_key[key]!r} and {path!r} under {gt_folder!r} both '
                             f'have key {key!r}; remove one, or point the root at a single split.')
        gt_by_key[key] = path

    used, lq_by_key = set(), {}
    for path in lq_files:
        keys = layout.lq_keys(_stem(path))
        if not keys:
            if not shared:
                scan.unmatched.append((path, BAD_LQ_NAME))
            elif layout.gt_key(_stem(path)) is None:
                scan.unmatched.append((path, BAD_NAME))
            continue
        key = next((k for k in keys if k in gt_by_key), None)
        if key is None:
            scan.unmatched.append((path, NO_GT))
            continue
        if not layout.many_to_one and key in lq_by_key:
            raise ValueError(f'{layout.name}: LQ files {lq_by_key[key]!r} and {path!r} both pair with GT '
                             f'{gt_by_key[key]!r}; this layout is one-to-one: remove one, or point the root at a '
                             'single split.')
        lq_by_key[key] = path
        used.add(key)
        scan.pairs.append((path, gt_by_key[key]))
    scan.unmatched += [(path, UNUSED_GT) for key, path in gt_by_key.items() if key not in used]
    return scan


def _pick_dir(root: str, candidates: Sequence[str], side: str, layout: str) -> str:
    for name in candidates:
        if os.path.isdir(os.path.join(root, name)):
            return name
    # A set's top folder (DehazeFormer's RESIDE-IN/{train,test}, DDN's training/testing): name its splits.
    splits = sorted(d for d in os.listdir(root) if any(os.path.isdir(os.path.join(root, d, c)) for c in candidates))
    hint = (f'{root!r} holds the splits {", ".join(splits)}: point --root at one of them (e.g. '
            f'{os.path.join(root, splits[0])!r}); a list holds one split' if splits else
            f'point --root at the folder holding them, or name the folder with --{side}-dir')
    raise FileNotFoundError(f'{layout}: no {side} folder under {root!r} (looked for '
                            f'{", ".join(repr(c) for c in candidates)}); {hint}.')


def scan_layout(layout: str, root: str, lq_dir: 'str | None' = None, gt_dir: 'str | None' = None) -> PairScan:
    """Find the pairs of a dataset folder laid out as ``layout``.

    Args:
        layout (str): A name in :data:`LAYOUTS`.
        root (str): The dataset folder (see the module docstring for what each layout expects there).
        lq_dir (str | None): LQ folder under ``root``, overriding the layout's usual names. Defaults to None.
        gt_dir (str | None): GT folder under ``root``, likewise. Defaults to None.

    Returns:
        PairScan: Pairs and unmatched files, all paths POSIX and relative to ``root``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'unknown layout {layout!r}; choose one of {", ".join(LAYOUTS)}')
    if not os.path.isdir(root):
        raise FileNotFoundError(f'{layout}: dataset folder {root!r} does not exist')
    rule = LAYOUTS[layout]
    if layout == 'sots' and not lq_dir and not any(os.path.isdir(os.path.join(root, d)) for d in rule.lq_dirs):
        parts = [d for d in ('indoor', 'outdoor') if os.path.isdir(os.path.join(root, d))]
        if parts:  # the SOTS folder itself: scan both halves
            return _merge([(part, scan_layout(layout, os.path.join(root, part), lq_dir, gt_dir)) for part in parts])
    if layout == 'spa' and not lq_dir and not os.path.isdir(os.path.join(root, 'real_world')):
        rule = SPA_TEST
    try:
        lq_name = lq_dir if lq_dir is not None else _pick_dir(root, rule.lq_dirs, 'lq', layout)
        gt_name = gt_dir if gt_dir is not None else _pick_dir(root, rule.gt_dirs, 'gt', layout)
    except FileNotFoundError as err:
        if layout != 'did':
            raise
        raise FileNotFoundError(f'{err} The official DID-MDN images hold the rainy and the clean image side by '
                                'side: split them into input/ and groundtruth/ (equal names) first.') from None
    scan = pair_folders(os.path.join(root, lq_name), os.path.join(root, gt_name), rule)
    return _merge([('', scan)], lq_name, gt_name)


def suggest_layouts(root: str, exclude: Sequence[str] = ()) -> list[tuple[str, int]]:
    """Scan ``root`` with every layout (but ``exclude``) and rank those that pair files.

    Args:
        root (str): The dataset folder.
        exclude (Sequence[str]): Layout names to leave out (the one already tried). Defaults to ().

    Returns:
        list[tuple[str, int]]: ``(layout, number of pairs)`` for every layout finding at least one pair, most
        pairs first (ties in :data:`LAYOUTS` order).
    """
    found = []
    for name in LAYOUTS:
        if name in exclude:
            continue
        try:
            pairs = len(scan_layout(name, root).pairs)
        except (OSError, ValueError):
            continue
        if pairs:
            found.append((name, pairs))
    return sorted(found, key=lambda item: -item[1])


def _join(*parts: str) -> str:
    return posixpath.join(*[p for p in parts if p]) if any(parts) else ''


def _merge(parts: Iterable[tuple[str, PairScan]], lq_dir: str = '', gt_dir: str = '') -> PairScan:
    """Prefix each part's paths with its folder (and the LQ/GT folder names) and concatenate."""
    merged = PairScan()
    for prefix, scan in parts:
        merged.pairs += [(_join(prefix, lq_dir, lq), _join(prefix, gt_dir, gt)) for lq, gt in scan.pairs]
        merged.unmatched += [(_join(prefix, gt_dir if why in _GT_SIDE else lq_dir, path), why)
                             for path, why in scan.unmatched]
    return merged


# ----------------------------------------------------------------------------------------------- list files


@dataclass(frozen=True)
class PairLine:
    """One pair of a list file: its 1-based line number and the two relative paths."""

    line: int
    lq: str
    gt: str


def normalise_rel_path(path: str) -> str:
    """A list path as a clean relative POSIX path: ``/a/./b.png``, ``./a/b.png``, ``a\\b.png`` -> ``a/b.png``."""
    path = posixpath.normpath(path.replace('\\', '/')).lstrip('/')
    return '' if path == '.' else path


_FIELD = re.compile(r'"([^"]*)"|(\S+)')
_PATH_FORBIDDEN = ('"', '\t', '\n', '\r')


def split_list_line(line: str) -> list[str]:
    """The paths of one list line: split at tabs when it holds one, else at spaces outside double quotes.

    Raises:
        ValueError: A double quote is not closed, or stands inside an unquoted path.
    """
    text = line.rstrip('\r\n')
    if '\t' in text:
        return [field.strip() for field in text.split('\t') if field.strip()]
    fields = []
    for match in _FIELD.finditer(text):
        quoted, bare = match.groups()
        if bare is not None and '"' in bare:
            raise ValueError(f'unbalanced double quote in {bare!r}: quote a whole path ("rainy image/1_1.jpg")')
        fields.append(quoted if quoted is not None else bare)
    return fields


def read_pair_list(list_file: str) -> list[PairLine]:
    """Read a list file (format in the module docstring; paths with spaces quoted or tab-separated).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line does not hold exactly two paths (named with its line number), or no pair at all.
    """
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f'list file {list_file!r} does not exist; write it with tools/make_pair_list.py '
                                '(or fix the path)')
    pairs = []
    with open(list_file, encoding='utf-8') as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip() or line.lstrip().startswith('#'):
                continue
            try:
                fields = split_list_line(line)
            except ValueError as err:
                raise ValueError(f'{list_file}, line {number}: {err}') from None
            if len(fields) != 2:
                raise ValueError(f'{list_file}, line {number}: expected "<lq path> <gt path>", got {line.strip()!r} '
                                 f'({len(fields)} fields; write a path holding spaces in double quotes, or separate '
                                 'the two paths by a tab)')
            pairs.append(PairLine(number, normalise_rel_path(fields[0]), normalise_rel_path(fields[1])))
    if not pairs:
        raise ValueError(f'list file {list_file!r} holds no pairs')
    return pairs


def format_list_path(path: str) -> str:
    """A path as a list file writes it: in double quotes when it holds whitespace.

    Raises:
        ValueError: The path is empty or holds a double quote, tab or newline (no list line can hold those).
    """
    if not path or any(ch in path for ch in _PATH_FORBIDDEN):
        raise ValueError(f'cannot list {path!r}: list paths may not be empty or hold a double quote, tab or newline; '
                         'rename the file or folder')
    return f'"{path}"' if any(ch.isspace() for ch in path) else path


def write_pair_list(list_file: str, pairs: Sequence[tuple[str, str]], header: str = '') -> None:
    """Write ``pairs`` as a list file, after a ``#`` comment ``header`` (one or more lines).

    Paths holding spaces are written in double quotes (DDN's ``"rainy image/1_1.jpg"``).

    Raises:
        ValueError: A path is empty or holds a double quote, tab or newline.
    """
    lines = [f'{format_list_path(lq)} {format_list_path(gt)}\n' for lq, gt in pairs]
    os.makedirs(os.path.dirname(os.path.abspath(list_file)), exist_ok=True)
    with open(list_file, 'w', encoding='utf-8') as handle:
        handle.writelines(f'# {line}\n' for line in header.splitlines())
        handle.writelines(lines)
