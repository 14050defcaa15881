"""``study.json``: the plan of a study, the exact command of every attempt, the versions and the machine.

The versions are those of the installed packages that decide the numbers (``importlib.metadata``) and of the
imported ``mclir_plugin`` (``mclir_plugin.__version__``); nothing is read from a source checkout.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from typing import Any, Sequence

from mclir_plugin.studies.plan import Run
from mclir_plugin.studies.runner import shell_line

STUDY_FILE = 'study.json'
#: Installed distributions whose versions ``study.json`` records.
PACKAGES = ('torch', 'torchvision', 'basicsr', 'numpy')
_RUN_FIELDS = ('name', 'variant', 'seed', 'option_file', 'state', 'status', 'detail', 'attempts')


def versions() -> dict[str, str | None]:
    """Python's version, the installed versions of :data:`PACKAGES` (None when absent) and ``mclir_plugin``'s."""
    from importlib import metadata

    import mclir_plugin

    found: dict[str, str | None] = {'python': platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found['mclir_plugin'] = mclir_plugin.__version__
    return found


def machine() -> dict[str, Any]:
    """The platform, processor and CPU count (and CUDA devices when torch sees any)."""
    import torch
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {'platform': platform.platform(), 'machine': platform.machine(), 'processor': platform.processor(),
            'cpu_count': os.cpu_count(), 'cuda_devices': cuda}


def load_study(workdir: str) -> dict | None:
    """The study's ``study.json``, or None."""
    path = os.path.join(workdir, STUDY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as file:
        return json.load(file)


def recorded_runs(study: dict) -> list[Run]:
    """The runs recorded in a loaded ``study.json`` (without their options)."""
    return [Run(**{k: r[k] for k in _RUN_FIELDS}) for r in study['runs']]


def save_study(workdir: str, study: dict, runs: Sequence[Run]) -> None:
    """Write ``study.json`` atomically (it is rewritten after every run), with ``runs`` and their shell commands."""
    study['runs'] = [{k: v for k, v in asdict(run).items() if k != 'opt'} | {'shell': shell_line(workdir, run)}
                     for run in runs]
    path = os.path.join(workdir, STUDY_FILE)
    with open(path + '.tmp', 'w', encoding='utf-8') as file:
        json.dump(study, file, indent=2)
    os.replace(path + '.tmp', path)
