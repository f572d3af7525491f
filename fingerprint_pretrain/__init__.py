"""fingerprint-pretrain's user API: from your structures to predictions in one call.

The project's three parts stay apart (``schemas`` is the store contract; ``builder`` turns
structures into stores and is the only part that touches pymatgen; ``trainer`` trains and
runs models on stores and never imports the builder). This package is the one small place
where they meet: :func:`predict` and :func:`embed` build a temporary store from raw
structures with the checkpoint's own graph settings (builder), then run the model on it
(trainer). ``fp-train predict`` is the same function on the command line.

>>> from fingerprint_pretrain import predict
>>> table = predict(["cifs/"], "runs/ft/best.pt")        # doctest: +SKIP
>>> table.frame()                                         # doctest: +SKIP
"""

from fingerprint_pretrain.api import PredictionTable, embed, predict

__all__ = ["PredictionTable", "embed", "predict"]
