"""Downloads against a local HTTP server started by the test (no internet): a good download, a
resumed one (the server drops the connection mid-file), retries, a checksum mismatch, a 404,
figshare's md5, local mirrors and aliases, offline mode; and the restricted unpickler of the
MPF pickles (an allowed structure loads, a pickle that would run ``os.system`` is refused)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle

import numpy as np
import pytest
from fingerprint_pretrain.builder.datasets.download import (
    ChecksumError,
    DownloadError,
    Fetcher,
    file_digests,
)
from fingerprint_pretrain.builder.datasets.registry import RemoteFile

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not compressible by accident
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def fetcher(tmp_path, **kw) -> Fetcher:
    kw.setdefault("progress", False)
    kw.setdefault("backoff", 0.0)
    kw.setdefault("retries", 3)
    kw.setdefault("log", lambda line: None)
    return Fetcher(tmp_path / "cache", **kw)


def test_good_download_is_verified_and_cached(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    spec = RemoteFile("data.bin", (server.url("/data.bin"),), sha256=SHA)
    got = fetcher(tmp_path).fetch(spec)
    assert got.how == "download" and got.verified and got.sha256 == SHA
    assert got.path.read_bytes() == PAYLOAD
    assert not (tmp_path / "cache" / "data.bin.part").exists()
    # a second fetch uses the cache: no new request
    n = len(server.requests)
    again = fetcher(tmp_path).fetch(spec)
    assert again.how == "cache" and len(server.requests) == n


def test_interrupted_transfer_is_resumed_with_range(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    server.drop["/big.bin"] = 300_000  # first GET: 300 kB then the connection closes
    logs: list[str] = []
    spec = RemoteFile("big.bin", (server.url("/big.bin"),), sha256=SHA)
    got = fetcher(tmp_path, log=logs.append).fetch(spec)
    assert got.path.read_bytes() == PAYLOAD
    assert server.requests == [("/big.bin", None), ("/big.bin", "bytes=300000-")]
    assert any("retry 1/3" in line for line in logs)


def test_a_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "big.bin.part").write_bytes(PAYLOAD[:123_456])
    spec = RemoteFile("big.bin", (server.url("/big.bin"),), sha256=SHA)
    got = fetcher(tmp_path).fetch(spec)
    assert got.path.read_bytes() == PAYLOAD
    assert server.requests == [("/big.bin", "bytes=123456-")]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "big.bin.part").write_bytes(b"x" * 1000)  # not even the right bytes
    spec = RemoteFile("big.bin", (server.url("/big.bin"),), sha256=SHA)
    assert fetcher(tmp_path).fetch(spec).path.read_bytes() == PAYLOAD


def test_transient_http_errors_are_retried(server, tmp_path):
    server.files["/f"] = PAYLOAD
    server.fail["/f"] = [503, 500]
    spec = RemoteFile("f", (server.url("/f"),), sha256=SHA)
    assert fetcher(tmp_path).fetch(spec).verified
    assert len(server.requests) == 3


def test_checksum_mismatch_is_never_used(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD[:-1] + b"\x00"  # one byte differs
    spec = RemoteFile("data.bin", (server.url("/data.bin"),), sha256=SHA)
    with pytest.raises(ChecksumError) as err:
        fetcher(tmp_path).fetch(spec)
    message = str(err.value)
    found = hashlib.sha256(server.files["/data.bin"]).hexdigest()
    assert SHA in message and found in message and server.url("/data.bin") in message
    cache = tmp_path / "cache"
    assert not (cache / "data.bin").exists() and not (cache / "data.bin.part").exists()
    assert (cache / "data.bin.bad").read_bytes() == server.files["/data.bin"]


def test_corrupt_cached_file_is_moved_aside_and_downloaded_again(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data.bin").write_bytes(b"garbage")
    spec = RemoteFile("data.bin", (server.url("/data.bin"),), sha256=SHA)
    got = fetcher(tmp_path).fetch(spec)
    assert got.how == "download" and got.path.read_bytes() == PAYLOAD
    assert (cache / "data.bin.bad").read_bytes() == b"garbage"


def test_404_is_final_and_says_so(server, tmp_path):
    spec = RemoteFile("gone.bin", (server.url("/gone.bin"),), sha256=SHA)
    with pytest.raises(DownloadError, match=r"HTTP 404") as err:
        fetcher(tmp_path).fetch(spec)
    assert server.url("/gone.bin") in str(err.value)
    assert len(server.requests) == 1  # not retried


def test_second_url_is_tried_after_a_404(server, tmp_path):
    server.files["/mirror.bin"] = PAYLOAD
    spec = RemoteFile("m.bin", (server.url("/gone"), server.url("/mirror.bin")), sha256=SHA)
    assert fetcher(tmp_path).fetch(spec).path.read_bytes() == PAYLOAD


def test_git_blob_id_checks_a_file(server, tmp_path):
    blob = hashlib.sha1(b"blob %d\0" % len(PAYLOAD) + PAYLOAD).hexdigest()
    server.files["/raw/data.json"] = PAYLOAD
    good = RemoteFile("a.json", (server.url("/raw/data.json"),), git_blob_sha1=blob)
    assert fetcher(tmp_path).fetch(good).check == f"git_blob_sha1 {blob} matches"
    bad = RemoteFile("b.json", (server.url("/raw/data.json"),), git_blob_sha1="0" * 40)
    with pytest.raises(ChecksumError, match="git_blob_sha1"):
        fetcher(tmp_path).fetch(bad)


def test_figshare_md5_from_the_api(server, tmp_path):
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    server.files["/ndownloader/files/7"] = PAYLOAD
    meta = {"files": [{"id": 7, "name": "block_0.p", "size": len(PAYLOAD), "computed_md5": md5}]}
    server.files["/api/articles/42"] = json.dumps(meta).encode()
    spec = RemoteFile("block_0.p", (server.url("/ndownloader/files/7"),), figshare=(42, 7))
    f = fetcher(tmp_path, figshare_api=server.url("/api"))
    got = f.fetch(spec)
    assert got.verified and got.check == f"md5 {md5} matches"
    # verified once: later offline runs trust the cache through the recorded sha256
    offline = fetcher(tmp_path, offline=True, figshare_api=server.url("/nothing"))
    assert offline.fetch(spec).how == "cache"
    # a different file under that name is refused
    server.files["/ndownloader/files/8"] = PAYLOAD[::-1]
    meta["files"].append({"id": 8, "size": len(PAYLOAD), "computed_md5": md5})
    server.files["/api/articles/42"] = json.dumps(meta).encode()
    other = RemoteFile("block_1.p", (server.url("/ndownloader/files/8"),), figshare=(42, 8))
    with pytest.raises(ChecksumError, match="md5"):
        f.fetch(other)


def test_no_download_without_figshare_checksum(server, tmp_path):
    server.files["/ndownloader/files/7"] = PAYLOAD
    spec = RemoteFile("block_0.p", (server.url("/ndownloader/files/7"),), figshare=(42, 7))
    with pytest.raises(DownloadError, match="cannot get figshare's md5"):
        fetcher(tmp_path, figshare_api=server.url("/api")).fetch(spec)
    assert server.requests == [("/api/articles/42", None)]


def test_from_dir_and_aliases_offline(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    gz = gzip.compress(PAYLOAD, mtime=0)
    (mirror / "copy.json.gz").write_bytes(gz)
    alias_sha = hashlib.sha256(gz).hexdigest()
    spec = RemoteFile(
        "data.json",
        ("http://127.0.0.1:9/never",),
        sha256=SHA,
        aliases=(("copy.json.gz", alias_sha),),
    )
    got = fetcher(tmp_path, from_dirs=[mirror], offline=True).fetch(spec)
    assert got.how == "from-dir" and got.path == mirror / "copy.json.gz" and got.sha256 == alias_sha
    # a copy under the canonical name with the wrong content is skipped, not used
    (mirror / "data.json").write_bytes(b"wrong")
    logs: list[str] = []
    got = fetcher(tmp_path, from_dirs=[mirror], offline=True, log=logs.append).fetch(spec)
    assert got.path == mirror / "copy.json.gz"
    assert (mirror / "data.json").read_bytes() == b"wrong"  # a mirror is never modified


def test_offline_without_a_copy_says_where_it_looked(tmp_path):
    spec = RemoteFile("x.json.gz", ("https://example.org/x.json.gz",), sha256=SHA)
    with pytest.raises(DownloadError) as err:
        fetcher(tmp_path, from_dirs=[tmp_path / "m"], offline=True).fetch(spec)
    message = str(err.value)
    assert "not available offline" in message and "https://example.org/x.json.gz" in message
    assert str(tmp_path / "m") in message


def test_file_digests_one_pass(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    d = file_digests(path, with_git_blob=True)
    assert d["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert d["md5"] == hashlib.md5(b"hello").hexdigest()
    assert d["git_blob_sha1"] == "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0"  # git hash-object


# --------------------------------------------------------------------------------------------
# MPF pickles: restricted unpickler and conversion
# --------------------------------------------------------------------------------------------
def _mpf_block():
    from pymatgen.core import Lattice, Structure

    first = Structure(Lattice.cubic(4.3), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    last = Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.52]])
    nacl = Structure(
        Lattice.from_parameters(3.9, 3.9, 3.9, 60, 60, 60), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]
    )
    return {
        "mp-22865": {
            "structure": [first, last],
            "energy": [np.float64(-6.5), -6.9],
            "force": [np.zeros((2, 3)), np.zeros((2, 3))],
            "stress": [np.zeros(6), np.zeros(6)],
            "id": ["mp-22865-0", "mp-22865-1"],
        },
        "mp-22862": {
            "structure": [nacl],
            "energy": [-7.0],
            "force": [np.zeros((2, 3))],
            "stress": [np.zeros(6)],
            "id": ["mp-22862-0"],
        },
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_loads_mpf_structures(tmp_path, protocol):
    from fingerprint_pretrain.builder.datasets.mpf import load

    path = tmp_path / "block.p"
    path.write_bytes(pickle.dumps(_mpf_block(), protocol=protocol))
    data = load(path)
    s = data["mp-22865"]["structure"][-1]
    assert s.formula == "Cs1 Cl1" and np.isclose(s.lattice.a, 4.1)
    assert isinstance(data["mp-22865"]["force"][0], np.ndarray)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(tmp_path):
    from fingerprint_pretrain.builder.datasets.mpf import UnsafePickleError, load

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.p"
    path.write_bytes(pickle.dumps({"mp-1": {"structure": [_Evil(marker)]}}))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        (eval, ("1+1",)),  # builtins.eval
        (getattr, ("text", "upper")),  # builtins.getattr
        (io.open, ("/etc/passwd",)),
    ],
)
def test_restricted_unpickler_refuses_other_callables(tmp_path, payload):
    from fingerprint_pretrain.builder.datasets.mpf import UnsafePickleError, load

    class Bad:
        def __reduce__(self):
            return payload

    path = tmp_path / "bad.p"
    path.write_bytes(pickle.dumps(Bad()))
    with pytest.raises(UnsafePickleError):
        load(path)


def test_mpf_conversion_takes_the_last_frame(tmp_path):
    from fingerprint_pretrain.builder.datasets.mpf import convert_mpf
    from fingerprint_pretrain.builder.readers import open_input

    blocks = []
    for k, part in enumerate([dict(list(_mpf_block().items())[:1]), _mpf_block()]):
        blocks.append(tmp_path / f"block_{k}.p")
        blocks[-1].write_bytes(pickle.dumps(part))
    out = tmp_path / "mp_relaxed.extxyz.gz"
    counts = convert_mpf(blocks, out, progress=False, log=lambda line: None)
    assert counts["records"] == 2 and counts["duplicates"] == 1 and counts["frames"] == 3
    text = gzip.decompress(out.read_bytes()).decode()  # plain text, no pickle
    assert text.startswith("2\n") and "material_id=mp-22865" in text
    _, names, items, total = open_input(out, "extxyz", ["mpf_energy"], "material_id")
    items = list(items)
    assert total == 2 and [i.record_id for i in items] == ["mp-22865", "mp-22862"]
    assert items[0].targets == (-6.9,)
    expected = _mpf_block()["mp-22865"]["structure"][-1]
    np.testing.assert_allclose(items[0].payload["positions"], expected.cart_coords, atol=1e-7)
    np.testing.assert_allclose(items[0].payload["cell"], expected.lattice.matrix, atol=1e-7)
    assert list(items[0].payload["numbers"]) == [55, 17]
