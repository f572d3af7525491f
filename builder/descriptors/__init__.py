"""Per-atom structural descriptors (pre-training labels): pure functions registered by name.

Families: :mod:`~builder.descriptors.wacsf`, :mod:`~builder.descriptors.gmp`,
:mod:`~fingerprint_pretrain.builder.descriptors.ead`; the nine label sets of the paper are in
:mod:`~fingerprint_pretrain.builder.descriptors.registry` (``get("eadset1")``, ``resolve("all")``).
"""
