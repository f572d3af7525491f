"""From a user's plain CIF files to predictions: fp-build build -> pretrain -> finetune --init
(no model flags) -> fp-train predict on other CIFs without targets; and the Python API on
pymatgen Structures, ASE Atoms and paths, checked against the trainer's own evaluation of the
same model on a store built independently from the same structures."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.builder.helpers import MP_SAMPLE, parse_cif, read_csv

TINY = ["--hidden-channels", "16", "--num-layers", "1", "--num-rbf", "8", "--num-heads", "2"]
TINY += ["--head-channels", "16", "--num-workers", "0", "--no-progress", "--batch-size", "8"]


def _run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A labelled folder of 30 CIFs (+ targets CSV), a model fine-tuned on it from a tiny
    pre-training, and a folder of 6 unlabelled CIFs plus one broken file."""
    tmp = tmp_path_factory.mktemp("user")
    rows = read_csv(MP_SAMPLE)
    labelled, unlabelled = rows[:30], rows[30:36]
    (tmp / "cifs").mkdir()
    for r in labelled:
        (tmp / "cifs" / f"{r['material_id']}.cif").write_text(r["cif"])
    with open(tmp / "gaps.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["material_id", "band_gap"])
        out.writerows([r["material_id"], r["band_gap"]] for r in labelled)
    (tmp / "new").mkdir()
    for r in unlabelled:
        (tmp / "new" / f"{r['material_id']}.cif").write_text(r["cif"])
    (tmp / "new" / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    store = tmp / "mine.lmdb"
    _run(
        "-m",
        "fingerprint_pretrain.builder.cli",
        "build",
        str(tmp / "cifs"),
        "--out",
        str(store),
        "--targets-csv",
        str(tmp / "gaps.csv"),
        "--target",
        "band_gap",
        "--target-unit",
        "band_gap=eV",
        "--descriptor",
        "wacsfset2",
        "--jobs",
        "1",
        "-q",
    )
    _run(
        "-m",
        "fingerprint_pretrain.cli",
        "pretrain",
        "--store",
        str(store),
        "--descriptor",
        "wacsfset2",
        "--run-dir",
        str(tmp / "pre"),
        "--epochs",
        "2",
        *TINY,
    )
    _run(
        "-m",
        "fingerprint_pretrain.cli",
        "finetune",
        "--store",
        str(store),
        "--target",
        "band_gap",
        "--init",
        str(tmp / "pre" / "best.pt"),
        "--run-dir",
        str(tmp / "ft"),
        "--epochs",
        "2",
        "--no-progress",
        "--batch-size",
        "8",
        "--num-workers",
        "0",
    )
    return {"tmp": tmp, "store": store, "ckpt": tmp / "ft" / "best.pt", "unlabelled": unlabelled}


def test_cifs_to_predictions_on_the_command_line(user):
    tmp = user["tmp"]
    out = tmp / "pred.csv"
    proc = _run(
        "-m",
        "fingerprint_pretrain.cli",
        "predict",
        "--checkpoint",
        str(user["ckpt"]),
        "--out",
        str(out),
        str(tmp / "new"),
        "-q",
    )
    assert "6 structures predicted, 1 rejected" in proc.stdout
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "band_gap [eV]"]  # no targets: no error columns, no MAE
    assert sorted(r["id"] for r in rows) == sorted(r["material_id"] for r in user["unlabelled"])
    assert all(np.isfinite(float(r["band_gap [eV]"])) for r in rows)
    assert "MAE" not in proc.stdout
    rejected = (tmp / "pred.rejected.csv").read_text()
    assert "broken" in rejected and "unparsable CIF" in rejected


def test_predictions_equal_the_trainers_evaluation_of_the_same_structures(user):
    """The API's predictions for the labelled CIFs (rebuilt from the files with the
    checkpoint's graph settings) equal `fp-train evaluate` on the training store (built
    earlier by fp-build from the same files), structure by structure; with targets given,
    the error columns and MAE follow."""
    from fingerprint_pretrain import predict

    tmp = user["tmp"]
    table = predict(tmp / "cifs", user["ckpt"], targets_csv=tmp / "gaps.csv", progress=False)
    evaluated = tmp / "eval.csv"
    _run(
        "-m",
        "fingerprint_pretrain.cli",
        "evaluate",
        "--checkpoint",
        str(user["ckpt"]),
        "--store",
        str(user["store"]),
        "--split",
        "all",
        "--out",
        str(evaluated),
    )
    with open(evaluated, newline="") as fh:
        reference = {r["id"]: r for r in csv.DictReader(fh)}
    frame = table.frame()
    assert len(frame) == 30 and not table.rejected
    for _, row in frame.iterrows():
        ref = reference[row["id"]]
        assert row["band_gap [eV]"] == pytest.approx(float(ref["prediction_band_gap"]), abs=1e-5)
        assert row["band_gap_target [eV]"] == float(ref["target_band_gap"])
        assert row["band_gap_abs_error [eV]"] == pytest.approx(
            abs(row["band_gap [eV]"] - row["band_gap_target [eV]"])
        )
    mae = np.mean(np.abs(frame["band_gap [eV]"] - frame["band_gap_target [eV]"]))
    assert f"MAE {mae:.6g} eV on the 30 structures" in table.summary()


def test_python_api_takes_structures_atoms_paths_and_stores(user):
    """Structures, Atoms, a glob, a store: one prediction per structure, in input order within
    each kind, and the same value for the same structure whatever form it came in."""
    from fingerprint_pretrain import embed, predict

    tmp = user["tmp"]
    rows = user["unlabelled"][:3]
    structures = [parse_cif(r["cif"]) for r in rows]
    for s, r in zip(structures, rows):
        s.properties["id"] = r["material_id"]
    atoms = [s.to_ase_atoms() for s in structures]
    for a in atoms:
        a.info.pop("id", None)
    from_structures = predict(structures, user["ckpt"], progress=False)
    from_atoms = predict(atoms, user["ckpt"], progress=False)
    from_glob = predict(str(tmp / "new" / "mp-*.cif"), user["ckpt"], progress=False)
    assert from_structures.ids == [r["material_id"] for r in rows]
    assert from_atoms.ids == ["structure-0", "structure-1", "structure-2"]
    by_id = dict(zip(from_glob.ids, from_glob.values[:, 0]))
    np.testing.assert_allclose(
        from_structures.values[:, 0], [by_id[i] for i in from_structures.ids], atol=1e-5
    )
    np.testing.assert_allclose(from_atoms.values, from_structures.values, atol=1e-5)
    one = predict(structures[0], user["ckpt"], progress=False)
    assert one.ids == [rows[0]["material_id"]]
    from_store = predict(user["store"], user["ckpt"], progress=False)
    assert len(from_store.ids) == 30 and from_store.predictions.targets is not None
    ids, vectors, rejected = embed(structures, user["ckpt"], progress=False)
    assert ids == from_structures.ids and vectors.shape == (3, 16) and not rejected
    with pytest.raises(TypeError, match="give paths, stores"):
        predict([object()], user["ckpt"], progress=False)


def test_a_pretraining_checkpoint_is_refused_for_predictions(user):
    from fingerprint_pretrain.trainer.errors import TrainingError

    from fingerprint_pretrain import predict

    with pytest.raises(TrainingError, match="fine-tune it first"):
        predict(user["store"], Path(user["tmp"]) / "pre" / "best.pt", progress=False)


def test_trainer_never_imports_the_builder():
    code = (
        "import sys, fingerprint_pretrain.trainer.cli, fingerprint_pretrain.trainer.predict, "
        "fingerprint_pretrain.trainer.inference, fingerprint_pretrain.trainer.train; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'pymatgen' "
        "or m.startswith(('fingerprint_pretrain.builder', 'builder'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_readme_python_example_runs(user, tmp_path, monkeypatch):
    """The README's Python block, run as written (its checkpoint path swapped for one trained
    here, in a folder where `examples/` is the repository's)."""
    import re

    repo = Path(__file__).resolve().parents[2]
    text = (repo / "README.md").read_text()
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "fingerprint_pretrain" in b
    )
    assert 'checkpoint = "out/example/finetune/best.pt"' in block
    code = block.replace("out/example/finetune/best.pt", str(user["ckpt"]))
    (tmp_path / "examples").symlink_to(repo / "examples")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["table"].ids) == 40 and scope["vectors"].shape == (40, 16)
    assert scope["new"].ids == ["structure-0", "structure-1"]
    assert (tmp_path / "predictions.csv").is_file()
    assert list(scope["frame"].columns) == [
        "id",
        "band_gap [eV]",
        "band_gap_target [eV]",
        "band_gap_abs_error [eV]",
    ]
