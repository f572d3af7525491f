"""The paper's datasets: where they come from, how to get them, how to build them into stores.

- :mod:`builder.datasets.registry`: one entry per dataset (the 11 downstream tasks and the
  pre-training set), with the official sources, checksums, licences, target and split protocol.
- :mod:`builder.datasets.download`: cached, resumable, verified HTTP downloads and the look-up
  of local copies (``--offline`` / ``--from-dir``).
- :mod:`builder.datasets.mpf`: the MPF.2021.2.8 pickles, read with a restricted unpickler and
  converted to a pickle-free extxyz file (the only place a pickle is ever opened).
- :mod:`builder.datasets.make`: fetch + build + verify + split, for one dataset or all
  (``fp-build fetch``, ``fp-build make-datasets``, ``make datasets``).
"""
