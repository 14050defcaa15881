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
is continued by running the same command again: keys already stored are skipped.
"""
from __future__ import annotations

import argparse
import os
import sys

from mclir_plugin.data.lmdb_writer import path_to_key, write_lmdb
from mclir_plugin.data.pair_layouts import pair_folders, read_pair_list


def _items(paths: list[str], root: str) -> list[tuple[str, str]]:
    return [(path_to_key(path), os.path.join(root, path)) for path in paths]


def plan(args: argparse.Namespace) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(lmdb path, [(key, file), ...]), ...]`` for the chosen mode."""
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
    args = parser.parse_args(argv)
    _check_mode(parser, args)

    try:
        for lmdb_path, items in plan(args):
            result = write_lmdb(items, lmdb_path, args.compress_level, args.batch, args.map_size,
                                progress=not args.no_progress)
            print(f'{lmdb_path}: {result.total} images, {result.written} written, {result.skipped} already there')
    except (OSError, ValueError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
