"""Training studies: read runs' logs, plan and train multi-seed ablations, and report their statistics.

One concept per module; the commands ``compare`` and ``ablate`` (:mod:`mclir_plugin.commands`) are the command
lines over it:

* :mod:`~mclir_plugin.studies.run_logs`: a run's validation and training curves from BasicSR's text logs or
  TensorBoard events (resumed runs merged);
* :mod:`~mclir_plugin.studies.plan`: option files, overrides, variants and the runs of a study;
* :mod:`~mclir_plugin.studies.runner`: the state of a run on disk and its training subprocess;
* :mod:`~mclir_plugin.studies.statistics`: best and last values, mean and std over seeds, paired differences;
* :mod:`~mclir_plugin.studies.report`: the result tables (printed, Markdown, CSV);
* :mod:`~mclir_plugin.studies.plots`: the result pictures;
* :mod:`~mclir_plugin.studies.provenance`: ``study.json``, the installed versions and the machine.
"""
from mclir_plugin.studies.errors import StudyError

__all__ = ['StudyError']
