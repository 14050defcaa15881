"""``mclir.import_modules``: Python packages an option file needs imported before BasicSR builds anything.

BasicSR's training and test pipelines import only ``basicsr``. A package that adds models, architectures or datasets
to BasicSR's registries does so when it is imported: the ``realesrgan`` package (``pip install --no-deps
realesrgan==0.3.0``) registers ``RealESRGANModel``, ``RealESRNetModel``, ``RealESRGANDataset``,
``RealESRGANPairedDataset``, ``SRVGGNetCompact`` and ``UNetDiscriminatorSN`` under these plain names, which then win
over BasicSR 1.4.2's ``*_basicsr`` copies. Naming it in the option file imports it once the options are parsed
(``tools/train.py``, ``tools/test.py``; before any dataset or model is built, on every rank) and again when
``MCLIRModel`` is built (a no-op after the first import)::

    mclir:
      import_modules: [realesrgan]

The modules are imported after ``mclir_plugin``, whose import shim they need: ``import realesrgan`` on its own fails
on current torchvision as ``import basicsr`` does (``torchvision.transforms.functional_tensor``). The models of an
imported package also get the plugin's CPU redirect of BasicSR's ``.cuda()`` calls
(:data:`mclir_plugin.compat.CUDA_BOUND_METHODS`, matched by class name).
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Mapping

KEY = 'import_modules'

# how to install the packages a user is likely to name (the rest get a generic hint)
INSTALL_HINTS = {
    'realesrgan': 'install it with `pip install --no-deps realesrgan==0.3.0` (without its face-restoration '
                  'dependencies facexlib and gfpgan, which training does not use)',
}


def option_modules(opt: Mapping[str, Any]) -> list[str]:
    """The module names of ``mclir.import_modules`` in ``opt`` (empty without it).

    Raises:
        TypeError: when the value is not a list of module names, naming the key.
    """
    mclir_opt = opt.get('mclir')
    if not isinstance(mclir_opt, Mapping):
        return []  # MCLIRModel names a bad mclir block; a baseline file may have none
    names = mclir_opt.get(KEY)
    if names is None:
        return []
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        raise TypeError(f'mclir.{KEY} must be a list of Python module names, e.g. [realesrgan], got {names!r}.')
    return list(names)


def import_option_modules(opt: Mapping[str, Any]) -> list[str]:
    """Import every module of ``mclir.import_modules`` (idempotent) and return their names.

    Raises:
        ModuleNotFoundError: when a named module is not installed, naming it, the key and how to install it.
    """
    names = option_modules(opt)
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(f'{err.name}.')):
                raise  # the module exists but one of its own imports is missing: that error names it
            hint = INSTALL_HINTS.get(err.name, 'install the package that provides it')  # err.name: what is missing
            raise ModuleNotFoundError(f'mclir.{KEY} names {name!r}, which is not installed: {hint}, or remove it '
                                      f'from mclir.{KEY}.', name=name) from None
    return names


def importing_option_modules(parse_options: Callable) -> Callable:
    """Wrap BasicSR's ``parse_options`` so that the parsed options' ``mclir.import_modules`` are imported."""
    if getattr(parse_options, '__mclir_imports__', False):
        return parse_options

    @functools.wraps(parse_options)
    def parse(root_path: str, is_train: bool = True):
        from mclir_plugin.utils.options import naming_the_file
        opt, args = parse_options(root_path, is_train)
        try:
            import_option_modules(opt)
        except (ModuleNotFoundError, TypeError) as err:
            raise naming_the_file(err) from None
        return opt, args
    parse.__mclir_imports__ = True
    return parse
