"""fp-build from the command line: one-line errors, info, verify (including a corrupted copy),
export."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from fingerprint_pretrain.schemas import RecordError, open_store

from tests.builder.helpers import MP_SAMPLE, PEROV_SAMPLE


def fp_build(*args, check=False):
    result = subprocess.run(
        [sys.executable, "-m", "fingerprint_pretrain.builder.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "perov.lmdb"
    fp_build(
        "build",
        PEROV_SAMPLE,
        "--out",
        out,
        "--id-column",
        "castelli_id",
        "-t",
        "heat_all",
        "--target-unit",
        "heat_all=eV",
        "-j",
        "1",
        "-q",
        check=True,
    )
    return out


def one_line_error(result, code=1):
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fp-build: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_build_prints_what_was_built(store):
    m = open_store(store).manifest
    assert m["counts"]["records"] == 40


@pytest.mark.parametrize(
    "args,expected,code",
    [
        (["build", PEROV_SAMPLE, "--out", "x.lmdb", "--bogus"], "No such option '--bogus'", 2),
        (["build", PEROV_SAMPLE, "--out", "x.lmdb", "--cutoff", "abc"], "'abc' is not a valid", 2),
        (["build", PEROV_SAMPLE, "--out", "x.lmdb", "-t", "gap"], "available: castelli_id", 1),
        (["build", "missing.csv", "--out", "x.lmdb"], "missing.csv: no such file", 1),
        (["build", PEROV_SAMPLE, "--out", "x.lmdb", "--target-unit", "eV"], "not COLUMN=UNIT", 2),
        (["info", "nowhere.lmdb"], "nowhere.lmdb: no such store", 1),
        (["verify", MP_SAMPLE.parent], "not a finished store", 1),
        # nonsense values: usage errors (exit 2), before any work
        (["build", PEROV_SAMPLE, "--out", "x.lmdb", "--chunk-size", "0"], "--chunk-size", 2),
        (["build", PEROV_SAMPLE, "--out", "x.lmdb", "--jobs", "0"], "0 is not -1 (all cores)", 2),
        (["build", PEROV_SAMPLE, "--out", "x.lmdb", "-j", "-3"], "-3 is not -1 (all cores)", 2),
        (["build", PEROV_SAMPLE, "--out", "x.lmdb", "--cutoff", "-1"], "-1.0 is not a finite", 2),
        (["build", PEROV_SAMPLE, "--out", "x.lmdb", "--cutoff", "0"], "0.0 is not a finite", 2),
        (["build", PEROV_SAMPLE, "--out", "x.lmdb", "--cutoff", "nan"], "nan is not a finite", 2),
        (["build", PEROV_SAMPLE, "--out", "x.lmdb", "--cutoff", "inf"], "inf is not a finite", 2),
        (["add", "x.lmdb", "-d", "wacsfset1", "--jobs", "0"], "0 is not -1 (all cores)", 2),
        (["fetch", "perov_5", "--jobs", "0"], "0 is not -1 (all cores)", 2),
    ],
)
def test_wrong_command_lines_get_one_line_errors(args, expected, code, tmp_path):
    args = [str(tmp_path / a) if a == "x.lmdb" else a for a in args]
    assert expected in one_line_error(fp_build(*args), code)


def test_build_that_keeps_nothing_exits_1_saying_why(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text('material_id,cif\nx,"not a CIF"\n')
    line = one_line_error(fp_build("build", src, "--out", tmp_path / "b.lmdb", "-j", "1", "-q"))
    assert "no structure kept: all 1 inputs were rejected" in line and "unparsable CIF" in line
    assert not (tmp_path / "b.lmdb").exists()


def test_info_reports_sizes_per_atom(store):
    out = fp_build("info", store, check=True).stdout
    assert "records      40" in out and "heat_all [eV]" in out
    assert "bytes/atom" in out and "graphs" in out
    assert "schema 2.0" in out and "graphs.mdb" in out and "present" in out
    full = fp_build("info", store, "--json", check=True).stdout
    assert '"content_hash"' in full


def test_verify_passes_and_detects_a_flipped_byte(store, tmp_path):
    result = fp_build("verify", store, "-q", check=True)
    assert "OK" in result.stdout
    copy = tmp_path / "copy.lmdb"
    shutil.copytree(store, copy)
    assert "OK" in fp_build("verify", copy, "-q", check=True).stdout  # a copy is intact
    # flip one byte inside the positions of record 7, found by its exact bytes
    pos = open_store(store)[7]["pos"]
    data = bytearray((copy / "graphs.mdb").read_bytes())
    at = data.find(pos.tobytes())
    assert at > 0
    data[at + 3] ^= 0x01
    (copy / "graphs.mdb").write_bytes(bytes(data))
    with pytest.raises(RecordError, match="record 7: checksum mismatch"):
        open_store(copy)[7]  # the record's CRC-32: never silently wrong positions
    result = fp_build("verify", copy, "-q")
    assert result.returncode == 1
    assert "CORRUPT" in result.stdout and "record 7: checksum mismatch" in result.stdout
    assert "graphs.mdb: sha256 MISMATCH" in result.stdout  # the part's checksum, too


def test_export_both_formats(store, tmp_path):
    fp_build("export", store, "--format", "zarr", "--out", tmp_path / "p.zarr", "-q", check=True)
    assert "OK" in fp_build("verify", tmp_path / "p.zarr", "-q", check=True).stdout
    fp_build("export", store, "--format", "extxyz", "--out", tmp_path / "p.xyz", "-q", check=True)
    assert (tmp_path / "p.xyz").read_text().startswith("5\nLattice=")
    again = fp_build("export", store, "--format", "zarr", "--out", tmp_path / "p.zarr")
    assert "already exists" in one_line_error(again, 2)


def test_every_fp_build_option_explains_itself():
    """Every option of every fp-build command has help text; choices and defaults show."""
    import click
    from click.testing import CliRunner
    from fingerprint_pretrain.builder.cli import cli

    missing = []
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"fp-build {name} {param.opts[0]}")
    assert not missing, missing
    text = CliRunner().invoke(cli, ["add", "--help"]).output
    assert "[default: float32]" in text and "float16" in text and "zlib" in text


def test_build_options_reach_the_builder_unchanged(monkeypatch, tmp_path):
    """Every fp-build build option lands in the BuildOptions field it names (written out here
    by hand), and the defaults are BuildOptions' own."""
    import fingerprint_pretrain.builder.build
    from click.testing import CliRunner
    from fingerprint_pretrain.builder.build import BuildOptions
    from fingerprint_pretrain.builder.cli import cli

    seen = []

    def fake_build_store(opts):
        seen.append(opts)
        return {"counts": {"rejected": 0}}

    monkeypatch.setattr(fingerprint_pretrain.builder.build, "build_store", fake_build_store)
    monkeypatch.setattr(fingerprint_pretrain.builder.build, "summarize", lambda manifest: "")
    out = str(tmp_path / "x.lmdb")
    argv = ["build", str(MP_SAMPLE), "-o", out, "--cutoff", "6.5", "-j", "3", "-t", "band_gap"]
    argv += ["-t", "e", "--target-unit", "band_gap=eV", "--id-column", "mid", "--cif-column"]
    argv += ["structure", "--targets-csv", "t.csv", "--format", "csv-cif", "-d", "eadset1,gmp"]
    argv += ["--dtype", "float16", "--codec", "zlib", "--strict", "--allow-missing-targets"]
    argv += ["--backend", "dask", "--scheduler", "tcp://h:1", "--chunk-size", "5", "-q"]
    argv += ["--overwrite"]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    assert seen[-1] == BuildOptions(
        inputs=[str(MP_SAMPLE)],
        out=out,
        cutoff=6.5,
        jobs=3,
        targets=["band_gap", "e"],
        target_units={"band_gap": "eV"},
        id_column="mid",
        cif_column="structure",
        targets_csv="t.csv",
        fmt="csv-cif",
        strict=True,
        allow_missing_targets=True,
        descriptors=["gmpset1", "gmpset2", "gmpset3", "eadset1"],
        descriptor_dtype="float16",
        descriptor_codec={n: "zlib" for n in ["gmpset1", "gmpset2", "gmpset3", "eadset1"]},
        backend="dask",
        scheduler="tcp://h:1",
        chunk_size=5,
        overwrite=True,
        progress=False,
    )
    assert CliRunner().invoke(cli, ["build", str(MP_SAMPLE), "-o", out]).exit_code == 0
    assert seen[-1] == BuildOptions(inputs=[str(MP_SAMPLE)], out=out)
