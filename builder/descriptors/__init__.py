"""Per-atom structural descriptors (pre-training labels): pure functions registered by name.

Families: :mod:`~builder.descriptors.wacsf`, :mod:`~builder.descriptors.gmp`,
:mod:`~builder.descriptors.ead`; the nine label sets of the paper are in
:mod:`~builder.descriptors.registry` (``get("eadset1")``, ``resolve("all")``).
"""
