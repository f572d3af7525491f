"""Benchmarks of the store builder and reader (issue 3).

1. Graph-only build of perov_5 and mp_20_subset with 1 and 2 jobs: structures/s, atoms/s,
   speed-up, peak memory of the main process and of the largest worker, bytes/atom.
2. Neighbour-list engines on the same structures: pymatgen find_points_in_spheres (ours, with
   sorting), ASE, matscipy, vesin; pairs checked equal.
3. CIF parsing alone (the bound of a graph-only build).
4. Reader random access, records/s, LMDB vs Zarr, one process.

Run: ``python bench/bench_build.py`` (``make bench``). Writes ``bench/results/build.json``
and ``bench/results/build.md``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))
csv.field_size_limit(sys.maxsize)

SETS = {
    "perov_5": (DATASETS / "perov_5.csv.gz", ["--id-column", "castelli_id", "-t", "heat_all"]),
    "mp_20_subset": (DATASETS / "mp_20_subset.csv.gz", ["-t", "formation_energy_per_atom"]),
}

# Runs one build in a fresh process. Each LMDB commit is time-stamped (by wrapping the writer)
# so the steady-state rate, after worker start-up and imports, can be told from the end-to-end
# rate: the rate between the commit that passes 20 % of the records and the last one.
BUILD_RUNNER = """
import json, resource, sys, time
import builder.build as b
stamps = []
write = b.LmdbWriter.write
def timed_write(self, items):
    items = list(items)
    write(self, items)
    stamps.append((time.perf_counter(), sum(k.startswith(b"g/") for k, _ in items)))
b.LmdbWriter.write = timed_write
opts = b.BuildOptions(**json.loads(sys.argv[1]))
t = time.perf_counter()
m = b.build_store(opts)
wall = time.perf_counter() - t
done, first = 0, None
for when, n in stamps:
    done += n
    if first is None and done >= 0.2 * m["counts"]["records"]:
        first = (when, done)
steady = (done - first[1]) / (stamps[-1][0] - first[0])
# Worker processes (joblib keeps them alive for reuse): their peak RSS from /proc.
import os
worker_peak = 0.0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        continue
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if int(fields.get("PPid", "0").strip()) == os.getpid() and "VmHWM" in fields:
        worker_peak = max(worker_peak, int(fields["VmHWM"].split()[0]) / 1024)
print(json.dumps({
    "wall_s": wall,
    "steady_structures_per_s": steady,
    "records": m["counts"]["records"],
    "atoms": m["counts"]["atoms"],
    "edges": m["counts"]["edges"],
    "content_hash": m["content_hash"],
    "main_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_peak_rss_mib": worker_peak,
}))
"""


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def bench_build(name: str, jobs: int, work: Path) -> dict:
    src, args = SETS[name]
    targets = [args[i + 1] for i, a in enumerate(args) if a == "-t"]
    id_column = args[args.index("--id-column") + 1] if "--id-column" in args else None
    out = work / f"{name}-j{jobs}.lmdb"
    shutil.rmtree(out, ignore_errors=True)
    opts = {
        "inputs": [str(src)],
        "out": str(out),
        "jobs": jobs,
        "targets": targets,
        "id_column": id_column,
        "progress": False,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", BUILD_RUNNER, json.dumps(opts)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(
        dataset=name,
        jobs=jobs,
        structures_per_s=res["records"] / res["wall_s"],
        atoms_per_s=res["atoms"] / res["wall_s"],
        disk_bytes=disk_bytes(out),
        bytes_per_atom=disk_bytes(out) / res["atoms"],
        edges_per_atom=res["edges"] / res["atoms"],
        store=str(out),
    )
    return res


def load_structures(name: str, limit: int):
    from pymatgen.core import Structure

    src, _ = SETS[name]
    with gzip.open(src, "rt", newline="") as fh:
        rows = [r for _, r in zip(range(limit), csv.DictReader(fh))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        structures = [Structure.from_str(r["cif"], fmt="cif") for r in rows]
        parse_s = time.perf_counter() - t
    return structures, len(rows) / parse_s


def bench_engines(structures, cutoff: float = 8.0) -> dict:
    from pymatgen.optimization.neighbors import find_points_in_spheres

    from builder.neighbors import neighbour_list

    data = [(s.cart_coords.copy(), s.lattice.matrix.copy()) for s in structures]
    pbc = np.array([1, 1, 1])

    def ours(p, c):
        return neighbour_list(p, c, [True] * 3, cutoff).num_edges

    def pymatgen_raw(p, c):
        i, j, off, d = find_points_in_spheres(p, p, cutoff, pbc, c, tol=1e-8)
        return int(((d > 1e-8) & (d < cutoff)).sum())

    engines = {"ours (pymatgen + sort)": ours, "pymatgen find_points_in_spheres": pymatgen_raw}
    try:
        from ase import Atoms
        from ase.neighborlist import neighbor_list

        def ase_nl(p, c):
            return len(neighbor_list("d", Atoms(positions=p, cell=c, pbc=True), cutoff))

        engines["ase neighbor_list"] = ase_nl
    except ImportError:
        pass
    try:
        from matscipy.neighbours import neighbour_list as msp

        def matscipy_nl(p, c):
            return len(
                msp(
                    "d",
                    positions=p,
                    cell=c,
                    pbc=[True] * 3,
                    cutoff=cutoff,
                    numbers=np.ones(len(p), np.int32),
                )
            )

        engines["matscipy neighbour_list"] = matscipy_nl
    except ImportError:
        pass
    try:
        from vesin import NeighborList

        vesin_nl = NeighborList(cutoff=cutoff, full_list=True)

        def vesin_fn(p, c):
            (d,) = vesin_nl.compute(points=p, box=c, periodic=True, quantities="d")
            return int(((d > 0) & (d < cutoff)).sum())

        engines["vesin"] = vesin_fn
    except ImportError:
        pass
    reference = [ours(p, c) for p, c in data]
    out = {}
    for name, fn in engines.items():
        try:
            counts = [fn(p, c) for p, c in data[:5]]  # warm-up and quick check
            t = time.perf_counter()
            counts = [fn(p, c) for p, c in data]
            elapsed = time.perf_counter() - t
        except Exception as err:  # an engine that cannot handle some cell
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        mismatches = sum(a != b for a, b in zip(counts, reference))
        out[name] = {"structures_per_s": len(data) / elapsed, "pair_count_mismatches": mismatches}
    return out


def bench_reader(store: Path, work: Path, n_reads: int = 20000) -> dict:
    from builder.export import export_zarr
    from schemas import open_store

    zarr_path = work / (store.stem + ".zarr")
    shutil.rmtree(zarr_path, ignore_errors=True)
    export_zarr(open_store(store), zarr_path, progress=False)
    out = {}
    for label, path, reads in (("lmdb", store, n_reads), ("zarr", zarr_path, 2000)):
        s = open_store(path)
        rng = np.random.default_rng(0)
        idx = rng.integers(0, len(s), size=reads)
        s[0]
        t = time.perf_counter()
        for i in idx:
            s[int(i)]
        elapsed = time.perf_counter() - t
        out[label] = {"records_per_s": reads / elapsed, "reads": reads}
    return out


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(RESULTS / "build.json"))
    ap.add_argument("--engine-structures", type=int, default=600)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fp-bench-"))
    results = {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "builds": [],
        "engines": {},
        "cif_parse": {},
        "reader": {},
    }
    try:
        for name in SETS:
            for jobs in (1, 2):
                res = bench_build(name, jobs, work)
                print(
                    f"build {name} jobs={jobs}: {res['structures_per_s']:.0f} struct/s, "
                    f"{res['atoms_per_s']:.0f} atoms/s, main RSS {res['main_peak_rss_mib']:.0f}"
                    f" MiB, {res['bytes_per_atom']:.0f} B/atom",
                    flush=True,
                )
                results["builds"].append(res)
            h1, h2 = (r["content_hash"] for r in results["builds"][-2:])
            assert h1 == h2, "1 and 2 jobs must give the same store"
        for name in SETS:
            structures, parse_rate = load_structures(name, args.engine_structures)
            results["cif_parse"][name] = {"structures_per_s": parse_rate}
            results["engines"][name] = bench_engines(structures)
            print(
                f"engines {name}: "
                + ", ".join(
                    f"{k} {v.get('structures_per_s', float('nan')):.0f}/s"
                    for k, v in results["engines"][name].items()
                ),
                flush=True,
            )
        for name in SETS:
            store = work / f"{name}-j1.lmdb"
            results["reader"][name] = bench_reader(store, work)
            print(f"reader {name}: {results['reader'][name]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for b in results["builds"]:
        b.pop("store")
    Path(args.out).write_text(json.dumps(results, indent=1))
    Path(args.out).with_suffix(".md").write_text(markdown(results))
    print(f"wrote {args.out}")


def markdown(r: dict) -> str:
    lines = [
        "# Store builder and reader benchmarks",
        "",
        f"{r['date']}, {r['machine']['cpu']}, {r['machine']['cores']} cores, "
        f"Python {r['machine']['python']}. `python bench/bench_build.py`.",
        "",
        "## Graph-only build (8 Å, complete neighbour lists)",
        "",
        "End to end (one fresh process per build: start-up, worker spawn and imports, CSV "
        "counting and hashing, finalisation included) and steady state (records per second "
        "between the commit passing 20 % of the records and the last commit).",
        "",
        "| dataset | jobs | structures/s | atoms/s | speed-up | steady-state structures/s | "
        "steady speed-up | main peak RSS MiB | worker peak RSS MiB | bytes/atom | edges/atom |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base, steady = {}, {}
    for b in r["builds"]:
        if b["jobs"] == 1:
            base[b["dataset"]] = b["structures_per_s"]
            steady[b["dataset"]] = b["steady_structures_per_s"]
        lines.append(
            f"| {b['dataset']} ({b['records']:,} structures) | {b['jobs']} | "
            f"{b['structures_per_s']:.0f} | {b['atoms_per_s']:,.0f} | "
            f"{b['structures_per_s'] / base[b['dataset']]:.2f}× | "
            f"{b['steady_structures_per_s']:.0f} | "
            f"{b['steady_structures_per_s'] / steady[b['dataset']]:.2f}× | "
            f"{b['main_peak_rss_mib']:.0f} | "
            f"{b['worker_peak_rss_mib']:.0f} | {b['bytes_per_atom']:.0f} | "
            f"{b['edges_per_atom']:.0f} |"
        )
    lines += [
        "",
        "CIF parsing alone (pymatgen, one core): "
        + ", ".join(
            f"{k} {v['structures_per_s']:.0f} structures/s" for k, v in r["cif_parse"].items()
        ),
        "",
    ]
    lines += [
        "## Neighbour-list engines (8 Å, same structures, one core)",
        "",
        "| dataset | engine | structures/s | pair-count mismatches vs ours |",
        "|---|---|---|---|",
    ]
    for ds, engines in r["engines"].items():
        for name, v in engines.items():
            if "error" in v:
                lines.append(f"| {ds} | {name} | error: {v['error']} | |")
            else:
                lines.append(
                    f"| {ds} | {name} | {v['structures_per_s']:.0f} | "
                    f"{v['pair_count_mismatches']} |"
                )
    lines += [
        "",
        "## Reader: random access, one process",
        "",
        "| dataset | LMDB records/s | Zarr records/s |",
        "|---|---|---|",
    ]
    for ds, v in r["reader"].items():
        lines.append(
            f"| {ds} | {v['lmdb']['records_per_s']:,.0f} | {v['zarr']['records_per_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
