"""The history of a training run (validation metrics and training losses over iterations), read from its files.

Sources. ``log`` reads BasicSR's text logs ``<run>/train_<name>_<YYYYmmdd_HHMMSS>.log``: training lines
``[epoch: e, iter: i, lr:(...)] [eta: ...] l_pix: v l_neg: v ...`` and validation blocks ``Validation <dataset>``
followed by ``# <metric>: <value>  Best: <value> @ <iter> iter`` lines. A validation block carries no iteration of
its own: where its value is the best so far, the ``@ <iter>`` is that iteration; otherwise it is the first multiple
of ``val_freq`` (read from the option dump at the top of the log) after the previous validation and not before the
last logged training iteration. The validation BasicSR runs after training counts at the last trained iteration
(``total_iter``), not at the larger step BasicSR gives it (``total_iter + 1`` or more), so that "last" is the final
network. A run resumed several times has several log files: they are merged in time order, each file replacing
what earlier files logged after the iteration it resumed from.

``tb`` reads the TensorBoard events ``tb_logger/<name>`` (tags ``losses/<key>`` and ``metrics/<dataset>/<metric>``)
at the steps written there: the validation after training is at BasicSR's step (``total_iter + 1`` or more), and of
a resumed run TensorBoard drops a tag's steps from the first step the resumed run wrote again, but keeps those the
first run logged between the resume point and that step (the events do not record where a run resumed; the text
logs do). ``auto`` (the default) therefore prefers the text logs, which every run has, and falls back to the events
when the folder holds no log (or is itself a TensorBoard folder).
"""
from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from mclir_plugin.studies.errors import StudyError

Series = dict[int, float]

_RECORD = re.compile(r'^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+: (.*)$')
_TRAIN = re.compile(r'\[epoch:\s*-?\d+, iter:\s*([\d,]+), lr:\(([^)]*)\)\]')
_VALIDATION = re.compile(r'^Validation (.+?)\s*$')
_METRIC = re.compile(r'^\s*# (\S+): (\S+)(?:\s+Best: (\S+) @ (-?\d+) iter)?')
_START = re.compile(r'(?:Start|Resuming) training from epoch: \d+, iter: (\d+)')
_TOTAL = re.compile(r'Total epochs: \d+; iters: (\d+)\.')
_OPTION = re.compile(r'^\s+(val_freq|print_freq): (\S+)\s*$')
_LOG_TIME = re.compile(r'_(\d{8}_\d{6})\.log$')


@dataclass
class LogPart:
    """What one text log holds: ``start`` is the iteration it started or resumed from (None: no training)."""

    path: str
    start: int | None = None
    total: int | None = None
    train: dict[str, Series] = field(default_factory=dict)
    val: dict[str, dict[str, Series]] = field(default_factory=dict)


@dataclass
class RunHistory:
    """The merged history of one run.

    Attributes:
        label: Name of the run in tables and plots.
        path: The run folder (or TensorBoard folder) read.
        source: ``'log'`` or ``'tb'``.
        files: The files read, in merge order.
        train: ``{key: {iter: value}}`` of the training lines (``l_pix``, ``l_neg``, ``lr``, ...).
        val: ``{dataset: {metric: {iter: value}}}`` of the validations.
    """

    label: str
    path: str
    source: str
    files: list[str]
    train: dict[str, Series]
    val: dict[str, dict[str, Series]]


def ordered_union(groups: Iterable[Iterable[str]]) -> list[str]:
    """The keys of all ``groups``, each once, in order of first appearance (datasets or metrics across runs)."""
    seen: dict[str, None] = {}
    for group in groups:
        seen.update(dict.fromkeys(group))
    return list(seen)


# ---------------------------------------------------------------------------------------------- text logs
def find_log_files(run_dir: str) -> list[str]:
    """The ``train_*.log`` files of ``run_dir`` in the order they were started (time in the name, else mtime)."""
    paths = glob.glob(os.path.join(glob.escape(run_dir), 'train_*.log'))

    def started(path: str) -> tuple[str, float]:
        match = _LOG_TIME.search(path)
        return (match.group(1) if match else '', os.path.getmtime(path))
    return sorted(paths, key=started)


class _LogReader:
    """The line-by-line state of :func:`parse_log_file`."""

    def __init__(self, path: str) -> None:
        self.part = LogPart(path)
        self.options: dict[str, int] = {}      # val_freq and print_freq, from the option dump
        self.last = 0                          # the last training iteration logged
        self.ended = False                     # after 'End of training.': the final validation
        self.previous: dict[str, int] = {}     # the iteration of each dataset's last validation
        self.block: tuple[str, list[tuple[str, ...]]] | None = None  # an open validation block

    def feed(self, line: str) -> None:
        total = _TOTAL.search(line)
        if total:
            self.part.total = int(total.group(1))
        record = _RECORD.match(line)
        if record is None:  # a continuation line: the option dump, or the metrics of a validation block
            option, metric = _OPTION.match(line), _METRIC.match(line)
            if option and self.part.start is None and re.fullmatch(r'[0-9.e+]+', option.group(2)):
                self.options[option.group(1)] = int(float(option.group(2)))  # '5000.0' from !!float 5e3
            if metric and self.block:
                self.block[1].append(metric.groups())
            return
        self.close_block()
        message = record.group(1)
        start, train, validation = _START.search(message), _TRAIN.search(message), _VALIDATION.match(message)
        if start:
            self.part.start = self.last = int(start.group(1))
        elif train:
            self.last = int(train.group(1).replace(',', ''))
            _record_train_line(self.part, self.last, train.group(2), message[message.rindex(']') + 1:])
        elif validation and self.part.start is not None:
            self.block = (validation.group(1), [])
        elif message.startswith('End of training.'):
            self.ended = True

    def close_block(self) -> None:
        """Store the metrics of the open validation block at its iteration."""
        if self.block is None:
            return
        (dataset, lines), self.block = self.block, None
        iteration = self.previous[dataset] = self._block_iteration(dataset, lines)
        for metric, value, _, _ in lines:
            self.part.val.setdefault(dataset, {}).setdefault(metric, {})[iteration] = float(value)

    def _block_iteration(self, dataset: str, lines: list[tuple[str, ...]]) -> int:
        """The iteration of a validation block; see the module docstring.

        BasicSR prints ``Best: <value> @ <iter>``: where the best is this very value, ``<iter>`` is the iteration
        BasicSR validated at, exact if not below the last logged one. Otherwise an in-loop validation is at the next
        multiple of ``val_freq``, and the final one at ``total_iter`` if the logged iterations reached it (a loader
        that runs dry first, on tiny data, stops earlier: then the last logged iteration).
        """
        previous = self.previous.get(dataset, self.part.start or 0)
        lower = max(self.last, previous if self.ended else previous + 1)
        stated = [int(at) for _, value, best, at in lines if best == value and at is not None and int(at) >= lower]
        total, val_freq, print_freq = self.part.total, self.options.get('val_freq'), self.options.get('print_freq')
        if self.ended:
            if stated:
                return min(stated[0], total) if total else stated[0]
            reached = total is not None and (not print_freq or self.last >= total - total % print_freq)
            return total if reached else lower
        if stated:
            return stated[0]
        return math.ceil(lower / val_freq) * val_freq if val_freq else lower


def parse_log_file(path: str) -> LogPart:
    """Parse one BasicSR training log (see the module docstring for the lines read)."""
    reader = _LogReader(path)
    with open(path, encoding='utf-8', errors='replace') as file:
        for line in file:
            reader.feed(line)
    reader.close_block()
    return reader.part


def _record_train_line(part: LogPart, iteration: int, lrs: str, values: str) -> None:
    """Store ``lr`` (the first group's) and every ``key: value`` pair of a training line."""
    first_lr = lrs.split(',')[0].strip()
    if first_lr:
        part.train.setdefault('lr', {})[iteration] = float(first_lr)
    for key, value in re.findall(r'(\w+): (\S+)', values):
        try:
            part.train.setdefault(key, {})[iteration] = float(value)
        except ValueError:
            continue


def _truncate(series: Series, after: int) -> None:
    for iteration in [i for i in series if i > after]:
        del series[iteration]


def merge_log_parts(parts: Sequence[LogPart]) -> tuple[dict[str, Series], dict[str, dict[str, Series]]]:
    """Merge the parts of a resumed run, oldest first: each part replaces what came after its start."""
    train: dict[str, Series] = {}
    val: dict[str, dict[str, Series]] = {}
    for part in parts:
        if part.start is None:
            continue  # a run that stopped before training (bad options, missing data): nothing logged
        for series in [*train.values(), *(s for metrics in val.values() for s in metrics.values())]:
            _truncate(series, part.start)
        for key, series in part.train.items():
            train.setdefault(key, {}).update(series)
        for dataset, metrics in part.val.items():
            for metric, series in metrics.items():
                val.setdefault(dataset, {}).setdefault(metric, {}).update(series)
    return _sorted(train), {d: _sorted(m) for d, m in val.items()}


def _sorted(curves: dict[str, Series]) -> dict[str, Series]:
    return {key: dict(sorted(series.items())) for key, series in curves.items() if series}


# ---------------------------------------------------------------------------------------------- tensorboard
def has_tb_events(folder: str) -> bool:
    """Whether ``folder`` holds TensorBoard event files."""
    return bool(glob.glob(os.path.join(glob.escape(folder), 'events.out.tfevents.*')))


def read_tb_events(tb_dir: str) -> tuple[dict[str, Series], dict[str, dict[str, Series]]]:
    """``(train, val)`` curves from BasicSR's TensorBoard tags ``losses/<key>``, ``metrics/<dataset>/<metric>``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tb_dir, size_guidance={'scalars': 0})
    events.Reload()
    train: dict[str, Series] = {}
    val: dict[str, dict[str, Series]] = {}
    for tag in events.Tags()['scalars']:
        series = {int(e.step): float(e.value) for e in events.Scalars(tag)}
        if tag.startswith('metrics/') and tag.count('/') >= 2:
            dataset, metric = tag[len('metrics/'):].rsplit('/', 1)
            val.setdefault(dataset, {})[metric] = series
        else:
            train[tag[len('losses/'):] if tag.startswith('losses/') else tag] = series
    return _sorted(train), {d: _sorted(m) for d, m in val.items()}


# ---------------------------------------------------------------------------------------------- runs
def load_run(path: str, label: str | None = None, source: str = 'auto', tb_root: str | None = None) -> RunHistory:
    """Read one run folder (``experiments/<name>``) or TensorBoard folder (``tb_logger/<name>``).

    Args:
        path: The folder.
        label: Its name in the outputs. Defaults to the folder's name.
        source: ``'log'``, ``'tb'`` or ``'auto'`` (text logs, else TensorBoard events). Defaults to ``'auto'``.
        tb_root: The folder holding ``<name>/events.out.tfevents.*``. Defaults to ``<path>/../../tb_logger``.

    Returns:
        RunHistory: The merged curves.

    Raises:
        StudyError: when the folder does not exist or holds neither logs nor events.
    """
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        raise StudyError(f'Run folder {path!r} does not exist: pass experiments/<name> folders made by '
                         'tools/train.py.')
    name = os.path.basename(path)
    tb_dir = path if has_tb_events(path) else \
        os.path.join(tb_root or os.path.join(os.path.dirname(os.path.dirname(path)), 'tb_logger'), name)
    logs = find_log_files(path)
    if source == 'log' or (source == 'auto' and logs):
        if not logs:
            raise StudyError(f'Run folder {path!r} holds no BasicSR training log (train_*.log): pass a folder '
                             'experiments/<name> made by tools/train.py, or use --source tb for TensorBoard events.')
        train, val = merge_log_parts([parse_log_file(log) for log in logs])
        return RunHistory(label or name, path, 'log', logs, train, val)
    if not has_tb_events(tb_dir):
        raise StudyError(f'Run folder {path!r} holds no BasicSR training log (train_*.log) and there are no '
                         f'TensorBoard events in {tb_dir!r}: pass a folder experiments/<name> made by '
                         'tools/train.py (or give --tb-root, the folder that holds tb_logger/<name>).')
    train, val = read_tb_events(tb_dir)
    files = sorted(glob.glob(os.path.join(glob.escape(tb_dir), 'events.out.tfevents.*')))
    return RunHistory(label or name, path, 'tb', files, train, val)


def describe_source(run: RunHistory) -> str:
    """E.g. ``text log, 2 files, iterations 1-8``."""
    kind = 'text log' if run.source == 'log' else 'TensorBoard events'
    iters = [i for series in run.train.values() for i in series]
    span = f', iterations {min(iters)}-{max(iters)}' if iters else ', no training lines'
    return f'{kind}, {len(run.files)} file{"s" if len(run.files) != 1 else ""}{span}'
