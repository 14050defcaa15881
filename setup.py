"""mclir_plugin: model-contrastive learning (MCLIR / SPN, AAAI 2024) for BasicSR.

Install torch (and torchvision) first, then ``pip install --no-build-isolation basicsr==1.4.2`` (its build imports
torch), then this package: see the README, or ``scripts/setup_env.sh`` which does all three.
"""
from setuptools import find_packages, setup

setup(
    name='mclir_plugin',
    version='0.2.0',
    description='History-negative models and the SPN loss (MCLIR, AAAI 2024) for BasicSR',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['mclir_plugin', 'mclir_plugin.*']),
    install_requires=[
        'torch>=1.13',
        'torchvision>=0.14',
        'basicsr==1.4.2',
        'mmengine>=0.10',
        'numpy',
        'opencv-python',
        'scikit-image',   # the built-in demo data (photographs shipped in its wheel)
        'lmdb',
        'einops',
        'pyyaml',
        'setuptools',     # basicsr imports distutils, gone from Python 3.12's standard library
        'matplotlib',     # tools/compare.py and tools/ablate.py plots
        'tqdm',
    ],
    extras_require={
        'test': ['pytest>=7', 'pytest-xdist>=3'],  # make test: two workers, one test file each
        # the realesrgan package's models, archs and datasets (mclir.import_modules: [realesrgan]). Install it with
        # `pip install --no-deps realesrgan==0.3.0`: its own dependencies facexlib and gfpgan (face restoration,
        # large) are not used for training; the rest (basicsr, torch, opencv, numpy) are ours already
        'realesrgan': ['realesrgan==0.3.0'],
    },
    entry_points={'console_scripts': [
        'mclir-train=mclir_plugin.commands.train:main',
        'mclir-test=mclir_plugin.commands.evaluate:main',
        'mclir-compare=mclir_plugin.commands.compare:main',
        'mclir-ablate=mclir_plugin.commands.ablate:main',
        'mclir-convert-official=mclir_plugin.commands.convert_official:main',
        'mclir-benchmark=mclir_plugin.commands.benchmark:main',
        'mclir-create-lmdb=mclir_plugin.commands.create_lmdb:main',
        'mclir-make-pair-list=mclir_plugin.commands.make_pair_list:main',
    ]},
    license='Apache-2.0',
)
