"""fp-train: TorchMD-Net ET (and SchNet, PaiNN) pre-training on descriptor labels and
fine-tuning on properties, on the periodic graphs of a ``schemas`` store.

Naming rules of this package (one spelling and one meaning per name):

- *neighbour / neighbor*: prose (docstrings, comments, messages, help) is British English,
  "neighbour"; identifiers are American, "neighbor", as in torchmd-net and PyTorch Geometric
  whose names ours mirror (``NeighborEmbedding``, ``neighbor_embedding``, ``max_neighbors``).
- ``labels`` (config key, ``--descriptor`` / ``--target``): what the model learns to predict,
  by name: the store's descriptor sets (per atom) in pre-training, its targets (per structure)
  in fine-tuning. The split between the two is the prediction *level*, ``"node"`` or
  ``"graph"`` (from ``mode``; a checkpoint records it as ``predicts["task"]``, a format key).
- ``task``: in the sweep and the zoo's comparisons, a downstream dataset (a MatBench task);
  the checkpoint key ``predicts["task"]`` and ``StoreDataset.task`` (API) keep their names for
  the prediction level.
- ``init`` (config key): the model a run starts from, a checkpoint file or a zoo name; the
  sweep's ``inits`` name pre-training label sets (``"wacsfset1"``, ``"wacsfset1+adapt"``), which
  it turns into an ``init`` path.
- ``cutoff`` (config key, ``model_args`` key): the model's radial cutoff, Å (its cosine cutoff
  vanishes there, and longer edges are dropped); the radius a store's edges were built with is
  the store's *graph cutoff* (``manifest["cutoff"]``; ``StoreDataset.store_cutoff``).
  The config dataclasses call the model's ``cutoff_upper`` (torchmd-net's name), and a tensor
  of per-edge cosine-cutoff values is ``f_cut``.
"""
