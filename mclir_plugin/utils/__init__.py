"""Small building blocks shared by the library and the commands.

* :mod:`~mclir_plugin.utils.checkpoint`: atomic writes, clear errors for damaged weight files, and the newest
  complete training state (``newest_training_state``);
* :mod:`~mclir_plugin.utils.exact_resume`: random states and the position inside the epoch (one object per run),
  for exact resume;
* :mod:`~mclir_plugin.utils.option_schema`: typed checks of option values, one message shape;
* :mod:`~mclir_plugin.utils.options`: unknown-key checks and the one rule for command-line overrides;
* :mod:`~mclir_plugin.utils.option_imports`: ``mclir.import_modules`` (other packages' registries);
* :mod:`~mclir_plugin.utils.memory_layout`: the ``channels_last`` option;
* :mod:`~mclir_plugin.utils.run_lock`: one run per experiment folder;
* :mod:`~mclir_plugin.utils.distributed`: ``dist_params.timeout`` and the stalled-rank error;
* :mod:`~mclir_plugin.utils.resume_lr`: ``train.resume_lr``.

Nothing here is imported by this ``__init__``: each module is imported where it is used.
"""
