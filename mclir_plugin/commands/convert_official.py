"""Convert an official MCLIR option file into a plugin option file.

``python tools/convert_official_options.py IN.yml OUT.yml`` (or ``mclir-convert-official IN.yml OUT.yml``) writes
the translation that the official model types get at run time (:mod:`mclir_plugin.models.official_models`):
``model_type: MCLIRModel`` with the ``mclir`` block and ``train.pixel_opt: SPNLoss``, every other key unchanged. The
file's header lists the keys that were dropped because the official code ignores them. Comments of the input are
not kept.
"""
from __future__ import annotations

import argparse
import os
import sys

import yaml


def convert_file(src: str, dst: str):
    """Translate the official option file ``src`` and write the plugin option file ``dst``.

    Args:
        src: An option file whose ``model_type`` is one of the official types
            (``ImageRestorationModel_FFANet_Neg_Multi``, ...).
        dst: Where to write the plugin option file (its folder is created).

    Returns:
        The :class:`~mclir_plugin.models.official_models.Translation`.
    """
    import mclir_plugin  # noqa: F401  (registers the model types the translation checks against)
    from mclir_plugin.models.official_models import to_yaml, translate_official

    with open(src, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    if not isinstance(opt, dict):
        raise ValueError(f'{src}: not a YAML mapping (an option file).')
    try:
        result = translate_official(opt)
    except (KeyError, ValueError) as err:
        raise type(err)(f'{err.args[0]} (option file: {src})') from None
    header = [f'# Converted from {os.path.basename(src)} (official MCLIR model type {result.official_type}) by',
              '# tools/convert_official_options.py: the mclir block and train.pixel_opt replace the official keys.']
    header += [f'# Note: {line}' for line in result.notes]
    header += [f'# Dropped: {line}' for line in result.ignored]
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(dst, 'w', encoding='utf-8') as f:
        f.write('\n'.join(header) + '\n' + to_yaml(result.opt))
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: ``IN.yml OUT.yml``; prints the dropped keys and where the file went."""
    parser = argparse.ArgumentParser(description='Convert an official MCLIR option file into a plugin one.')
    parser.add_argument('src', help='official option file (model_type SRNegModel_Multi, ..._FFANet_Neg_Multi, ...)')
    parser.add_argument('dst', help='plugin option file to write')
    args = parser.parse_args(argv)
    try:
        result = convert_file(args.src, args.dst)
    except (KeyError, ValueError, OSError) as err:
        print(f'error: {err.args[0] if err.args else err}', file=sys.stderr)
        return 1
    for line in result.ignored:
        print(f'dropped: {line}')
    print(f'{args.dst}: {result.official_type} -> MCLIRModel (mclir.base_model: '
          f"{result.opt['mclir']['base_model']})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
