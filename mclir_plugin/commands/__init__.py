"""The commands: every tool's logic, behind a ``main(argv)`` that ``tools/*.py`` and the console scripts call.

================================  ===========================  =============================================
module                            console script               what it does
================================  ===========================  =============================================
:mod:`.train`                     ``mclir-train``              BasicSR's training pipeline, plugin registered
:mod:`.evaluate`                  ``mclir-test``               test checkpoints on option-file datasets
:mod:`.compare`                   ``mclir-compare``            curves and tables of finished runs
:mod:`.ablate`                    ``mclir-ablate``             seeds x variants study with paired statistics
:mod:`.benchmark`                 ``mclir-benchmark``          cost of one SPN step against plain and official
:mod:`.create_lmdb`               ``mclir-create-lmdb``        pack image folders into lmdb, verify, repair
:mod:`.make_pair_list`            ``mclir-make-pair-list``     list the pairs of a dataset tree
:mod:`.convert_official`          ``mclir-convert-official``   official MCLIR option files to this plugin's
================================  ===========================  =============================================
"""
