"""Fetching a published store in parts (issue 23): graphs + one label set vs the whole store.

A store of a real dataset (jdft2d, the authors' MatDeepLearn JSON in ../shared/datasets) is
built with three label sets (wacsfset1, gmpset1, eadset1), packed (``fp-build pack``) and
served by a local HTTP server (a thread of this process, loopback). Each configuration is
fetched (``builder.publish.fetch_store``, every part's sha256 checked before use) into a fresh
folder ``--repeat`` times; the server counts the body bytes it sends. ``fp-build verify`` of
each fetched store (every record read and checked, hashes recomputed) is timed separately.

Run: ``python bench/bench_fetch.py`` (``make bench``). Writes ``bench/results/fetch.json`` and
``bench/results/fetch.md``. ``--store PATH`` reuses a built store of parts (no build).
"""

from __future__ import annotations

import argparse
import http.server
import json
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

LABEL_SETS = ["wacsfset1", "gmpset1", "eadset1"]


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the packed folder; adds the body bytes of every GET to ``server.sent``."""

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        before = source.tell()
        super().copyfile(source, outputfile)
        self.server.sent += source.tell() - before


def build_store(out: Path, jobs: int) -> Path:
    """jdft2d with the three label sets; returns the store."""
    from fingerprint_pretrain.builder.build import BuildOptions, build_store
    from fingerprint_pretrain.builder.descriptors.registry import storage_codecs

    build_store(
        BuildOptions(
            inputs=[str(DATASETS / "mdl_jdft2d.json.gz")],
            out=str(out),
            fmt="mdl",
            jobs=jobs,
            descriptors=LABEL_SETS,
            descriptor_codec=storage_codecs(LABEL_SETS),
            progress=False,
        )
    )
    return out


def fetch_once(url: str, server, labels: list[str] | None, store: Path) -> tuple[float, int, float]:
    """One fetch of ``labels`` (None: all) into a fresh ``store``: (seconds, bytes sent,
    seconds of verify)."""
    from fingerprint_pretrain.builder.info import verify_store
    from fingerprint_pretrain.builder.publish import fetch_store

    shutil.rmtree(store, ignore_errors=True)
    server.sent = 0
    start = time.perf_counter()
    fetch_store(url, store=store, labels=labels, verify=False, progress=False, log=lambda _: 0)
    seconds = time.perf_counter() - start
    sent = server.sent
    start = time.perf_counter()
    ok, lines = verify_store(store, progress=False)
    verify_seconds = time.perf_counter() - start
    if not ok:
        raise SystemExit(f"fetched store fails verify: {lines[-1]}")
    shutil.rmtree(store)
    return seconds, sent, verify_seconds


def measure(url: str, server, configs: list, repeat: int, work: Path) -> list[dict]:
    """Every configuration ``repeat`` times, interleaved (round robin, so that a burst of load
    from other jobs on the shared CPUs hits all of them alike): bytes, median and fastest
    seconds."""
    runs: dict[int, list] = {i: [] for i in range(len(configs))}
    for _ in range(repeat):
        for i, labels in enumerate(configs):
            runs[i].append(fetch_once(url, server, labels, work / "fetch.lmdb"))
    rows = []
    for i, labels in enumerate(configs):
        seconds, sent, verify_seconds = zip(*runs[i])
        assert len(set(sent)) == 1, sent
        rows.append(
            {
                "labels": "all" if labels is None else labels,
                "bytes": sent[0],
                "seconds": statistics.median(seconds),
                "seconds_min": min(seconds),
                "seconds_all": [round(x, 4) for x in seconds],
                "verify_seconds": statistics.median(verify_seconds),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None, help="A built store of parts.")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS / "fetch.json")
    args = parser.parse_args()

    from fingerprint_pretrain.builder.publish import pack_store
    from fingerprint_pretrain.schemas import read_manifest

    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        work = Path(tmp)
        build_seconds = None
        store = args.store
        if store is None:
            start = time.perf_counter()
            store = build_store(work / "jdft2d.lmdb", args.jobs)
            build_seconds = time.perf_counter() - start
        manifest = read_manifest(store)
        manifest_bytes = (store / "manifest.json").stat().st_size
        pack_store(store, work / "pub" / "jdft2d", log=lambda _: 0)
        handler = lambda *a, **k: CountingHandler(*a, directory=str(work / "pub"), **k)  # noqa: E731
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.sent = 0
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/jdft2d/"
        configs = [[name] for name in LABEL_SETS] + [[], None]
        rows = measure(url, server, configs, args.repeat, work)
        server.shutdown()
    result = {
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "store": {
            "dataset": "jdft2d (mdl_jdft2d.json.gz)",
            "records": manifest["counts"]["records"],
            "atoms": manifest["counts"]["atoms"],
            "parts": {n: e["bytes"] for n, e in manifest["parts"].items()},
            "manifest_bytes": manifest_bytes,
            "build_seconds": build_seconds,
        },
        "repeat": args.repeat,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(report(result))
    print(report(result))


def report(result: dict) -> str:
    whole = next(r for r in result["rows"] if r["labels"] == "all")
    s = result["store"]
    lines = [
        "# Fetching a published store in parts (issue 23)",
        "",
        f"CPU: {result['cpu']} (shared with other jobs); Python {result['python']}. "
        f"Store: {s['dataset']}, {s['records']:,} structures, {s['atoms']:,} atoms, built with "
        f"wacsfset1 + gmpset1 + eadset1; packed with `fp-build pack` and served by a local "
        f"HTTP server (loopback, `http.server` thread). Each fetch goes into a fresh folder "
        f"(`fingerprint_pretrain.builder.publish.fetch_store`: manifest, then the parts asked "
        f"for, each sha256-checked "
        f"before it is moved into place); bytes are counted by the server (bodies only), "
        f"seconds are the median and the fastest of {result['repeat']} fetches per row (rows "
        f"interleaved). `verify s` is `fp-build verify` "
        f"of the fetched store (every record read and checked), timed separately.",
        "",
        "Parts: "
        + ", ".join(f"{n} {b:,} B" for n, b in s["parts"].items())
        + f"; manifest.json {s['manifest_bytes']:,} B.",
        "",
        "| fetched | bytes | of the whole store | seconds (median) | fastest | of the whole "
        "store (fastest) | verify s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        what = (
            "whole store"
            if r["labels"] == "all"
            else "graphs only"
            if not r["labels"]
            else f"graphs + {r['labels'][0]}"
        )
        lines.append(
            f"| {what} | {r['bytes']:,} | {r['bytes'] / whole['bytes']:.1%} | "
            f"{r['seconds']:.3f} | {r['seconds_min']:.3f} | "
            f"{r['seconds_min'] / whole['seconds_min']:.1%} | "
            f"{r['verify_seconds']:.2f} |"
        )
    lines += [
        "",
        "Bytes are exact: the parts asked for plus the manifest, nothing else travels. The "
        "seconds are loopback (copying, sha256, the manifest's parsing and a fixed start-up "
        "per fetch) on shared CPUs, so they are noisy and only roughly follow the bytes; over "
        "a real network, where the transfer dominates, the time should follow the bytes "
        "(not measured here).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
