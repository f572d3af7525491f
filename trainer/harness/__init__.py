"""The experiment harness: running the paper's experiment and reporting it.

Beside the trainer, not part of it: the harness drives ``fp-train`` as a user does and reads
the run directories it writes. The training loop never imports it (only the zoo reads a
sweep's results, through :mod:`~trainer.harness.results`, to state a model's measured effect).

- :mod:`~trainer.harness.sweep` (``fp-train sweep PLAN.yaml``): a plan expanded into runs, each
  executed as its own ``fp-train`` process with its configuration file, resumable.
- :mod:`~trainer.harness.results`: a sweep's finished runs as rows, and their statistics.
- :mod:`~trainer.harness.report` (``fp-train report RUNS_DIR``): the paper's Table 2 layout,
  the data-efficiency and epoch-ablation tables.
- :mod:`~trainer.harness.run_report` (``fp-train report RUN_DIR``): one run's report.
- :mod:`~fingerprint_pretrain.trainer.harness.figures`: every figure of both reports.
"""
