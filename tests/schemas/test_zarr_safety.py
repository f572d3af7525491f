"""A Zarr store is untrusted input: it cannot run code, hang a reader or over-allocate, damaged
chunks are errors, and twins written before chunk checksums still read."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from fingerprint_pretrain.builder.info import verify_store
from fingerprint_pretrain.schemas import StoreError, open_store

from tests.conftest import REPO


def copy_of(tiny_zarr: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_zarr, copy)
    return copy


class _Payload:
    """Unpickling this writes a marker file (what a hostile chunk could do instead)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_zarr2_object_array_with_a_pickle_filter_is_refused_before_decoding(tiny_zarr, tmp_path):
    """The store layout Zarr 2.x decodes by unpickling its chunks."""
    store = tmp_path / "hostile.zarr"
    store.mkdir()
    shutil.copyfile(tiny_zarr / "manifest.json", store / "manifest.json")
    (store / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (store / "id").mkdir()
    marker = tmp_path / "marker"
    (store / "id" / ".zarray").write_text(
        json.dumps(
            {
                "zarr_format": 2,
                "shape": [6],
                "chunks": [6],
                "dtype": "|O",
                "compressor": None,
                "fill_value": 0,
                "filters": [{"id": "pickle", "protocol": 5}],
                "order": "C",
            }
        )
    )
    (store / "id" / "0").write_bytes(pickle.dumps(np.array([_Payload(marker)] * 6, dtype=object)))
    with pytest.raises(StoreError, match=r"hostile.zarr: array 'id' declares dtype '\|O'"):
        open_store(store)[0]
    ok, lines = verify_store(store, progress=False)
    assert not ok and "array 'id' declares dtype '|O'" in lines[-1]
    assert not marker.exists()


@pytest.mark.parametrize(
    "array,edit,message",
    [
        ("pos", lambda m: m["codecs"].append({"name": "numcodecs.pickle"}), "codec"),
        ("pos", lambda m: m.update(data_type="object"), "data type 'object'"),
        ("id", lambda m: m.update(data_type="|O"), "data type"),
        ("z", lambda m: m["chunk_grid"]["configuration"].update(chunk_shape=[1 << 40]), "chunks"),
        ("z", lambda m: m.update(storage_transformers=[{"name": "x"}]), "storage transformers"),
        ("pos", lambda m: m.update(data_type="float32"), "manifest implies float64"),
        ("edge_dist", lambda m: m.update(shape=[5]), "manifest implies"),
    ],
)
def test_zarr3_metadata_outside_the_contract_is_refused(tiny_zarr, tmp_path, array, edit, message):
    copy = copy_of(tiny_zarr, tmp_path)
    path = copy / array / "zarr.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=rf"copy.zarr: array '{array}' .*{message}"):
        open_store(copy)[0]


OPEN_AND_READ = """
import sys
from fingerprint_pretrain.schemas import StoreError, open_store
try:
    s = open_store(sys.argv[1])
    [s[i] for i in range(len(s))]
except StoreError as err:
    print(err, file=sys.stderr)
    sys.exit(3)
"""


@pytest.mark.parametrize(
    "offsets",
    [
        [0, 10, 20, 30, 40, 50, 1 << 62],  # a huge end: a read would loop over 2^44 chunks
        [0, 10, 5, 30, 40, 50, 60],  # decreasing
        [7, 10, 20, 30, 40, 50, 60],  # not starting at 0
    ],
)
def test_tampered_offsets_neither_hang_nor_allocate(tiny_zarr, tmp_path, offsets):
    copy = copy_of(tiny_zarr, tmp_path)
    zarr.open_array(str(copy / "atom_offsets"), mode="r+")[:] = np.array(offsets, np.int64)
    result = subprocess.run(
        [sys.executable, "-c", OPEN_AND_READ, str(copy)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "array 'atom_offsets' is damaged (offsets must rise from 0 to 60)" in result.stderr
    ok, lines = verify_store(copy, progress=False)
    assert not ok and "atom_offsets" in lines[-1]


def test_a_damaged_chunk_is_an_error_naming_the_array(tiny_zarr, tmp_path):
    copy = copy_of(tiny_zarr, tmp_path)
    chunk = next((copy / "pos" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(data)
    with pytest.raises(StoreError, match=r"copy.zarr: record 0: array 'pos' is damaged"):
        open_store(copy)[0]


def test_a_twin_from_before_checksums_and_int32_shifts_still_reads(tiny_zarr, tmp_path):
    """Rewritten the way the export wrote twins before: Zstandard only, int16 shifts."""
    old = tmp_path / "old.zarr"
    src = zarr.open_group(str(tiny_zarr), mode="r")
    dst = zarr.open_group(str(old), mode="w")
    dst.create_group("descriptors")
    names = ["atom_offsets", "edge_offsets", "id", "z", "pos", "cell", "pbc", "edge_index"]
    names += ["edge_shift", "edge_dist", "targets", "descriptors/gmpset1"]
    for name in names:
        arr = src[name]
        data = arr[:]
        if name == "edge_shift":
            data = data.astype(np.int16)
        out = dst.create_array(name, shape=arr.shape, dtype=data.dtype, chunks=arr.chunks)
        out[:] = data
    shutil.copyfile(tiny_zarr / "manifest.json", old / "manifest.json")
    for a, b in zip(open_store(old), open_store(tiny_zarr)):
        assert a.keys() == b.keys()
        for key in a:
            if key == "id":
                assert a[key] == b[key]
            else:
                assert a[key].dtype == b[key].dtype
                np.testing.assert_array_equal(a[key], b[key])
    ok, lines = verify_store(old, progress=False)
    assert ok, lines
    assert "predate chunk checksums" in lines[0] and "edge_shift" in lines[0]
