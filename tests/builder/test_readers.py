"""Every input format yields the same structures, ids and targets as the CSV+CIF reference
(files written here by pymatgen and ASE, the libraries users export from)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from fingerprint_pretrain.builder.readers import InputError, detect_format, open_input
from fingerprint_pretrain.schemas import open_store

from tests.builder.helpers import MP_SAMPLE, build, parse_cif, read_csv, write_csv

N = 10


@pytest.fixture(scope="module")
def sample():
    rows = read_csv(MP_SAMPLE)[:N]
    return [(r["material_id"], float(r["band_gap"]), parse_cif(r["cif"]), r["cif"]) for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample):
    tmp = tmp_path_factory.mktemp("ref")
    src = write_csv(
        tmp / "ref.csv",
        ["material_id", "band_gap", "cif"],
        [[i, y, cif] for i, y, _, cif in sample],
    )
    build(tmp / "ref.lmdb", src, targets=["band_gap"])
    return {r["id"]: r for r in open_store(tmp / "ref.lmdb")}


def write_cgcnn(tmp, sample):
    folder = tmp / "cgcnn"
    folder.mkdir()
    for i, _, _, cif in sample:
        (folder / f"{i}.cif").write_text(cif)
    (folder / "id_prop.csv").write_text("".join(f"{i},{y!r}\n" for i, y, _, _ in sample))
    return folder, {"targets": ["y"]}


def write_extxyz(tmp, sample):
    import ase.io

    frames = []
    for i, y, s, _ in sample:
        atoms = s.to_ase_atoms()
        atoms.info.update({"material_id": i, "band_gap": y})
        frames.append(atoms)
    path = tmp / "sample.extxyz"
    ase.io.write(path, frames, format="extxyz")
    return path, {"targets": ["band_gap"]}


def write_ase_db(tmp, sample):
    import ase.db

    path = tmp / "sample.db"
    with ase.db.connect(path) as db:
        for i, y, s, _ in sample:
            db.write(s.to_ase_atoms(), material_id=i, band_gap=y)
    return path, {"targets": ["band_gap"]}


def write_pymatgen_records(tmp, sample):
    path = tmp / "records.json"
    path.write_text(
        json.dumps(
            [{"material_id": i, "band_gap": y, "structure": s.as_dict()} for i, y, s, _ in sample]
        )
    )
    return path, {"targets": ["band_gap"]}


def write_pymatgen_mapping(tmp, sample):
    path = tmp / "mapping.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump({i: s.as_dict() for i, _, s, _ in sample}, fh)
    return path, {"targets": [], "allow_missing_targets": True}


def write_matbench(tmp, sample):
    path = tmp / "matbench_sample.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(
            {
                "index": [i for i, *_ in sample],
                "columns": ["structure", "band_gap"],
                "data": [[s.as_dict(), y] for _, y, s, _ in sample],
            },
            fh,
        )
    return path, {}


def write_mdl(tmp, sample):
    path = tmp / "mdl.json"
    path.write_text(
        json.dumps(
            [
                {
                    "structure_id": i,
                    "positions": s.cart_coords.tolist(),
                    "cell": s.lattice.matrix.tolist(),
                    "atomic_numbers": [site.specie.Z for site in s],
                    "y": [y],
                }
                for i, y, s, _ in sample
            ]
        )
    )
    return path, {}


def write_extxyz_calculator(tmp, sample):
    """extxyz as ASE writes a frame with a calculator: ``energy=`` on the comment line, which
    ASE reads back into a SinglePointCalculator, not into ``info``."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for i, y, s, _ in sample:
        atoms = s.to_ase_atoms()
        atoms.info["material_id"] = i
        atoms.calc = SinglePointCalculator(atoms, energy=y, free_energy=y)
        frames.append(atoms)
    path = tmp / "calc.extxyz"
    ase.io.write(path, frames, format="extxyz")
    assert "energy=" in path.read_text().splitlines()[1]
    return path, {"targets": ["energy"]}


def write_ase_db_calculator(tmp, sample):
    import ase.db
    from ase.calculators.singlepoint import SinglePointCalculator

    path = tmp / "calc.db"
    with ase.db.connect(path) as db:
        for i, y, s, _ in sample:
            atoms = s.to_ase_atoms()
            atoms.calc = SinglePointCalculator(atoms, energy=y, free_energy=y)
            db.write(atoms, material_id=i)
    return path, {"targets": ["free_energy"]}


def write_cif_folder(tmp, sample):
    """A plain folder of ``<id>.cif`` (no id_prop.csv); targets from a CSV joined by id, in
    another order than the files, with one extra id no file has."""
    folder = tmp / "cifs"
    folder.mkdir()
    for i, _, _, cif in sample:
        (folder / f"{i}.cif").write_text(cif)
    table = write_csv(
        tmp / "targets.csv",
        ["material_id", "band_gap"],
        [["mp-none", 1.0], *([i, repr(y)] for i, y, _, _ in reversed(sample))],
    )
    return folder, {"targets": ["band_gap"], "targets_csv": str(table)}


def write_poscar_folder(tmp, sample):
    """VASP files (``<id>.vasp``, Cartesian, written by ASE) read through ASE."""
    import ase.io

    folder = tmp / "vasp"
    folder.mkdir()
    for i, _, s, _ in sample:
        ase.io.write(folder / f"{i}.vasp", s.to_ase_atoms(), format="vasp", direct=False)
    return folder, {"targets": [], "allow_missing_targets": True}


WRITERS = {
    "extxyz-calculator": (write_extxyz_calculator, 1e-7),
    "ase-db-calculator": (write_ase_db_calculator, 1e-12),
    "files-cif": (write_cif_folder, 0.0),
    "files-vasp": (write_poscar_folder, 1e-7),
    "cgcnn": (write_cgcnn, 0.0),
    "extxyz": (write_extxyz, 1e-7),  # ASE writes 8 decimals
    "ase-db": (write_ase_db, 1e-12),
    "pymatgen": (write_pymatgen_records, 1e-12),
    "pymatgen-mapping": (write_pymatgen_mapping, 1e-12),
    "matbench": (write_matbench, 1e-12),
    "mdl": (write_mdl, 1e-12),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_format_matches_csv_reference(fmt, tmp_path, sample, reference):
    writer, atol = WRITERS[fmt]
    path, options = writer(tmp_path, sample)
    expected_format = fmt.split("-mapping")[0].split("-calculator")[0].split("-cif")[0]
    expected_format = expected_format.split("-vasp")[0]
    assert detect_format(path) == expected_format
    build(tmp_path / "out.lmdb", path, **options)
    store = open_store(tmp_path / "out.lmdb")
    assert len(store) == N
    for rec in store:
        ref = reference[rec["id"]]
        np.testing.assert_array_equal(rec["z"], ref["z"])
        np.testing.assert_allclose(rec["pos"], ref["pos"], atol=atol)
        np.testing.assert_allclose(rec["cell"], ref["cell"], atol=atol)
        assert len(rec["edge_dist"]) == len(ref["edge_dist"])
        if options.get("targets") != []:
            np.testing.assert_array_equal(rec["targets"], ref["targets"])


def test_structure_files_detection_ids_and_errors(tmp_path):
    """Single files are the ``files`` format by name; ids are file stems (VASP names whole);
    an empty folder, targets without a CSV and a CSV without the column are one-line errors;
    an unreadable file is rejected with its reason, the others kept."""
    rows = read_csv(MP_SAMPLE)[:2]
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.cif").write_text(rows[0]["cif"])
    parse_cif(rows[1]["cif"]).to(filename=str(folder / "POSCAR_b"), fmt="poscar")
    (folder / "broken.vasp").write_text("not a POSCAR\n")
    (folder / "notes.txt").write_text("ignored")
    for name in ("a.cif", "POSCAR_b", "CONTCAR", "x.vasp"):
        assert detect_format(folder / name) == "files"
    assert detect_format(folder) == "files"
    _, _, items, total = open_input(folder, None, [], None)
    assert total == 3 and [i.record_id for i in items] == ["POSCAR_b", "a", "broken"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no structure files"):
        open_input(tmp_path / "empty", None, [], None)
    with pytest.raises(InputError, match="--targets-csv"):
        open_input(folder, None, ["y"], None)
    table = write_csv(tmp_path / "t.csv", ["id", "z"], [["a", 1]])
    with pytest.raises(InputError, match="no target column"):
        open_input(folder, None, ["y"], None, targets_csv=str(table))
    with pytest.raises(InputError, match="targets-csv is for folders"):
        open_input(MP_SAMPLE, None, [], None, targets_csv=str(table))
    build(tmp_path / "out.lmdb", folder, targets=[], allow_missing_targets=True)
    store = open_store(tmp_path / "out.lmdb")
    assert sorted(r["id"] for r in store) == ["POSCAR_b", "a"]
    rejected = (tmp_path / "out.lmdb" / "rejected.csv").read_text()
    assert "broken" in rejected and "unreadable structure file" in rejected


def test_missing_column_lists_what_exists(tmp_path):
    with pytest.raises(InputError, match=r"no target column\(s\) 'gap'; available: material_id"):
        open_input(MP_SAMPLE, None, ["gap"], None)
    with pytest.raises(InputError, match="no id column"):
        open_input(MP_SAMPLE, None, [], "uid")
    with pytest.raises(InputError, match="no such file"):
        open_input(tmp_path / "nope.csv", None, [], None)
    (tmp_path / "x.weird").write_text("?")
    with pytest.raises(InputError, match="cannot tell the format"):
        open_input(tmp_path / "x.weird", None, [], None)


def test_csv_without_id_column_uses_file_and_line(tmp_path):
    rows = read_csv(MP_SAMPLE)[:2]
    src = write_csv(tmp_path / "noid.csv", ["cif"], [[r["cif"]] for r in rows])
    _, _, items, total = open_input(src, None, [], None)
    items = list(items)
    assert total == 2 and items[0].record_id == "noid.csv:2"
    assert src.read_text().splitlines()[items[1].row - 1] == '"# generated using pymatgen'
