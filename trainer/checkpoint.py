"""Checkpoints: one format, safe to load and self-describing (save, load, convert, rebuild).

A checkpoint is a ``torch.save`` file whose pickle holds only tensors and plain Python values
(dict, list, tuple, str, int, float, bool, None). It is read with
``torch.load(weights_only=True)``, so loading one never runs code from the file: a file that
needs anything else to load (a crafted ``__reduce__`` payload, say) is refused, and nothing in
it is executed. Format version 2; its keys:

- ``format`` (``"fingerprint-pretrain-checkpoint"``), ``version`` (2).
- ``model``: the state dict. ``model_args``: everything :func:`build_model_from_args` needs to
  rebuild the model with no other input: ``model`` (the backbone's name in
  :data:`trainer.backbones.BACKBONES`: ``"et"``, ``"schnet"``, ``"painn"``; a checkpoint
  without the key is ``"et"``), ``mode`` (pretrain | finetune), ``out_dim``, ``cutoff`` (Å),
  ``max_neighbors`` (nearest K edges, 0 = all) and every field of that backbone's config
  dataclass but ``cutoff_upper`` (:class:`~trainer.model.ETConfig`: ``hidden_channels``,
  ``num_layers``, ``num_rbf``, ``num_heads``, ``head_channels``, ``self_loops``, ``max_z``
  ...; ``SchNetConfig``: ``num_filters`` ...; ``PaiNNConfig``: ``radial_basis``,
  ``epsilon`` ...).
- ``predicts``: ``{"task": "node" | "graph", "labels": [{"name", "kind" ("descriptor" |
  "target"), "unit", "dim", "family"}]}`` from the store manifest (``unit`` None for
  descriptors); ``labels`` (the names) and ``scaler`` (label scaling y' = (y - shift) / scale:
  ``shift``, ``scale`` per feature, ``mode``).
- ``store``: the training store: ``path``, ``content_hash``, ``graphs_hash`` (covers graphs and
  targets), ``label_hashes`` ({descriptor set: hash} of the sets pre-training used),
  ``schema_version``.
- training state: ``optimizer``, ``scheduler``, ``epoch`` (0-based, the last one finished),
  ``best_val``, ``history`` (one dict per epoch), ``config`` (the TrainConfig as a dict),
  ``splits`` ({"train", "val", "test"}: int64 tensors of record indices) and ``rng`` (torch:
  uint8 tensor; numpy: MT19937 state, its key an int64 tensor; python: ``random.getstate()``).

Version 1 held NumPy arrays (splits, NumPy's RNG state), which ``weights_only=True`` does not
read. :func:`load_checkpoint` refuses such a file naming the command that converts it,
``fp-train convert-checkpoint OLD.pt`` (:func:`convert_checkpoint`, the one reader of version 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from fingerprint_pretrain.trainer.config import ARCHITECTURE_KEYS, MODELS, TrainConfig
from fingerprint_pretrain.trainer.errors import TrainingError
from fingerprint_pretrain.trainer.heads import GraphRegressor, NodeRegressor
from fingerprint_pretrain.trainer.hyperparameters import BACKBONE_CONFIGS, RENAMED, field_names

__all__ = [
    "ARCHITECTURE_KEYS",
    "CHECKPOINT_VERSION",
    "FORMAT",
    "ModelFlagConflict",
    "architecture_from_checkpoint",
    "build_model_from_args",
    "check_same_store",
    "convert_checkpoint",
    "describe_predictions",
    "describe_store",
    "load_checkpoint",
    "model_args",
    "model_from_checkpoint",
    "restore_rng",
    "rng_state",
    "save_checkpoint",
]

FORMAT = "fingerprint-pretrain-checkpoint"
CHECKPOINT_VERSION = 2


class ModelFlagConflict(TrainingError):
    """A model flag given for a run that takes its model from a checkpoint differs from it."""


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


# ------------------------------------------------------------------------------------------
# The model a checkpoint describes
# ------------------------------------------------------------------------------------------
def _config_class(name: str) -> type:
    """The config dataclass of backbone ``name`` (``trainer.hyperparameters``, which imports
    neither torch nor PyTorch Geometric)."""
    if name not in BACKBONE_CONFIGS:
        raise TrainingError(f"unknown model {name!r} (this code builds {', '.join(MODELS)})")
    return BACKBONE_CONFIGS[name]


def _backbone_fields(config_cls: type, values: dict) -> dict:
    """The fields of ``config_cls`` among ``values`` (TrainConfig / ``model_args`` names:
    ``cutoff`` as ``cutoff_upper``), under the dataclass's names."""
    own = field_names(config_cls)
    named = {RENAMED.get(k, k): v for k, v in values.items()}
    return {k: v for k, v in named.items() if k in own}


def model_args(cfg, out_dim: int) -> dict:
    """Every hyperparameter of the model ``cfg`` (a TrainConfig) builds with ``out_dim``
    outputs, as plain values (the checkpoint's ``model_args``): the backbone ``cfg.model``
    with its config dataclass's fields (the model fields of ``cfg`` that backbone has; the
    rest at the dataclass's defaults)."""
    name = getattr(cfg, "model", "et")
    config_cls = _config_class(name)
    given = {k: getattr(cfg, k) for k in ARCHITECTURE_KEYS if hasattr(cfg, k)}
    backbone = config_cls(**_backbone_fields(config_cls, {**given, "cutoff": float(cfg.cutoff)}))
    args = {
        "model": name,
        "mode": cfg.mode,
        "out_dim": int(out_dim),
        "cutoff": backbone.cutoff_upper,
        "max_neighbors": int(cfg.max_neighbors),
    }
    args.update({k: v for k, v in backbone.to_dict().items() if k != RENAMED["cutoff"]})
    return args


def build_model_from_args(args: dict) -> torch.nn.Module:
    """A freshly initialised model as ``args`` (a checkpoint's ``model_args``) describe it:
    backbone ``args["model"]`` (``"et"`` when absent) under :class:`NodeRegressor` for
    pre-training, :class:`GraphRegressor` for fine-tuning."""
    config_cls = _config_class(args.get("model", "et"))
    backbone = config_cls(**_backbone_fields(config_cls, {**args, "cutoff": float(args["cutoff"])}))
    head = NodeRegressor if args["mode"] == "pretrain" else GraphRegressor
    return head(backbone, int(args["out_dim"]))


def model_from_checkpoint(path: str | Path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The model of checkpoint ``path``, rebuilt from the checkpoint alone, with its weights,
    on ``device``, in eval mode; and the checkpoint itself (the keys of the module docstring:
    ``model_args``, ``predicts``, ``labels``, ``scaler``, ``store``, ``config`` ...)."""
    ckpt = load_checkpoint(path)
    model = build_model_from_args(ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise TrainingError(f"{path}: weights do not fit its model_args ({first})") from None
    return model.to(device).eval(), ckpt


def architecture_from_checkpoint(path: str | Path, given: dict) -> dict:
    """The model flags of a run started from checkpoint ``path``: the TrainConfig values
    (of :data:`ARCHITECTURE_KEYS`) to take from it.

    Args:
        path: the checkpoint (``--init``).
        given: model flags given explicitly (command line or config file), name -> value.

    Returns:
        ``{name: checkpoint value}`` for every model flag not in ``given``.

    Raises:
        ModelFlagConflict: a given flag differs from the checkpoint's value (both named; a
            ``model`` that differs first, alone). ``max_neighbors`` may differ: it cuts the
            graph and leaves the weights alone.
    """
    args = {"model": "et", **load_checkpoint(path)["model_args"]}  # format 2 before backbones
    if "model" in given and given["model"] != args["model"]:
        raise ModelFlagConflict(
            f"{path}: a {args['model']} checkpoint cannot start a --model {given['model']} run "
            f"(its weights are a {args['model']}'s); omit --model (fine-tuning takes the model "
            f"from the checkpoint) or pre-train a {given['model']}"
        )
    clash = [
        k
        for k in ARCHITECTURE_KEYS
        if k in given and k in args and k != "max_neighbors" and given[k] != args[k]
    ]
    if clash:
        theirs = ", ".join(f"{k} {args[k]}" for k in clash)
        ours = ", ".join(f"--{k.replace('_', '-')} {given[k]}" for k in clash)
        raise ModelFlagConflict(
            f"{path}: the checkpoint's model has {theirs}, but {ours} was given; omit the "
            f"model flags (fine-tuning takes the model from the checkpoint)"
        )
    return {k: args[k] for k in ARCHITECTURE_KEYS if k in args and k not in given}


# ------------------------------------------------------------------------------------------
# What it predicts and what it was trained on
# ------------------------------------------------------------------------------------------
def describe_predictions(manifest: dict, level: str, labels: list[str]) -> dict:
    """The checkpoint's ``predicts``: its ``task`` (the prediction ``level``: ``"node"`` or
    ``"graph"``), and each label's kind, unit, dim and family
    (descriptor sets: from ``manifest["descriptors"]``; targets: from ``manifest["targets"]``)."""
    if level == "node":
        sets = manifest.get("descriptors", {})
        entries = [
            {
                "name": n,
                "kind": "descriptor",
                "unit": None,
                "dim": int(sets[n]["dim"]) if n in sets else None,
                "family": sets.get(n, {}).get("family"),
            }
            for n in labels
        ]
    else:
        units = {t["name"]: t.get("unit") for t in manifest.get("targets", [])}
        entries = [
            {"name": n, "kind": "target", "unit": units.get(n), "dim": 1, "family": None}
            for n in labels
        ]
    return {"task": level, "labels": entries}


def describe_store(manifest: dict, path: str, level: str, labels: list[str]) -> dict:
    """The checkpoint's ``store``: path, content and graphs hashes, and the hash of each
    descriptor set a pre-training run uses (fine-tuning targets are in the graphs hash)."""
    sets = manifest.get("descriptors", {})
    return {
        "path": str(path),
        "content_hash": manifest.get("content_hash"),
        "graphs_hash": manifest.get("graphs_hash"),
        "label_hashes": {n: sets[n].get("hash") for n in labels if n in sets}
        if level == "node"
        else {},
        "schema_version": manifest.get("schema_version"),
    }


def check_same_store(path: str | Path, saved: dict, current: dict) -> None:
    """Refuse to resume checkpoint ``path`` (trained on ``saved``, its ``store``) on another
    store (``current``: :func:`describe_store` of the store given now, for the same labels).

    Compares the graphs hash and the hashes of the label sets in use, so ``fp-build add`` of an
    unrelated set (which changes the combined content hash) does not block a resume; a
    converted version-1 checkpoint without a graphs hash is compared by content hash.
    """
    names = sorted(saved.get("label_hashes") or {})
    if saved.get("graphs_hash"):
        same = current.get("graphs_hash") == saved["graphs_hash"] and all(
            (current.get("label_hashes") or {}).get(n) == saved["label_hashes"][n] for n in names
        )

        def hashes(d: dict) -> str:
            sets = d.get("label_hashes") or {}
            return ", ".join(
                [f"graphs {d.get('graphs_hash')}"] + [f"{n} {sets.get(n)}" for n in names]
            )

    else:
        same = current.get("content_hash") == saved.get("content_hash")

        def hashes(d: dict) -> str:
            return f"content {d.get('content_hash')}"

    if not same:
        raise TrainingError(
            f"{path}: trained on store {saved.get('path')} ({hashes(saved)}), but --store "
            f"{current['path']} has {hashes(current)}; resume on the store the run began "
            f"with, or start a new --run-dir"
        )


# ------------------------------------------------------------------------------------------
# Random number generators as plain values
# ------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """The torch, NumPy (global) and Python ``random`` states as tensors and plain values."""
    return _plain_rng(
        torch.get_rng_state(),
        np.random.get_state(),  # noqa: NPY002
        random.getstate(),
    )


def _plain_rng(torch_state: torch.Tensor, numpy_state: tuple, python_state: tuple) -> dict:
    """The three generators' states as a checkpoint holds them: ``numpy_state`` is
    ``np.random.get_state()``'s tuple (its MT19937 key as an int64 tensor), ``python_state``
    ``random.getstate()``'s (its tuple as a list)."""
    name, key, pos, has_gauss, cached = numpy_state
    version, internal, gauss_next = python_state
    return {
        "torch": torch_state,
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }


def restore_rng(state: dict) -> None:
    """Set the three generators to ``state`` (from :func:`rng_state`), exactly."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            np_state["bit_generator"],
            np_state["key"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


# ------------------------------------------------------------------------------------------
# Save and load
# ------------------------------------------------------------------------------------------
def _check_plain(obj, where: str = "checkpoint") -> None:
    """Raise TypeError unless ``obj`` is tensors and plain values only (what
    ``weights_only=True`` reads back); names the offending key."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for k, value in enumerate(obj):
            _check_plain(value, f"{where}[{k}]")
    elif not isinstance(obj, _PLAIN) or isinstance(obj, np.generic):
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}")


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, then rename), after checking
    that it holds only tensors and plain values, so it loads with ``weights_only=True``."""
    _check_plain(state)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _why_refused(err: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused a file."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"loading it would call {found.group(1)}, which is code, not data"
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if found:
        return f"the safe unpickler stopped at: {found.group(1).strip()}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(err).__name__)[:200]


def _safe_load(path: Path, map_location="cpu"):
    """``torch.load(weights_only=True)``, without torch's warnings about odd pickles (the
    error, if any, says what matters in one line)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint` (format version 2), loaded with
    ``torch.load(weights_only=True)``: nothing in the file is run.

    Raises:
        TrainingError: no such file; a file that would need code to load (refused, not run);
            a version-1 checkpoint (the message names ``fp-train convert-checkpoint``); not a
            fingerprint-pretrain checkpoint; a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no such checkpoint")
    try:
        ckpt = _safe_load(path, map_location)
    except Exception as err:  # noqa: BLE001  (whatever the file holds, one clear line)
        if _load_version1(path, quiet=True) is not None:
            raise TrainingError(_old_format_message(path)) from None
        raise TrainingError(
            f"{path}: refused: not a checkpoint that loads as plain tensors and values "
            f"({_why_refused(err)}); nothing in it was run"
        ) from None
    return _checked(ckpt, path)


def _old_format_message(path: Path) -> str:
    return (
        f"{path}: a version-1 checkpoint (older fp-train), which cannot be loaded safely; "
        f"if it is your own or you trust its source, convert it once with: "
        f"fp-train convert-checkpoint {path}"
    )


def _checked(ckpt, path: Path) -> dict:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TrainingError(f"{path}: not a fingerprint-pretrain checkpoint")
    version = ckpt.get("version")
    if version == 1:
        raise TrainingError(_old_format_message(path))
    if version != CHECKPOINT_VERSION:
        raise TrainingError(
            f"{path}: checkpoint format version {version}; this code reads version "
            f"{CHECKPOINT_VERSION} (use a matching version of fingerprint-pretrain)"
        )
    missing = [k for k in ("model", "model_args") if k not in ckpt]
    if missing:
        raise TrainingError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


# ------------------------------------------------------------------------------------------
# Version 1 -> 2
# ------------------------------------------------------------------------------------------
def _version1_globals() -> list:
    """What a version-1 checkpoint's pickle refers to beyond plain values: NumPy's array and
    dtype constructors (splits, NumPy's RNG key) and scalars, under their NumPy 1 and 2 names.
    They rebuild data and call nothing else, so allowing them runs no code from the file."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct, scalar

    names = []
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        names += [(_reconstruct, f"{module}._reconstruct"), (scalar, f"{module}.scalar")]
    dtypes = [
        getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", None)) if n.endswith("DType")
    ]
    return [np.ndarray, np.dtype, *names, *dtypes]


def _load_version1(path: Path, quiet: bool = False) -> dict | None:
    """A version-1 checkpoint, read with ``weights_only=True`` and only NumPy's array, dtype
    and scalar constructors allowed (never an unrestricted unpickler). ``quiet``: None for a
    file that is not one; else TrainingError naming why."""
    allowed = _version1_globals()
    if hasattr(torch.serialization, "safe_globals"):
        allowing = torch.serialization.safe_globals(allowed)
    else:  # torch 2.4: no context manager, no aliases; allow the objects for the process
        torch.serialization.add_safe_globals([g for g in allowed if not isinstance(g, tuple)])
        allowing = contextlib.nullcontext()
    try:
        with allowing:
            ckpt = _safe_load(path)
    except Exception as err:  # noqa: BLE001
        if quiet:
            return None
        raise TrainingError(
            f"{path}: refused: not a fingerprint-pretrain checkpoint of version 1 "
            f"({_why_refused(err)}); nothing in it was run"
        ) from None
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT and ckpt.get("version") == 1:
        return ckpt
    if quiet:
        return None
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        raise TrainingError(
            f"{path}: checkpoint format version {ckpt.get('version')}, not 1: nothing to convert"
        )
    raise TrainingError(f"{path}: not a fingerprint-pretrain checkpoint")


def _manifest_of(store_path, content_hash: str) -> tuple[dict | None, str]:
    """The manifest of the store at ``store_path`` if it is the one with ``content_hash``;
    else None and why."""
    from fingerprint_pretrain.schemas import StoreError, read_manifest

    try:
        manifest = read_manifest(store_path)
    except StoreError as err:
        return None, str(err)
    if manifest.get("content_hash") != content_hash:
        return None, (
            f"{store_path} has content hash {manifest.get('content_hash')}, not the "
            f"checkpoint's {content_hash}"
        )
    return manifest, ""


def convert_checkpoint(
    src: str | Path, out: str | Path | None = None, store: str | Path | None = None
) -> tuple[Path, list[str]]:
    """Rewrite a version-1 checkpoint in format version 2 (same weights, optimiser, RNG states,
    split and configuration).

    The old file is read with ``weights_only=True`` allowing only NumPy's array, dtype and
    scalar constructors (which version 1 used), so even this reader runs no code from the file;
    still, convert only files you trust: their weights are what you will train and predict with.

    Args:
        src: the version-1 checkpoint.
        out: where to write (default: replace ``src``).
        store: the training store, to record its graphs and label hashes and the targets'
            units (default: the path the checkpoint records, when its content hash matches).

    Returns:
        (the path written, notes on what could not be filled in).
    """
    src = Path(src)
    if not src.is_file():
        raise TrainingError(f"{src}: no such checkpoint")
    old = _load_version1(src)
    notes: list[str] = []
    cfg = old["config"]
    level = "node" if cfg["mode"] == "pretrain" else "graph"
    labels = list(old.get("labels", cfg.get("labels", [])))
    saved_store = dict(old.get("store", {}))
    manifest, why = _manifest_of(store or saved_store.get("path"), saved_store.get("content_hash"))
    if manifest is None:
        manifest = {"content_hash": saved_store.get("content_hash")}
        manifest["schema_version"] = saved_store.get("schema_version")
        notes.append(f"store hashes and units not recorded: {why}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    defaults = TrainConfig(**{k: v for k, v in cfg.items() if k in known})
    args = {**model_args(defaults, old["model_args"]["out_dim"]), **old["model_args"]}
    predicts = describe_predictions(manifest, level, labels)
    if len(labels) == 1 and predicts["labels"][0]["dim"] is None:
        predicts["labels"][0]["dim"] = int(args["out_dim"]) if level == "node" else 1
    described = describe_store(manifest, saved_store.get("path", cfg.get("store")), level, labels)
    new = {
        **old,
        "version": CHECKPOINT_VERSION,
        "model_args": args,
        "predicts": predicts,
        "labels": labels,
        "store": described,
        "splits": {
            k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in old["splits"].items()
        },
        "rng": _plain_rng(old["rng"]["torch"], old["rng"]["numpy"], old["rng"]["python"]),
    }
    target = Path(out) if out else src
    try:
        save_checkpoint(_plain_numbers(new), target)
    except TypeError as err:
        raise TrainingError(f"{src}: cannot convert: {err}") from None
    load_checkpoint(target)  # reads back through the safe path
    return target, notes


def _plain_numbers(obj):
    """NumPy scalars (which version-1 files may hold in the history) as Python numbers."""
    if isinstance(obj, dict):
        return {k: _plain_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain_numbers(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain_numbers(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
