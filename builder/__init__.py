"""``builder``: crystal structures in, versioned stores of periodic graphs and labels out.

Command line: ``fp-build`` (:mod:`fingerprint_pretrain.builder.cli`).
"""

__version__ = "0.1.0"
