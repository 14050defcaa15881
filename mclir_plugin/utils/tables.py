"""Tables of results, printed, in Markdown and as CSV: the one writer of ``compare``, ``test`` and ``ablate``."""
from __future__ import annotations

import csv
from typing import Any, Mapping, Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """A plain text table (columns padded to their widest cell) or a Markdown table.

    Args:
        headers: The column names.
        rows: The cells, one sequence per row (converted with ``str``).
        markdown: Write a Markdown table instead of a padded one. Defaults to False.

    Returns:
        str: The table, lines joined by newlines (no trailing newline).
    """
    if markdown:
        lines = [headers, ['---'] * len(headers), *rows]
        return '\n'.join('| ' + ' | '.join(str(c) for c in line) + ' |' for line in lines)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    return '\n'.join('  '.join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in [headers, ['-' * w for w in widths], *rows])


def number(value: float | None, signed: bool = False) -> str:
    """A value in a table: 4 decimals as BasicSR logs metrics (``+``/``-`` with ``signed``), '' for None."""
    if value is None:
        return ''
    return f'{value:+.4f}' if signed else f'{value:.4f}'


def write_csv(path: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` under ``columns`` at full precision.

    Floats are written by ``csv`` (their ``repr``, exact when read back); None and missing keys give an empty cell;
    keys that are not columns are left out.

    Args:
        path: The file to write (overwritten).
        columns: The header, in order.
        rows: One mapping per row.
    """
    with open(path, 'w', newline='', encoding='utf-8') as file:
        writer = csv.DictWriter(file, fieldnames=list(columns), extrasaction='ignore')
        writer.writeheader()
        writer.writerows({k: ('' if r.get(k) is None else r[k]) for k in columns} for r in rows)
