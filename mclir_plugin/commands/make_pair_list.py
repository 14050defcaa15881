#!/usr/bin/env python
"""Write the pair list of a dehazing/deraining dataset folder, for ``PairedListDataset``.

    python tools/make_pair_list.py --layout reside_its --root datasets/RESIDE/ITS --out datasets/RESIDE/ITS/pairs.txt
    python tools/make_pair_list.py --layout sots --root datasets/RESIDE/SOTS/indoor --out datasets/sots_in.txt
    python tools/make_pair_list.py --layout rain_pairs --root datasets/Rain200H/train --out datasets/rain200h_train.txt
    python tools/make_pair_list.py --layout spa --root datasets/SPA/Training \\
        --list datasets/SPA/Training/real_world.txt --out datasets/spa_train.txt
    python tools/make_pair_list.py --layout folders --root datasets/X --lq-dir input --gt-dir target --out x.txt
    python tools/make_pair_list.py --layout dehazeformer --root data/RESIDE-IN/train --out data/reside_in_train.txt
    python tools/make_pair_list.py --layout auto --root datasets/DDN/training --out datasets/ddn_train.txt

The list paths are relative to ``--root``: use it as ``dataroot`` in the option file. The layouts and their
pairing rules are in ``mclir_plugin/data/pair_layouts.py``; the files no rule pairs are reported. ``--layout auto``
takes the layout that pairs the most files (and names the others that pair any); when the chosen layout pairs
nothing, the error names the layouts that do. Paths holding spaces are written in double quotes. With ``--list``
(SPA-Data's official ``real_world.txt`` / ``real_test_1000.txt``, relative to ``--root``) the pairs are taken
from that list and checked on disk instead of scanned.
"""
from __future__ import annotations

import argparse
import os
import sys

from mclir_plugin.data.pair_layouts import (LAYOUTS, PairScan, read_pair_list, scan_layout, suggest_layouts,
                                            write_pair_list)

SHOWN = 10  # unmatched files printed per reason
MISSING = 'listed but missing'


def pairs_from_list(list_file: str, root: str) -> PairScan:
    """The pairs of an existing list file whose two files exist under ``root``; the others as unmatched."""
    scan = PairScan()
    for pair in read_pair_list(list_file):
        missing = [p for p in (pair.lq, pair.gt) if not os.path.isfile(os.path.join(root, p))]
        if missing:
            scan.unmatched += [(f'{p} (line {pair.line})', MISSING) for p in missing]
        else:
            scan.pairs.append((pair.lq, pair.gt))
    return scan


def report(scan: PairScan, out=None) -> None:
    """Print the unmatched files, grouped by reason, at most :data:`SHOWN` each, to ``out`` (default stdout)."""
    out = out or sys.stdout
    reasons = sorted({why for _, why in scan.unmatched})
    print(f'unmatched: {len(scan.unmatched)} files', file=out)
    for reason in reasons:
        paths = scan.unmatched_by_reason(reason)
        print(f'  {reason} ({len(paths)}):', file=out)
        for path in paths[:SHOWN]:
            print(f'    {path}', file=out)
        if len(paths) > SHOWN:
            print(f'    ... and {len(paths) - SHOWN} more', file=out)


def advice(root: str, tried: str, more_than: int = 0) -> str:
    """Which other layouts pair more than ``more_than`` files under ``root`` ('' when none does)."""
    if not os.path.isdir(root):
        return ''
    fits = [(name, count) for name, count in suggest_layouts(root, exclude=[tried]) if count > more_than]
    return '; '.join(f'--layout {name} pairs {count} files there ({LAYOUTS[name].about})' for name, count in fits)


def pick_layout(root: str) -> str:
    """``--layout auto``: the layout pairing the most files under ``root`` (printed with the runners-up)."""
    fits = suggest_layouts(root)
    if not fits:
        raise ValueError(f'no known layout pairs any files under {root!r} (layouts: {", ".join(LAYOUTS)}); use '
                         '--layout folders with --lq-dir/--gt-dir, or write the list yourself')
    others = ', '.join(f'{name} ({count})' for name, count in fits[1:])
    print(f'auto: --layout {fits[0][0]} pairs {fits[0][1]} files' + (f'; others: {others}' if others else ''))
    return fits[0][0]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 no pairs or ``--strict`` with unmatched files)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--layout', required=True, choices=['auto', *sorted(LAYOUTS)],
                        help='how the dataset names its pairs (auto: the layout pairing the most files)')
    parser.add_argument('--root', required=True, help='the dataset folder; list paths are relative to it')
    parser.add_argument('--out', required=True, help='the list file to write')
    parser.add_argument('--lq-dir', help="LQ folder under --root (overrides the layout's usual names)")
    parser.add_argument('--gt-dir', help="GT folder under --root (overrides the layout's usual names)")
    parser.add_argument('--list', dest='from_list', metavar='LIST',
                        help="take the pairs from this list (e.g. SPA-Data's official real_world.txt), relative to "
                        '--root, checking that the files exist')
    parser.add_argument('--strict', action='store_true', help='exit 1 when any file is unmatched')
    args = parser.parse_args(argv)

    try:
        if args.layout == 'auto':
            args.layout = pick_layout(args.root)
        if args.from_list:
            scan = pairs_from_list(args.from_list, args.root)
        else:
            scan = scan_layout(args.layout, args.root, args.lq_dir, args.gt_dir)
    except (OSError, ValueError) as err:
        hint = '' if args.from_list or args.lq_dir or args.gt_dir else advice(args.root, args.layout)
        print(f'error: {err}' + (f'\nThis folder fits another layout: {hint}' if hint else ''), file=sys.stderr)
        return 1
    if not scan.pairs:
        report(scan, sys.stderr)
        hint = '' if args.from_list else advice(args.root, args.layout)
        print(f'error: no {args.layout} pairs found under {args.root!r}; nothing written'
              + (f'. This folder fits another layout: {hint}' if hint else ''), file=sys.stderr)
        return 1
    header = (f'lq gt: {len(scan.pairs)} pairs, paths relative to the dataset root (dataroot)\n'
              f'made by tools/make_pair_list.py --layout {args.layout}')
    write_pair_list(args.out, scan.pairs, header)
    n_gt = len({gt for _, gt in scan.pairs})
    print(f'{args.layout}: {len(scan.pairs)} pairs ({n_gt} distinct GT) written to {args.out}')
    print(f'  option file: dataroot: {args.root}  list_file: {args.out}')
    report(scan)
    if len(scan.unmatched) > len(scan.pairs) and not args.from_list:
        hint = advice(args.root, args.layout, more_than=len(scan.pairs))
        if hint:
            print(f'note: most files are unmatched; {hint}')
    return 1 if args.strict and scan.unmatched else 0


if __name__ == '__main__':
    sys.exit(main())
