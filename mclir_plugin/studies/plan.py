"""The plan of a study: its variants (option file + overrides) and one run per variant and seed.

Variants. ``baseline`` is the ``-opt`` file; ``spn`` the ``--spn`` file, if given; each ``--variant LABEL [FILE.yml]
KEY=VALUE ...`` is ``FILE.yml`` (default: the ``--spn`` file, else the baseline) with its overrides. ``--override``
applies to every run (before the variant's own overrides). Overrides are applied by
:func:`mclir_plugin.utils.overrides.apply_override`, values read by the one rule of every tool
(:func:`mclir_plugin.utils.options.parse_override_value`: as YAML in an option file, and ``1e-3`` is a number).

Runs. Run ``<study>_<variant>_s<seed>`` gets its own option file ``<workdir>/options/<name>.yml``: the variant's
options with ``name``, ``manual_seed`` and ``train:total_iter`` set, relative data and weight paths made absolute
(against the data root). Files rather than ``--force_yml`` because BasicSR seeds its random generators with the
file's ``manual_seed`` *before* applying ``--force_yml``: overriding the seed there changes the data loader's seed
but not the network's initialisation. A started run whose option file would now differ is an error: the study
would mix settings.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from mclir_plugin.studies.errors import StudyError
from mclir_plugin.utils.overrides import OverrideError, apply_override

#: Option keys holding file or folder paths, made absolute in the run files (``vgg_weights`` unless ``imagenet``).
PATH_KEY = re.compile(r'^(dataroot\w*|meta_info_file|list_file|pretrain_network\w*|vgg_weights)$')
_LABEL = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+-]*$')


@dataclass
class Variant:
    """One arm of the study: an option file plus overrides (``opt``: the options after all overrides)."""

    label: str
    option_file: str
    overrides: list[str]
    opt: dict | None = field(default=None, repr=False)

    def describe(self) -> str:
        """``<option file> + <overrides>``, for the header of its runs' option files."""
        return self.option_file + (f' + {" ".join(self.overrides)}' if self.overrides else '')


@dataclass
class Run:
    """One training run: a variant with a seed; ``state`` is the plan, ``status`` the outcome."""

    name: str
    variant: str
    seed: int
    option_file: str                       # relative to the study folder
    state: str = 'fresh'                   # done | resume | fresh | retry
    status: str = 'pending'                # pending | ok | failed | interrupted | incomplete
    detail: str = ''
    attempts: list[dict] = field(default_factory=list)
    opt: dict | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------------------------- option files
def _yaml():
    """BasicSR's ordered YAML loader and dumper (importing basicsr needs the plugin's compat shim first)."""
    import mclir_plugin  # noqa: F401
    from basicsr.utils.options import ordered_yaml
    return ordered_yaml()


def load_options(path: str, what: str) -> dict:
    """Read an option file as BasicSR does; ``what`` names its argument in errors (``-opt``, ``--spn``)."""
    if not os.path.isfile(path):
        raise StudyError(f'Option file {path!r} ({what}) does not exist: check the path (relative to '
                         f'{os.getcwd()}).')
    import yaml
    try:
        with open(path, encoding='utf-8') as file:
            opt = yaml.load(file, Loader=_yaml()[0])
    except yaml.YAMLError as err:
        raise StudyError(f'Option file {path!r} ({what}) is not valid YAML: {err}') from err
    if not isinstance(opt, dict) or 'name' not in opt:
        raise StudyError(f'Option file {path!r} ({what}) is not a BasicSR option file (no top-level name:).')
    return opt


def flatten(opt: Any, prefix: str = '') -> dict[str, Any]:
    """``{'a:b:c': value}`` of a nested option dict (lists are values)."""
    if not isinstance(opt, dict) or not opt:
        return {prefix: opt}
    flat: dict[str, Any] = {}
    for key, value in opt.items():
        flat.update(flatten(value, f'{prefix}:{key}' if prefix else str(key)))
    return flat


def differences(a: Any, b: Any, limit: int = 5) -> list[str]:
    """Up to ``limit`` lines ``key: a -> b`` where two option trees differ."""
    fa, fb = flatten(a), flatten(b)
    keys = [k for k in dict.fromkeys([*fa, *fb]) if fa.get(k, '<absent>') != fb.get(k, '<absent>')]
    return [f'{k or "(value)"}: {fa.get(k, "<absent>")!r} -> {fb.get(k, "<absent>")!r}' for k in keys[:limit]]


def absolutise_paths(opt: Any, base: str) -> None:
    """Make relative data/weight paths absolute against ``base`` (runs start in the study folder), in place."""
    if isinstance(opt, list):
        for item in opt:
            absolutise_paths(item, base)
    if not isinstance(opt, dict):
        return
    for key, value in opt.items():
        if isinstance(value, str) and PATH_KEY.match(str(key)) and value != 'imagenet':
            value = os.path.expanduser(value)
            opt[key] = value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))
        else:
            absolutise_paths(value, base)


def data_settings(opt: dict) -> dict:
    """What must agree between variants for their metrics to be comparable: data, scale and metric settings."""
    return {'datasets': opt.get('datasets'), 'scale': opt.get('scale'),
            'val:metrics': (opt.get('val') or {}).get('metrics')}


def plain(value: Any) -> Any:
    """Ordered dicts as plain dicts, for comparisons that ignore key order."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- variants
def check_label(label: str, seen: set[str], what: str = 'Variant label') -> None:
    """Labels name folders and runs: simple, unique, and without ``debug`` (BasicSR's debug mode by name)."""
    if not _LABEL.match(label):
        raise StudyError(f'{what} {label!r} must be letters, digits and . _ + - (it is part of run names).')
    if 'debug' in label.lower():
        raise StudyError(f"{what} {label!r} contains 'debug': BasicSR switches a run whose name contains "
                         "'debug' to debug mode (val_freq 8, print_freq 1). Choose another name.")
    if label in seen:
        raise StudyError(f'{what} {label!r} is given twice: labels must be unique.')
    seen.add(label)


def build_variants(baseline: str, spn: str | None, variant_args: Sequence[Sequence[str]],
                   overrides: Sequence[str], data_root: str) -> list[Variant]:
    """The variants, each with its options after ``overrides`` (all runs) and its own (see the module docstring).

    Args:
        baseline: The baseline option file (``-opt``).
        spn: Its SPN twin (``--spn``), or None.
        variant_args: Each ``--variant``'s items: ``LABEL [FILE.yml] KEY=VALUE ...``.
        overrides: ``KEY=VALUE`` entries for every run (``--override``).
        data_root: The folder relative data and weight paths start from.

    Returns:
        list[Variant]: ``baseline`` first, then ``spn``, then the ``--variant`` ones.
    """
    variants = [Variant('baseline', baseline, [])]
    if spn:
        variants.append(Variant('spn', spn, []))
    for items in variant_args:
        label, rest = items[0], list(items[1:])
        source = rest.pop(0) if rest and '=' not in rest[0] and rest[0].endswith(('.yml', '.yaml')) else \
            (spn or baseline)
        variants.append(Variant(label, source, rest))
    seen: set[str] = set()
    for variant in variants:
        check_label(variant.label, seen)
        what = {'baseline': '-opt', 'spn': '--spn'}.get(variant.label, f'--variant {variant.label}')
        variant.opt = load_options(variant.option_file, what)
        variant.option_file = os.path.abspath(variant.option_file)
        try:
            for entry in overrides:
                apply_override(variant.opt, entry, '--override')
            for entry in variant.overrides:
                apply_override(variant.opt, entry, f'--variant {variant.label}')
        except OverrideError as err:
            raise StudyError(str(err)) from None
        absolutise_paths(variant.opt, data_root)
    return variants


def check_variants(variants: Sequence[Variant], iters: int | None, allow_data_mismatch: bool) -> int:
    """Check that the variants validate, agree on data and length; return the number of iterations."""
    base = variants[0]
    for variant in variants:
        opt = variant.opt
        if not any(str(k).startswith('val') for k in opt.get('datasets', {})) or not opt.get('val'):
            raise StudyError(f'Variant {variant.label!r} ({variant.option_file}) has no validation (datasets:val '
                             'and val:): the study compares validation metrics. Add a validation set.')
        if (opt.get('path') or {}).get('resume_state'):
            raise StudyError(f'Variant {variant.label!r} ({variant.option_file}) sets path:resume_state: every '
                             'run of a study starts from scratch. Use --override path:resume_state=~.')
        diff = differences(data_settings(base.opt), data_settings(opt))
        if diff and not allow_data_mismatch:
            raise StudyError(
                f'Variant {variant.label!r} ({variant.option_file} + {variant.overrides}) does not train or validate '
                f'on the same data as the baseline ({base.option_file}):\n  ' + '\n  '.join(diff) +
                '\nMake the datasets and val:metrics equal (shared changes go in --override), or pass '
                '--allow-data-mismatch.')
    if iters is not None:
        return iters
    lengths = {v.label: (v.opt.get('train') or {}).get('total_iter') for v in variants}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        raise StudyError(f'The variants train for different numbers of iterations ({lengths}): pass --iters N.')
    return int(next(iter(lengths.values())))


# ---------------------------------------------------------------------------------------------- runs
def plan_runs(study: str, variants: Sequence[Variant], seeds: Sequence[int], iters: int) -> list[Run]:
    """One run per variant and seed, with its complete option dict."""
    runs = []
    for variant in variants:
        for seed in seeds:
            name = f'{study}_{variant.label}_s{seed}'
            opt = copy.deepcopy(variant.opt)
            opt['name'], opt['manual_seed'] = name, int(seed)
            opt.setdefault('train', {})['total_iter'] = int(iters)
            runs.append(Run(name, variant.label, int(seed), os.path.join('options', f'{name}.yml'), opt=opt))
    return runs


def write_run_options(workdir: str, run: Run, source: str, overrides: Sequence[str]) -> None:
    """Write the run's option file, refusing to change the options of a run that has started.

    Args:
        workdir: The study folder.
        run: The run, with its options and its ``state`` (``done``/``resume``: started).
        source: The variant's option file (and its overrides), for the header comment.
        overrides: The overrides of every run, for the header comment.
    """
    import yaml
    path = os.path.join(workdir, run.option_file)
    if os.path.isfile(path) and run.state in ('done', 'resume'):
        with open(path, encoding='utf-8') as file:
            old = yaml.load(file, Loader=_yaml()[0])
        if plain(old) != plain(run.opt):
            raise StudyError(
                f'Run {run.name} has started with other options ({path}):\n  ' +
                '\n  '.join(differences(plain(old), plain(run.opt))) +
                f'\nUse a new --workdir for new settings, or delete {os.path.join(workdir, "experiments", run.name)} '
                'to retrain this run.')
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header = (f'# Written by tools/ablate.py: run {run.name} = {source}\n# every run: '
              f'{" ".join(overrides) or "no overrides"}; then name, manual_seed, train:total_iter of this run.\n')
    with open(path, 'w', encoding='utf-8') as file:
        file.write(header + yaml.dump(run.opt, Dumper=_yaml()[1], default_flow_style=None, sort_keys=False))
