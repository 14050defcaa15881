#!/usr/bin/env python
"""Build BasicSR-format lmdb files for ``PairedListDataset`` (or BasicSR's ``PairedImageDataset``); resumable.

    # a list whose paths are relative to one root -> one lmdb holding both sides (dataroot: ITS.lmdb)
    python tools/create_lmdb.py --list datasets/ITS/pairs.txt --dataroot datasets/ITS --out datasets/ITS.lmdb
    # a list with separate roots -> two lmdbs (dataroot_lq: lq.lmdb, dataroot_gt: gt.lmdb)
    python tools/create_lmdb.py --list pairs.txt --dataroot-lq datasets/X/lq --dataroot-gt datasets/X/gt \\
        --out-lq datasets/X_lq.lmdb --out-gt datasets/X_gt.lmdb
    # plain paired folders (equal names) -> two lmdbs with equal keys; no list needed by either dataset
    python tools/create_lmdb.py --lq-folder datasets/X/lq --gt-folder datasets/X/gt \\
        --out-lq datasets/X_lq.lmdb --out-gt datasets/X_gt.lmdb

Keys are the relative paths without extension, dots percent-encoded (``hazy/1_1_0.90179.png`` ->
``hazy/1_1_0%2E90179``; see ``mclir_plugin/data/lmdb_writer.py``), values PNG-encoded images and
``meta_info.txt`` lines ``<key>.png (h,w,c) <level>``, as BasicSR's ``make_lmdb_from_imgs``. An interrupted run
is continued by running the same command again: keys already stored are skipped. Source images that cannot be
read (0 bytes, corrupt) are named with their keys after the others are written (exit status 1).

Stored values that went bad are found and rewritten with the same command plus a flag:

    python tools/create_lmdb.py --verify --out datasets/ITS.lmdb                     # report each bad key, why
    python tools/create_lmdb.py --list ... --dataroot ... --out datasets/ITS.lmdb --repair   # rewrite them

``--verify`` decodes every value and compares it with ``meta_info.txt`` (exit status 1 when a key is bad; with the
source arguments it also names each bad key's source file and counts keys not stored yet). ``--repair`` verifies,
then rewrites each bad key from its source image, naming it, and adds missing keys as a normal run does.
"""
from __future__ import annotations

import argparse
import os
import sys

from mclir_plugin.data.lmdb_writer import (BadSourceImagesError, BadValue, BadValuesError, path_to_key, read_keys,
                                           verify_lmdb, write_lmdb)
from mclir_plugin.data.pair_layouts import pair_folders, read_pair_list


def _items(paths: list[str], root: str) -> list[tuple[str, str]]:
    return [(path_to_key(path), os.path.join(root, path)) for path in paths]


def plan(args: argparse.Namespace) -> list[tuple[str, 'list[tuple[str, str]] | None']]:
    """``[(lmdb path, [(key, file), ...]), ...]`` for the chosen mode (files None: ``--verify`` without sources)."""
    if not (args.list or args.lq_folder):  # --verify alone
        return [(path, None) for path in (args.out, args.out_lq, args.out_gt) if path]
    if args.list:
        lines = read_pair_list(args.list)
        if args.dataroot:
            paths = [p for line in lines for p in (line.lq, line.gt)]  # GT repeats are stored once
            return [(args.out, _items(paths, args.dataroot))]
        return [(args.out_lq, _items([line.lq for line in lines], args.dataroot_lq)),
                (args.out_gt, _items([line.gt for line in lines], args.dataroot_gt))]
    scan = pair_folders(args.lq_folder, args.gt_folder, 'folders')
    if scan.unmatched:
        print(f'skipping {len(scan.unmatched)} unmatched files, e.g. {scan.unmatched[:3]}')
    return [(args.out_lq, _items([lq for lq, _ in scan.pairs], args.lq_folder)),
            (args.out_gt, _items([gt for _, gt in scan.pairs], args.gt_folder))]


def _check_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.verify and args.repair:
        parser.error('give --verify (report only) or --repair (report and rewrite), not both')
    if args.verify and not (args.list or args.lq_folder or args.gt_folder):
        if not (args.out or args.out_lq or args.out_gt):
            parser.error('--verify needs the lmdb to check: --out (or --out-lq/--out-gt)')
        return
    if args.list and args.dataroot:
        needed = ['out']
    elif args.list:
        needed = ['dataroot_lq', 'dataroot_gt', 'out_lq', 'out_gt']
    elif args.lq_folder or args.gt_folder:
        needed = ['lq_folder', 'gt_folder', 'out_lq', 'out_gt']
    else:
        parser.error('give --list (with --dataroot, or --dataroot-lq/--dataroot-gt) or --lq-folder/--gt-folder')
    missing = [f"--{name.replace('_', '-')}" for name in needed if not getattr(args, name)]
    if missing:
        parser.error(f'this mode also needs {", ".join(missing)}')


def verify(lmdb_path: str, items: 'list[tuple[str, str]] | None', progress: bool) -> list[BadValue]:
    """Print each bad key of ``lmdb_path`` (with its source file when ``items`` are known); return them."""
    if not os.path.isfile(os.path.join(lmdb_path, 'data.mdb')):
        print(f'{lmdb_path}: no lmdb there yet' + ('' if items is None else '; run without --verify to build it'))
        return [BadValue('', 'no lmdb')] if items is None else []
    sources = dict(items or [])
    bad = verify_lmdb(lmdb_path, progress)
    for value in bad:
        source = f' (source {sources[value.key]!r})' if value.key in sources else ''
        print(f'{lmdb_path}: bad key {value.key!r}{source}: {value.reason}')
    missing = len(set(sources).difference(read_keys(lmdb_path))) if items is not None else 0
    print(f'{lmdb_path}: {len(bad)} bad values' + (f', {missing} keys not stored yet' if missing else ''))
    return bad


def repair(lmdb_path: str, items: list[tuple[str, str]], args: argparse.Namespace) -> int:
    """Verify, then rewrite each bad key from its source (named); return the exit status."""
    bad = verify(lmdb_path, items, not args.no_progress)
    sources = dict(items)
    orphans = [value.key for value in bad if value.key not in sources]
    for key in orphans:
        print(f'{lmdb_path}: cannot repair key {key!r}: no source image for it in the given list/folders; give the '
              'arguments this lmdb was built from, or rebuild it', file=sys.stderr)
    try:
        result = write_lmdb(items, lmdb_path, args.compress_level, args.batch, args.map_size,
                            progress=not args.no_progress, rewrite=[value.key for value in bad if value.key in sources])
    except BadValuesError as err:
        if not set(err.keys) <= set(orphans):
            raise
        result = err.report  # only the values named above are left; the meta file lists the others
    for key in result.rewritten:
        print(f'{lmdb_path}: repaired key {key!r} from {sources[key]!r}')
    print(f'{lmdb_path}: {result.total} images, {result.written} written ({len(result.rewritten)} repaired), '
          f'{result.skipped} already there')
    return 1 if orphans else 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--list', help='pair list (tools/make_pair_list.py, or SPA-Data\'s own)')
    parser.add_argument('--dataroot', help='root of both list columns; writes one lmdb (--out)')
    parser.add_argument('--dataroot-lq', help='root of the LQ column; with --dataroot-gt writes two lmdbs')
    parser.add_argument('--dataroot-gt', help='root of the GT column')
    parser.add_argument('--lq-folder', help='plain paired folders: the LQ folder (pairs equal names)')
    parser.add_argument('--gt-folder', help='plain paired folders: the GT folder')
    parser.add_argument('--out', help='the lmdb (ending in .lmdb) for --dataroot')
    parser.add_argument('--out-lq', help='the LQ lmdb (ending in .lmdb)')
    parser.add_argument('--out-gt', help='the GT lmdb (ending in .lmdb)')
    parser.add_argument('--compress-level', type=int, default=1, help='PNG compression 0-9 (default 1, BasicSR\'s)')
    parser.add_argument('--batch', type=int, default=1000, help='images per commit (default 1000)')
    parser.add_argument('--map-size', type=int, help='lmdb map size in bytes (default: estimated)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--verify', action='store_true',
                        help='decode every stored value, report each bad key and why; write nothing')
    parser.add_argument('--repair', action='store_true',
                        help='verify, then rewrite each bad key from its source image (and add missing keys)')
    args = parser.parse_args(argv)
    _check_mode(parser, args)

    status = 0
    try:
        for lmdb_path, items in plan(args):
            if args.verify:
                status |= 1 if verify(lmdb_path, items, not args.no_progress) else 0
            elif args.repair:
                status |= repair(lmdb_path, items, args)
            else:
                result = write_lmdb(items, lmdb_path, args.compress_level, args.batch, args.map_size,
                                    progress=not args.no_progress)
                print(f'{lmdb_path}: {result.total} images, {result.written} written, {result.skipped} already there')
    except (OSError, ValueError, RuntimeError) as err:  # ImageReadError is a ValueError
        print(f'error: {err}', file=sys.stderr)
        if isinstance(err, BadSourceImagesError) and args.list:
            print(list_lines(args, [path for _, path, _ in err.bad]), file=sys.stderr)
        return 1
    return status


def list_lines(args: argparse.Namespace, paths: list[str]) -> str:
    """Where the unreadable source ``paths`` are listed: ``<list>, line N: <path>`` (first line of each)."""
    lines: dict[str, int] = {}
    for line in read_pair_list(args.list):
        for side in ('lq', 'gt'):
            root = args.dataroot or getattr(args, f'dataroot_{side}')
            lines.setdefault(os.path.join(root, getattr(line, side)), line.line)
    return '\n'.join(f'{args.list}, line {lines.get(path, "?")}: {path} (fix the file, or remove the line)'
                     for path in paths)


if __name__ == '__main__':
    sys.exit(main())
