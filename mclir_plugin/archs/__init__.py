"""Architectures registered in BasicSR's ``ARCH_REGISTRY``: every ``*_arch.py`` module here is imported."""
import importlib
import os

_FOLDER = os.path.dirname(os.path.abspath(__file__))
for _name in sorted(f[:-3] for f in os.listdir(_FOLDER) if f.endswith('_arch.py')):
    importlib.import_module(f'mclir_plugin.archs.{_name}')
