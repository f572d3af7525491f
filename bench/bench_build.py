"""Benchmarks of the store builder and reader (issue 3).

1. Graph-only build of perov_5, mp_20_subset and mp_relaxed_10k (10,000 rows spread evenly
   over the MP Relaxed subset, written into the temporary work folder) with 1 and 2 jobs:
   structures/s, atoms/s, speed-up, peak memory of the main process and of the largest worker,
   bytes/atom; the steady-state rate (CPU time too), the fixed costs apart (pymatgen and
   builder imports, the worker pool's start, inputs' row count and hash, provenance,
   finalisation) and the 2-job scaling implied by CPU times, against the CIF-parse bound
   (issue 21 goal 4).
2. Neighbour-list engines on the same structures: pymatgen find_points_in_spheres (ours, with
   sorting), ASE, matscipy, vesin; pairs checked equal.
3. CIF parsing alone (the bound of a graph-only build).
4. Reader random access, records/s, LMDB vs Zarr, one process, graph-only stores and a store
   with two label sets (wacsfset1 raw, eadset1 compressed); with ``--baseline REV`` also the
   reader of an earlier revision (its ``schemas`` package, extracted with ``git archive``) on
   the same stores in the same run, interleaved, e.g. to measure what the records' integrity
   checks cost.

Run: ``python bench/bench_build.py`` (``make bench``). Writes ``bench/results/build.json``
and ``bench/results/build.md`` (the previous ``build.md`` stays below the new results, marked
earlier). ``--rates-only`` skips part 2 and the per-stage breakdown (e.g. ``--build-only
--rates-only --datasets mp_20_subset,mp_relaxed_10k`` for goal 4 alone). ``--reader-only``
runs part 4 alone (building the stores it reads) and replaces only the reader section of
``build.json``. ``--parts [--baseline REV]``
compares a store of parts with the same records as one ``data.mdb`` (issue 23), read by the
current reader and by REV's (default 28d4264, the last single-file revision), and writes
``bench/results/parts_reader.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))
csv.field_size_limit(sys.maxsize)

SETS = {
    "perov_5": (DATASETS / "perov_5.csv.gz", ["--id-column", "castelli_id", "-t", "heat_all"]),
    "mp_20_subset": (DATASETS / "mp_20_subset.csv.gz", ["-t", "formation_energy_per_atom"]),
    # written into the work folder by materialise() (never committed): 10,000 rows spread
    # evenly over the 46,765 of the MP Relaxed subset, shuffled (id material_id, no targets):
    # the size of store users build, where a build's fixed costs (imports, pool start) are
    # amortised
    "mp_relaxed_10k": (None, []),
}
# derived dataset -> (source file, rows taken evenly over it)
DERIVED = {"mp_relaxed_10k": (DATASETS / "mp_relaxed_mpf_subset.csv.gz", 10_000)}
# the datasets the reader benchmark reads (graph-only stores of these, one labelled store)
READER_SETS = ("perov_5", "mp_20_subset")
# the store size the fixed-cost projection is made for: the whole MP Relaxed subset
PROJECTED_STRUCTURES = 46_765


def spread_indices(total: int, n: int) -> list[int]:
    """``min(n, total)`` row indices spread evenly over ``range(total)``: ``i * total // n``."""
    n = min(n, total)
    return [i * total // n for i in range(n)]


def spread_rows(src: Path, dst: Path, n: int, seed: int = 0) -> int:
    """Write the header and ``n`` rows of the CSV ``src`` (``.csv.gz``), spread evenly over
    it (:func:`spread_indices`), to ``dst`` (``.csv.gz``), rows byte-equal as CSV fields, in
    an order shuffled with ``seed``: the source is sorted by id, and ids go with structure
    sizes, so in file order a build's first fifth is not like the rest and its steady-state
    window would not stand for the whole. Returns the number of rows written."""
    with gzip.open(src, "rt", newline="") as fh:
        total = sum(1 for _ in csv.reader(fh)) - 1
    keep = set(spread_indices(total, n))
    with gzip.open(src, "rt", newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows)
        kept = [row for i, row in enumerate(rows) if i in keep]
    random.Random(seed).shuffle(kept)
    with gzip.open(dst, "wt", newline="") as out:
        csv.writer(out).writerows([header, *kept])
    return len(kept)


def materialise(names, work: Path) -> None:
    """Write each derived dataset of ``names`` into ``work`` once and point :data:`SETS` at
    it."""
    for name in names:
        if name in DERIVED and SETS[name][0] is None:
            src, n = DERIVED[name]
            dst = work / f"{name}.csv.gz"
            spread_rows(src, dst, n)
            SETS[name] = (dst, SETS[name][1])


# Runs one build in a fresh process. Each LMDB commit is stamped (wall clock, the main
# process's CPU and its workers' CPU, records so far; by wrapping the writer) so the steady-state
# rate, after worker start-up and imports, can be told from the end-to-end rate: the rate
# between the commit that passes 20 % of the records and the last one (steady_rates()). The
# serial stages' CPU (inputs' row count and hash, provenance, finalisation) and the builder's
# own import are timed by wrapping them too; getattr keeps the runner usable on older code.
BUILD_RUNNER = """
import time
c0 = time.process_time()  # interpreter start-up
import json, os, resource, sys
import fingerprint_pretrain.builder.build as b
builder_import = time.process_time() - c0
opts = b.BuildOptions(**json.loads(sys.argv[1]))
tick = os.sysconf("SC_CLK_TCK")
def stat(pid):
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()
def children():
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if int(stat(pid)[1]) == os.getpid():
                    out.append(pid)
            except OSError:
                pass
    return out
kids = []
def children_cpu():
    # the worker processes' CPU seconds so far (joblib keeps them alive for reuse)
    global kids
    if opts.jobs == 1:
        return 0.0
    for _ in range(2):
        try:
            if len(kids) < max(opts.jobs, 1):  # (re)scan until every worker is there
                kids = children()
            return sum(int(f[11]) + int(f[12]) for f in map(stat, kids)) / tick
        except OSError:  # a worker was replaced: find them again
            kids = []
    return 0.0
stamps = []
write = b.LmdbWriter.write
def timed_write(self, items):
    items = list(items)
    write(self, items)
    stamps.append((time.perf_counter(), time.process_time(), children_cpu(),
                   sum(k.startswith(b"g/") for k, _ in items)))
b.LmdbWriter.write = timed_write
stages = {}
def timed(mod, name, label):
    f = getattr(mod, name, None)
    if f is None:
        return
    def w(*a, **k):
        c = time.process_time()
        try:
            return f(*a, **k)
        finally:
            stages[label] = stages.get(label, 0.0) + time.process_time() - c
    setattr(mod, name, w)
# the main process's CPU inside the records loop (dispatch, results, commits): what runs
# alongside the workers; the rest of its CPU time (inputs' hash and row count, finalisation)
# is serial
timed(b, "_write_records", "records_loop")
timed(b, "_open_inputs", "open_inputs")
timed(b, "file_sha256", "input_sha256")
timed(b, "environment", "provenance")
timed(b, "_finalise", "finalise")
timed(b, "_put_in_place", "put_in_place")
t, c = time.perf_counter(), time.process_time()
m = b.build_store(opts)
wall, cpu = time.perf_counter() - t, time.process_time() - c
# Worker processes: their peak RSS and CPU time from /proc.
worker_peak = worker_cpu = 0.0
for pid in children():
    try:
        status = open(f"/proc/{pid}/status").read()
        f = stat(pid)
    except OSError:
        continue
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmHWM" in fields:
        worker_peak = max(worker_peak, int(fields["VmHWM"].split()[0]) / 1024)
        worker_cpu += (int(f[11]) + int(f[12])) / tick
print(json.dumps({
    "wall_s": wall,
    "main_cpu_s": cpu,
    "main_loop_cpu_s": stages.pop("records_loop", 0.0),
    "worker_cpu_s": worker_cpu,
    "builder_import_cpu_s": builder_import,
    "stages_cpu_s": stages,
    "stamps": stamps,
    "records": m["counts"]["records"],
    "atoms": m["counts"]["atoms"],
    "edges": m["counts"]["edges"],
    "content_hash": m["content_hash"],
    "main_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_peak_rss_mib": worker_peak,
}))
"""


def steady_rates(stamps: list, records: int, start: float = 0.2) -> dict:
    """Steady-state rates from a build's commit stamps ``(wall s, main CPU s, workers' CPU s,
    records in the commit)``: records per wall second and per CPU second (main + workers)
    between the first commit at which ``start`` of the ``records`` are written and the last
    commit of records (records committed in between / time in between; writes without records,
    such as finalisation's, are left out). NaN where no time passed in between."""
    done, first, last = 0, None, None
    for stamp in stamps:
        if not stamp[3]:  # not a chunk's commit (the build's configuration, finalisation)
            continue
        done += stamp[3]
        last = (stamp, done)
        if first is None and done >= start * records:
            first = last
    (wall0, main0, work0, _), done0 = first
    (wall1, main1, work1, _), done1 = last
    n, wall, cpu = done1 - done0, wall1 - wall0, (main1 - main0) + (work1 - work0)
    return {
        "steady_structures_per_s": n / wall if wall > 0 else float("nan"),
        "steady_cpu_structures_per_s": n / cpu if cpu > 0 else float("nan"),
        "steady_records": n,
    }


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def run_build_process(
    runner: str, name: str, out: Path, jobs: int, work: Path, package: Path | None = None
) -> dict:
    """Build dataset ``name`` into ``out`` (replaced) with the script ``runner`` in a fresh
    process (one thread), of the current code or of ``package``; the JSON its last line prints."""
    src, args = SETS[name]
    shutil.rmtree(out, ignore_errors=True)
    opts = {
        "inputs": [str(src)],
        "out": str(out),
        "jobs": jobs,
        "targets": [args[i + 1] for i, a in enumerate(args) if a == "-t"],
        "id_column": args[args.index("--id-column") + 1] if "--id-column" in args else None,
        "progress": False,
    }
    # cwd outside the repository: its folders would shadow a baseline package
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(package or REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", runner, json.dumps(opts)],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_build(name: str, jobs: int, work: Path, package: Path | None = None) -> dict:
    """One build in a fresh process: of the current code, or of the ``package`` tree that
    :func:`extract_package` made from an earlier revision."""
    out = work / f"{name}-j{jobs}{'-base' if package else ''}.lmdb"
    res = run_build_process(BUILD_RUNNER, name, out, jobs, work, package)
    res.update(steady_rates(res.pop("stamps"), res["records"]))
    res.update(
        dataset=name,
        jobs=jobs,
        structures_per_s=res["records"] / res["wall_s"],
        cpu_structures_per_s=res["records"] / (res["main_cpu_s"] + res["worker_cpu_s"]),
        atoms_per_s=res["atoms"] / res["wall_s"],
        disk_bytes=disk_bytes(out),
        bytes_per_atom=disk_bytes(out) / res["atoms"],
        edges_per_atom=res["edges"] / res["atoms"],
        store=str(out),
    )
    return res


def extract_package(rev: str, work: Path) -> Path:
    """The ``fingerprint_pretrain`` package (builder, schemas) of git revision ``rev`` as an
    importable tree under ``work`` (for ``PYTHONPATH``)."""
    out = work / f"package-{rev}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "fingerprint_pretrain", "builder", "schemas"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    for name in ("builder", "schemas"):
        (out / name).rename(out / "fingerprint_pretrain" / name)
    return out


def cif_sample(name: str, n: int) -> list[str]:
    """``n`` CIF texts spread evenly over the dataset (every k-th row)."""
    src, _ = SETS[name]
    with gzip.open(src, "rt", newline="") as fh:
        rows = [r["cif"] for r in csv.DictReader(fh)]
    step = max(len(rows) // n, 1)
    return rows[::step][:n]


def time_parse(texts: list[str], check_cif: bool = True) -> dict:
    """CIF parsing alone, one core, as the builder calls it (``CifParser.from_str(text)
    .parse_structures(primitive=False)``; ``check_cif=False`` skips pymatgen's composition
    check, which only warns): structures per second of CPU time and of wall time."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t, c = time.perf_counter(), time.process_time()
        for text in texts:
            CifParser.from_str(text, check_cif=check_cif).parse_structures(primitive=False)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"structures_per_s": len(texts) / cpu, "wall_structures_per_s": len(texts) / wall}


IMPORT_RUNNER = """
import json, time
c = time.process_time()
from pymatgen.io.cif import CifParser
print(json.dumps({"import_cpu_s": time.process_time() - c}))
"""


def time_import() -> float:
    """CPU seconds a fresh process spends importing ``pymatgen.io.cif`` (paid once by every
    process that parses: the build with ``--jobs 1``, each worker with more)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_RUNNER], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])["import_cpu_s"]


# Starts the builder's worker pool (run_parallel, loky, as a build does) in a fresh process and
# gives it 2 x jobs tasks of one structure each (the dataset's first items): every worker
# starts, imports the builder and pymatgen (its first structure), and stays alive, so its CPU
# time is in /proc. Their sum, less the few structures' own work, is the pool's start-up cost.
POOL_RUNNER = """
import itertools, json, os, sys, time
import fingerprint_pretrain.builder.build as b
from dataclasses import replace
opts = replace(b.BuildOptions(**json.loads(sys.argv[1])), chunk_size=1)
opened, target_names = b._open_inputs(opts)
_, tasks = b._chunk_tasks(opts, opened, 0, opts.label_config(), target_names)
tasks = list(itertools.islice(tasks, 2 * opts.jobs))
c = time.process_time()
results = list(b.run_parallel(b.process_chunk, tasks, opts.jobs, opts.backend, None))
main_cpu = time.process_time() - c
tick = os.sysconf("SC_CLK_TCK")
worker_cpu, workers = 0.0, 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if int(f[1]) == os.getpid():
        worker_cpu += (int(f[11]) + int(f[12])) / tick
        workers += 1
print(json.dumps({"main_cpu_s": main_cpu, "children_cpu_s": worker_cpu, "children": workers,
                  "items": len(tasks), "jobs": opts.jobs}))
"""


def pool_start(name: str, work: Path, jobs: int = 2) -> dict:
    """CPU seconds to start ``jobs`` workers on dataset ``name`` (:data:`POOL_RUNNER`): the main
    process's (spawning, dispatch) and the children's (workers and loky's resource tracker;
    each worker's interpreter, imports and first structure)."""
    return run_build_process(POOL_RUNNER, name, work / f"{name}-pool.lmdb", jobs, work)


def fixed_costs(one: dict, two: dict, parse_rate: float, pool: dict | None, imp: float) -> dict:
    """What the steady state leaves out, for a dataset's ``--jobs 1`` and ``--jobs 2`` builds
    (:func:`bench_build` results with :func:`steady_rates`), against the CIF-parse bound
    ``parse_rate`` (structures per CPU second).

    Fixed CPU of a build F = total CPU T - N / r (r: steady-state CPU rate; the rest of its CPU
    is what it pays once however many structures: imports, pool start, provenance, and the
    first and last commits' ramp). The end-to-end ratio at N structures is then
    N / (F + N / r) / parse_rate; projected to :data:`PROJECTED_STRUCTURES` with the same F and
    r. Steady-state 2-core scaling: 2 r2 / r1 (at steady state all CPU, workers and main loop,
    spreads over both cores). ``pool``: :func:`pool_start`'s result; ``imp``: pymatgen's
    import in a fresh process (CPU s); both shown as parts of F, not subtracted from it."""
    n = one["records"]
    t1 = one["main_cpu_s"] + one["worker_cpu_s"]
    c2 = two["main_cpu_s"] + two["worker_cpu_s"]
    r1, r2 = one["steady_cpu_structures_per_s"], two["steady_cpu_structures_per_s"]
    f1, f2 = t1 - n / r1, c2 - n / r2
    big = PROJECTED_STRUCTURES
    stages = one.get("stages_cpu_s", {})
    out = {
        "structures": n,
        "parse_per_s": parse_rate,
        "end_to_end_ratio": n / t1 / parse_rate,
        "steady_ratio": r1 / parse_rate,
        "fixed_cpu_s_jobs1": f1,
        "fixed_cpu_s_jobs2": f2,
        "fixed_share_jobs1": f1 / t1,
        "projected_structures": big,
        "projected_ratio": big / (f1 + big / r1) / parse_rate,
        "steady_scaling": 2 * r2 / r1,
        "pymatgen_import_cpu_s": imp,
        "builder_import_cpu_s": one.get("builder_import_cpu_s"),
        "open_inputs_cpu_s": stages.get("open_inputs"),
        "input_sha256_cpu_s": stages.get("input_sha256"),
        "provenance_cpu_s": stages.get("provenance"),
        "finalise_cpu_s": stages.get("finalise", 0.0) + stages.get("put_in_place", 0.0)
        if "finalise" in stages
        else None,
    }
    if pool is not None:
        work = pool["items"] / r1  # the pool's structures, at the steady 1-job rate
        out["pool_start_main_cpu_s"] = pool["main_cpu_s"]
        out["pool_start_per_worker_cpu_s"] = (pool["children_cpu_s"] - work) / pool["jobs"]
    return out


def scaling(one: dict, two: dict) -> dict:
    """``--jobs 2`` against ``--jobs 1`` from CPU time alone (wall clock on shared cores says
    nothing). ``T1``: total CPU of the 1-job build (one core: its wall time on a free core).
    With 2 jobs, ``C2`` = main process + workers; its serial part ``S`` is the main process's
    CPU outside the records loop (inputs' hash and row count, finalisation); the rest (workers,
    and the main process's dispatch, unpickling and commits, which run alongside them) spreads
    over both cores. Implied wall time on 2 free cores ``S + (C2 - S) / 2`` (Amdahl), implied
    scaling ``T1 / (S + (C2 - S) / 2)``; CPU efficiency ``T1 / C2``."""
    t1 = one["main_cpu_s"] + one["worker_cpu_s"]
    c2 = two["main_cpu_s"] + two["worker_cpu_s"]
    serial = two["main_cpu_s"] - two["main_loop_cpu_s"]
    n = two["records"]
    return {
        "t1_cpu_s": t1,
        "c2_cpu_s": c2,
        "serial_cpu_s": serial,
        "main_loop_cpu_s": two["main_loop_cpu_s"],
        "worker_cpu_s": two["worker_cpu_s"],
        "t1_us_per_structure": t1 / n * 1e6,
        "c2_us_per_structure": c2 / n * 1e6,
        "main_us_per_structure": two["main_cpu_s"] / n * 1e6,
        "cpu_efficiency": t1 / c2,
        "parent_share": two["main_cpu_s"] / c2,
        "serial_share": serial / c2,
        "implied_scaling": t1 / (serial + (c2 - serial) / 2),
    }


# One instrumented --jobs 1 build: the CPU time of each stage (exclusive of the stages it
# calls), by wrapping the stage functions; the first parse includes pymatgen's import.
BREAKDOWN_RUNNER = """
import functools, json, sys, time
T = time.process_time
import fingerprint_pretrain.builder.build as b
import fingerprint_pretrain.builder.graph as g
import fingerprint_pretrain.builder.structure as st
acc, stack = {}, []
def wrap(mod, name, label):
    f = getattr(mod, name, None)
    if f is None:
        return
    @functools.wraps(f)
    def w(*a, **k):
        t = T(); stack.append(0.0)
        try:
            return f(*a, **k)
        finally:
            d = T() - t; inner = stack.pop()
            acc[label] = acc.get(label, 0.0) + d - inner
            if stack:
                stack[-1] += d
    setattr(mod, name, w)
wrap(st, "_parse_cif", "CIF parse (pymatgen) and arrays")
wrap(g, "neighbour_list", "neighbour lists")
wrap(g, "neighbour_batch", "neighbour lists")
wrap(b, "graph_record", "graph checks and casts")
wrap(b, "graph_records", "graph checks and casts")
wrap(g, "sorted_edges", "neighbour lists")
wrap(b, "encode_record", "record encoding")
wrap(b, "record_digest", "record digest")
wrap(b, "encode_graph_record", "record encoding and digest")
wrap(b, "process_chunk", "other per-structure work in the worker")
wrap(b.LmdbWriter, "write", "LMDB writes")
wrap(b, "_write_records", "main loop (reading the CSV, bookkeeping)")
wrap(b, "_open_inputs", "opening inputs (CSV row count)")
wrap(b, "file_sha256", "input sha256")
wrap(b, "_finalise", "finalisation")
wrap(b, "_put_in_place", "finalisation")
wrap(b.LmdbWriter, "close", "finalisation")
wrap(b, "build_store", "other fixed costs")
opts = b.BuildOptions(**json.loads(sys.argv[1]))
t = T()
m = b.build_store(opts)
print(json.dumps({"total_s": T() - t, "records": m["counts"]["records"], "stages_s": acc}))
"""


def breakdown(name: str, work: Path) -> dict:
    """Per-structure CPU time of each stage of a ``--jobs 1`` build of ``name``."""
    out = work / f"{name}-breakdown.lmdb"
    res = run_build_process(BREAKDOWN_RUNNER, name, out, 1, work)
    shutil.rmtree(out, ignore_errors=True)
    n = res["records"]
    res["us_per_structure"] = {k: v / n * 1e6 for k, v in res["stages_s"].items()}
    return res


def load_average() -> str:
    """``uptime``'s load averages (1, 5, 15 min), e.g. "6.31, 4.77, 2.96"."""
    return ", ".join(Path("/proc/loadavg").read_text().split()[:3])


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
    from fingerprint_pretrain.builder.neighbors import neighbour_list
    from pymatgen.optimization.neighbors import find_points_in_spheres

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
    # the builder's way: one batch per chunk of 32 structures (builder.neighbors.neighbour_lists)
    from fingerprint_pretrain.builder.neighbors import neighbour_lists

    t = time.process_time()
    counts = []
    for k in range(0, len(data), 32):
        chunk = [(p, c, [True] * 3) for p, c in data[k : k + 32]]
        counts += [nl.num_edges for nl in neighbour_lists(chunk, cutoff)]
    out["ours, batches of 32 (as the builder)"] = {
        "structures_per_s": len(data) / (time.process_time() - t),
        "pair_count_mismatches": sum(a != b for a, b in zip(counts, reference)),
    }
    for name, fn in engines.items():
        try:
            counts = [fn(p, c) for p, c in data[:5]]  # warm-up and quick check
            t = time.process_time()
            counts = [fn(p, c) for p, c in data]
            elapsed = time.process_time() - t
        except Exception as err:  # an engine that cannot handle some cell
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        mismatches = sum(a != b for a, b in zip(counts, reference))
        out[name] = {"structures_per_s": len(data) / elapsed, "pair_count_mismatches": mismatches}
    return out


# Times random reads in a fresh process (the reader's own imports only): the reader is the
# current ``fingerprint_pretrain.schemas`` or a baseline revision's ``schemas`` (revisions
# before the one install namespace used the bare name; PYTHONPATH = its extracted archive). The
# rate is records per second of the process's CPU time: on a machine shared with other jobs,
# wall-clock rates of the same code vary by +-50 % between runs (both are recorded).
READ_RUNNER = """
import importlib, json, sys, time
import numpy as np
path, reads, repeats, module = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
open_store = importlib.import_module(module).open_store
s = open_store(path)
idx = np.random.default_rng(0).integers(0, len(s), size=reads)
for i in range(len(s)):  # warm: every page and chunk in the page cache, every handle open
    s[i]
best = wall = 0.0
for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    for i in idx:
        s[int(i)]
    best = max(best, reads / (time.process_time() - c))
    wall = max(wall, reads / (time.perf_counter() - t))
print(json.dumps({"records_per_s": best, "wall_records_per_s": wall, "reads": reads}))
"""


def time_reads(path: Path, reads: int, pythonpath: Path, repeats: int = 2) -> dict:
    """Records/s of the reader at ``pythonpath`` (:data:`REPO`: the current one)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(pythonpath)}
    module = "fingerprint_pretrain.schemas" if pythonpath == REPO else "schemas"
    proc = subprocess.run(
        [sys.executable, "-c", READ_RUNNER, str(path), str(reads), str(repeats), module],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def extract_baseline(rev: str, work: Path) -> Path:
    """The ``schemas`` package of git revision ``rev``, extracted under ``work``."""
    out = work / f"baseline-{rev}"
    out.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "schemas"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def bench_reader(
    store: Path, work: Path, baseline: Path | None = None, n_reads: int = 20000, rounds: int = 5
) -> dict:
    """Random-access records/s of ``store`` and its Zarr twin; with ``baseline``, also of the
    baseline's reader, alternating current and baseline ``rounds`` times (best kept)."""
    from fingerprint_pretrain.builder.export import export_zarr
    from fingerprint_pretrain.schemas import open_store

    zarr_path = work / (store.stem + ".zarr")
    shutil.rmtree(zarr_path, ignore_errors=True)
    export_zarr(open_store(store), zarr_path, progress=False)
    readers = {"current": REPO} | ({"baseline": baseline} if baseline else {})
    out: dict = {label: {} for label in readers}
    out["crc32"] = crc_cost(store)
    for backend, path, reads in (("lmdb", store, n_reads), ("zarr", zarr_path, n_reads // 10)):
        for _ in range(rounds):
            for label, pythonpath in readers.items():
                got = time_reads(path, reads, pythonpath)
                old = out[label].get(backend)
                if old is None or got["records_per_s"] > old["records_per_s"]:
                    out[label][backend] = got
    return out


def crc_cost(store: Path) -> dict:
    """CPU time of ``zlib.crc32`` over every record's bytes (graph + label blobs), per record:
    the integrity check's own cost, best of 3 passes."""
    import zlib

    from fingerprint_pretrain.schemas.lmdb_store import open_env_readonly

    manifest = json.loads((store / "manifest.json").read_text())
    files = [e["file"] for e in manifest.get("parts", {}).values()] or ["data.mdb"]
    values = []
    for file in files:  # this process's handles (export opened them)
        txn = open_env_readonly(os.path.realpath(store / file))
        values += [bytes(v) for k, v in txn.cursor() if k[:2] in (b"g/", b"d/")]
    n_records = json.loads((store / "manifest.json").read_text())["counts"]["records"]
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        for value in values:
            zlib.crc32(value)
        best = min(best, time.process_time() - t)
    total = sum(len(v) for v in values)
    return {
        "us_per_record": best / n_records * 1e6,
        "bytes_per_record": total / n_records,
        "blobs": len(values),
        "gb_per_s": total / best / 1e9,
    }


def build_reader_store(name: str, work: Path, descriptors: list[str]) -> Path:
    """A store of dataset ``name`` for the reader benchmark (graph only, or with labels)."""
    from fingerprint_pretrain.builder.build import BuildOptions, build_store

    src, args = SETS[name]
    suffix = "-".join(["graphs", *descriptors])
    out = work / f"{name}-{suffix}.lmdb"
    shutil.rmtree(out, ignore_errors=True)
    build_store(
        BuildOptions(
            inputs=[str(src)],
            out=str(out),
            targets=[args[i + 1] for i, a in enumerate(args) if a == "-t"],
            id_column=args[args.index("--id-column") + 1] if "--id-column" in args else None,
            descriptors=descriptors,
            progress=False,
        )
    )
    return out


def run_reader(work: Path, baseline_rev: str | None, stores: dict[str, Path] | None) -> dict:
    """Part 4 on graph-only stores of the :data:`READER_SETS` datasets (``stores``, else
    built) and on mp_20_subset with two label sets."""
    baseline = extract_baseline(baseline_rev, work) if baseline_rev else None
    cases = {}  # label -> (store, LMDB reads)
    for name in (n for n in SETS if n in READER_SETS):
        cases[name] = ((stores or {}).get(name) or build_reader_store(name, work, []), 20000)
    labelled = build_reader_store("mp_20_subset", work, ["wacsfset1", "eadset1"])
    cases["mp_20_subset + wacsfset1, eadset1"] = (labelled, 4000)
    results = {}
    for label, (store, reads) in cases.items():
        results[label] = bench_reader(store, work, baseline, n_reads=reads)
        print(f"reader {label}: {results[label]}", flush=True)
    return {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "baseline": baseline_rev,
        "stores": results,
    }


def single_file_copy(store: Path, out: Path) -> Path:
    """``store`` (of parts) as the single-file store the builder wrote before parts (schema
    1.0): every part's keys in one ``data.mdb``, the manifest without ``parts``."""
    import lmdb
    from fingerprint_pretrain.schemas.lmdb_store import close_env
    from fingerprint_pretrain.schemas.manifest import write_json_atomic

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    manifest = json.loads((store / "manifest.json").read_text())
    close_env(os.path.realpath(store))
    env = lmdb.open(str(out), subdir=True, map_size=1 << 34)
    for entry in manifest.pop("parts").values():
        src = lmdb.open(str(store / entry["file"]), subdir=False, readonly=True, lock=False)
        with src.begin() as read, env.begin(write=True) as txn:
            for key, value in read.cursor():
                txn.put(bytes(key), bytes(value))
        src.close()
    env.close()
    (out / "lock.mdb").unlink()
    manifest["schema_version"] = "1.0"
    write_json_atomic(out / "manifest.json", manifest)
    return out


def run_parts(work: Path, baseline_rev: str, rounds: int = 5) -> dict:
    """Store of parts vs single file (issue 23): random reads of a store of parts and of the
    same records as one ``data.mdb``, by the current reader and by the reader of
    ``baseline_rev`` (the single-file reader of before parts), alternating in one run."""
    baseline = extract_baseline(baseline_rev, work)
    cases = {
        "perov_5": (build_reader_store("perov_5", work, []), 20000),
        "mp_20_subset": (build_reader_store("mp_20_subset", work, []), 20000),
        "mp_20_subset + wacsfset1, eadset1": (
            build_reader_store("mp_20_subset", work, ["wacsfset1", "eadset1"]),
            4000,
        ),
    }
    results = {}
    for label, (parts, reads) in cases.items():
        single = single_file_copy(parts, work / f"{parts.stem}-single.lmdb")
        runs = {
            "parts": (parts, REPO),
            "single": (single, REPO),
            "baseline_single": (single, baseline),
        }
        best: dict[str, dict] = {}
        for _ in range(rounds):
            for name, (path, pythonpath) in runs.items():
                got = time_reads(path, reads, pythonpath)
                if name not in best or got["records_per_s"] > best[name]["records_per_s"]:
                    best[name] = got
        best["ratio_parts_to_single"] = (
            best["parts"]["records_per_s"] / best["single"]["records_per_s"]
        )
        best["ratio_parts_to_baseline_single"] = (
            best["parts"]["records_per_s"] / best["baseline_single"]["records_per_s"]
        )
        results[label] = best
        print(f"parts {label}: {best}", flush=True)
    return {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "baseline": baseline_rev,
        "rounds": rounds,
        "stores": results,
    }


def parts_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Reader: store of parts vs single file (issue 23)",
        "",
        f"{r['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}. "
        f"`python bench/bench_build.py --parts --baseline {r['baseline']}`. The same records as "
        "a store of parts (graphs.mdb + one labels-<set>.mdb per set) and as one data.mdb "
        f"(schema 1.0, as stores were before parts), read by the current reader and by the "
        f"reader of {r['baseline']} (single file only); records per second of the reading "
        f"process's CPU time, best of {r['rounds']} alternating rounds, each a fresh process "
        "that reads every record once to warm up, then 20,000 random reads (4,000 with "
        "labels) twice. Goal: parts within 10 % of the single file.",
        "",
        "| store | parts records/s | single file (current reader) | ratio | single file "
        f"({r['baseline']} reader) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in r["stores"].items():
        lines.append(
            f"| {name} | {v['parts']['records_per_s']:,.0f} | "
            f"{v['single']['records_per_s']:,.0f} | {v['ratio_parts_to_single']:.2f} | "
            f"{v['baseline_single']['records_per_s']:,.0f} | "
            f"{v['ratio_parts_to_baseline_single']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(RESULTS / "build.json"))
    ap.add_argument("--engine-structures", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (best kept)")
    ap.add_argument(
        "--datasets", default=",".join(SETS), help="comma-separated subset of " + ", ".join(SETS)
    )
    ap.add_argument(
        "--parse-structures", type=int, default=600, help="CIFs timed for the parse bound"
    )
    ap.add_argument(
        "--build-only",
        action="store_true",
        help="run parts 1-3 only; keep the reader section of --out",
    )
    ap.add_argument(
        "--rates-only",
        action="store_true",
        help="builds, parse bound and fixed costs only: skip the per-stage breakdown and the "
        "neighbour-list engines",
    )
    ap.add_argument(
        "--reader-only",
        action="store_true",
        help="run only the reader benchmark; replace only the reader section of --out",
    )
    ap.add_argument(
        "--baseline",
        metavar="REV",
        help="also time the reader (--reader-only) or the builder (builds) of git revision REV "
        "on the same inputs, interleaved",
    )
    ap.add_argument(
        "--parts",
        action="store_true",
        help="run only the store-of-parts vs single-file reader comparison (needs --baseline: "
        "a revision from before parts); writes parts_reader.json/.md",
    )
    args = ap.parse_args()
    for name in set(SETS) - set(args.datasets.split(",")):
        del SETS[name]
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fp-bench-"))
    if args.parts:
        try:
            parts = run_parts(work, args.baseline or "28d4264")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (RESULTS / "parts_reader.json").write_text(json.dumps(parts, indent=1))
        (RESULTS / "parts_reader.md").write_text(parts_markdown(parts))
        print(f"wrote {RESULTS / 'parts_reader.json'}")
        return
    if args.reader_only:
        results = json.loads(Path(args.out).read_text())
        try:
            results["reader"] = run_reader(work, args.baseline, None)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        write_results(results, Path(args.out))
        return
    results = {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python bench/bench_build.py", *sys.argv[1:]]),
        "rounds": args.rounds,
        "baseline": args.baseline,
        "load_before": load_average(),
        "builds": [],
        "engines": {},
        "cif_parse": {},
        "breakdown": {},
        "reader": {},
    }
    try:
        run_builds(results, work, args)
        results["load_after"] = load_average()
        if args.build_only and Path(args.out).exists():
            results["reader"] = json.loads(Path(args.out).read_text()).get("reader", {})
        else:
            stores = {name: work / f"{name}-j1.lmdb" for name in SETS}
            results["reader"] = run_reader(work, None, stores)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for b in results["builds"]:
        b.pop("store")
    write_results(results, Path(args.out), keep_earlier=True)


def keep_best(best: dict, key: tuple, got: dict, rate: str = "structures_per_s") -> None:
    if key not in best or got[rate] > best[key][rate]:
        best[key] = got


def run_builds(results: dict, work: Path, args) -> None:
    """Parts 1-3, interleaved over ``args.rounds`` rounds (best kept): per dataset, CIF parsing
    alone, the worker pool's start-up, builds with 1 and 2 jobs (and of ``args.baseline``'s
    code); then (unless ``args.rates_only``) the per-stage CPU breakdown and the neighbour-list
    engines."""
    package = extract_package(args.baseline, work) if args.baseline else None
    materialise(SETS, work)
    texts = {name: cif_sample(name, args.parse_structures) for name in SETS}
    builds: dict = {}
    parse: dict = {}
    pools: dict = {}
    configs = [(1, None), (2, None)] + ([(1, package), (2, package)] if package else [])
    imports = []
    for r in range(args.rounds):
        imports.append(time_import())
        for name in SETS:
            for check in (True, False):
                keep_best(parse, (name, check), time_parse(texts[name], check))
            pool = pool_start(name, work)
            if name not in pools or pool["children_cpu_s"] < pools[name]["children_cpu_s"]:
                pools[name] = pool
            for jobs, pkg in configs:
                res = bench_build(name, jobs, work, pkg)
                res["code"] = "baseline" if pkg else "current"
                keep_best(builds, (name, jobs, res["code"]), res, "cpu_structures_per_s")
                print(
                    f"round {r} {name} {res['code']} jobs={jobs}: "
                    f"{res['structures_per_s']:.0f}/s wall, "
                    f"{res['cpu_structures_per_s']:.0f}/s CPU "
                    f"(steady {res['steady_cpu_structures_per_s']:.0f}/s CPU), "
                    f"load {load_average()}",
                    flush=True,
                )
    hashes = {}
    for (name, _, _), res in builds.items():
        hashes.setdefault(name, set()).add(res["content_hash"])
    assert all(len(h) == 1 for h in hashes.values()), f"content hashes differ: {hashes}"
    results["builds"] = list(builds.values())
    results["pymatgen_import_cpu_s"] = min(imports)
    results["scaling"] = {
        f"{name} {code}": scaling(builds[(name, 1, code)], builds[(name, 2, code)])
        for name, jobs, code in builds
        if jobs == 2 and (name, 1, code) in builds
    }
    for (name, check), v in parse.items():
        results["cif_parse"].setdefault(name, {})["check_cif" if check else "no_check_cif"] = v
    results["fixed_costs"] = {
        f"{name} {code}": fixed_costs(
            builds[(name, 1, code)],
            builds[(name, 2, code)],
            results["cif_parse"][name]["check_cif"]["structures_per_s"],
            pools[name] if code == "current" else None,
            min(imports),
        )
        for name, jobs, code in builds
        if jobs == 2 and (name, 1, code) in builds
    }
    for name in SETS:
        results["cif_parse"][name]["structures"] = len(texts[name])
        if args.rates_only:
            continue
        results["breakdown"][name] = breakdown(name, work)
        structures, _ = load_structures(name, args.engine_structures)
        results["engines"][name] = bench_engines(structures)
        print(f"breakdown {name}: {results['breakdown'][name]['us_per_structure']}", flush=True)


EARLIER = "## Earlier results"


def with_earlier(new: str, old: str | None) -> str:
    """The results file ``new`` followed by the previous file's text ``old`` below a heading
    that marks it earlier (its own title line dropped; kept as written)."""
    if not old:
        return new
    body = old.split("\n", 1)[1] if old.startswith("# ") else old
    return f"{new.rstrip()}\n\n{EARLIER} (kept as written; superseded by the above)\n{body}"


def write_results(results: dict, out: Path, keep_earlier: bool = False) -> None:
    """``results`` as ``out`` (JSON) and its ``.md``; ``keep_earlier``: the previous ``.md``
    stays below the new one (:func:`with_earlier`)."""
    md = out.with_suffix(".md")
    text = markdown(results)
    if keep_earlier and md.exists():
        text = with_earlier(text, md.read_text())
    out.write_text(json.dumps(results, indent=1))
    md.write_text(text)
    print(f"wrote {out}")


GOAL_RATIO = 0.9  # issue 21 goal 4: end-to-end --jobs 1 rate / CIF-parse bound
GOAL_SCALING = 1.85  # and --jobs 2 against --jobs 1


def fixed_costs_markdown(r: dict) -> list[str]:
    """Goal 4 per dataset: end-to-end and steady-state rates against the parse bound, the
    fixed costs apart, the ``--jobs 2`` scaling, and whether the goal is met."""
    fc, sc = r.get("fixed_costs"), r.get("scaling", {})
    if not fc:
        return []
    rev = r.get("baseline")
    big = next(iter(fc.values()))["projected_structures"]
    lines = [
        "## Issue 21 goal 4: rates against the parse bound, fixed costs apart",
        "",
        "Per dataset, all from this run's interleaved builds (records per CPU second of the "
        "main process + workers). Parse bound: pymatgen's CIF parse alone on CIFs of the same "
        "dataset. Steady state: between the commit passing 20 % of the records and the last. "
        "Fixed CPU F = total CPU − N / steady rate (what a build pays once: imports, pool "
        f"start, provenance, ramp); projected ratio = the `--jobs 1` ratio at {big:,} "
        "structures (the whole MP Relaxed subset) with the same F and steady rate. Implied "
        "scaling: Amdahl on CPU time (see the `--jobs 2` section); steady-state scaling = "
        "2 × steady `--jobs 2` rate / steady `--jobs 1` rate.",
        "",
        "| dataset | code | structures | parse/s | `--jobs 1`/s | ratio | steady/s | "
        "steady ratio | F s (`--jobs 1`) | F share | F s (`--jobs 2`) | projected ratio | "
        "CPU efficiency | implied scaling | steady scaling |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for label, v in fc.items():
        name, code = label.rsplit(" ", 1)
        s = sc[label]
        one = v["structures"] / s["t1_cpu_s"]
        lines.append(
            f"| {name} | {code if code == 'current' else f'baseline {rev}'} | "
            f"{v['structures']:,} | {v['parse_per_s']:.0f} | {one:.0f} | "
            f"{v['end_to_end_ratio']:.3f} | {v['parse_per_s'] * v['steady_ratio']:.0f} | "
            f"{v['steady_ratio']:.3f} | {v['fixed_cpu_s_jobs1']:.2f} | "
            f"{v['fixed_share_jobs1']:.3f} | {v['fixed_cpu_s_jobs2']:.2f} | "
            f"{v['projected_ratio']:.3f} | {s['cpu_efficiency']:.3f} | "
            f"{s['implied_scaling']:.2f}× | {v['steady_scaling']:.2f}× |"
        )
        if code == "current":
            ratio_ok = v["end_to_end_ratio"] >= GOAL_RATIO
            scaling_ok = s["implied_scaling"] >= GOAL_SCALING
            verdicts.append(
                f"- {name} ({v['structures']:,} structures): ratio {v['end_to_end_ratio']:.3f} "
                f"({'met' if ratio_ok else 'not met'}: ≥ {GOAL_RATIO}), implied `--jobs 2` "
                f"scaling {s['implied_scaling']:.2f}× "
                f"({'met' if scaling_ok else 'not met'}: ≥ {GOAL_SCALING}×): goal 4 "
                f"**{'met' if ratio_ok and scaling_ok else 'not met'}**."
            )
    lines += ["", "Goal 4 (current code):", "", *verdicts, ""]
    lines += [
        "Fixed costs, CPU seconds per build (current code). pymatgen import: "
        "`from pymatgen.io.cif import CifParser` in a fresh process, paid inside the build "
        "by the `--jobs 1` process and by every worker; builder import: the build process's "
        "interpreter start and `import fingerprint_pretrain.builder.build`, before the timed "
        "build (not in its CPU time); pool start: workers started by `run_parallel` on "
        "2 × jobs one-structure tasks (each worker's interpreter, imports and loky "
        "bootstrap, plus loky's resource tracker; the tasks' own work at the steady rate "
        "taken off); the rest timed inside the `--jobs 1` build.",
        "",
        "| dataset | pymatgen import | builder import | pool start: main | pool start: per "
        "worker | inputs' row count | inputs' sha256 | provenance | finalisation (with "
        "provenance) | F (`--jobs 1`) | F (`--jobs 2`) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(x):
        return "" if x is None else f"{x:.3f}"

    for label, v in fc.items():
        name, code = label.rsplit(" ", 1)
        if code != "current":
            continue
        lines.append(
            f"| {name} | {cell(v['pymatgen_import_cpu_s'])} | "
            f"{cell(v['builder_import_cpu_s'])} | {cell(v.get('pool_start_main_cpu_s'))} | "
            f"{cell(v.get('pool_start_per_worker_cpu_s'))} | {cell(v['open_inputs_cpu_s'])} | "
            f"{cell(v['input_sha256_cpu_s'])} | {cell(v['provenance_cpu_s'])} | "
            f"{cell(v['finalise_cpu_s'])} | {v['fixed_cpu_s_jobs1']:.3f} | "
            f"{v['fixed_cpu_s_jobs2']:.3f} |"
        )
    return lines + [""]


def markdown(r: dict) -> str:
    if "breakdown" not in r:
        return old_markdown(r)
    rev = r.get("baseline")
    lines = [
        "# Store builder and reader benchmarks",
        "",
        f"{r['date']}, {r['machine']['cpu']}, {r['machine']['cores']} cores, "
        f"Python {r['machine']['python']}. `{r['command']}`. The 2 cores are shared with "
        f"other jobs (training runs, store builds; load average {r['load_before']} before, "
        f"{r['load_after']} after): wall-clock rates and speed-ups are what the machine gave at "
        "the time; the CPU-time rates (best of "
        f"{r['rounds']} interleaved rounds: parse alone, builds with 1 and 2 jobs"
        + (f", the build of {rev}" if rev else "")
        + ") are the load-independent figures.",
        "",
        *fixed_costs_markdown(r),
        "## Graph-only build (8 Å, complete neighbour lists)",
        "",
        "End to end: one fresh process per build (worker spawn and imports, CSV counting and "
        "hashing, finalisation included). Steady state: records per second between the commit "
        "passing 20 % of the records and the last commit. CPU rate: records per CPU second of "
        "the main process and its workers.",
        "",
        "| dataset | code | jobs | structures/s (wall) | speed-up | steady-state structures/s | "
        "steady speed-up | structures per CPU s | main peak RSS MiB | worker peak RSS MiB | "
        "bytes/atom | edges/atom |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(b["dataset"], b["code"]): b for b in r["builds"] if b["jobs"] == 1}
    for b in sorted(r["builds"], key=lambda b: (b["dataset"], b["code"] != "current", b["jobs"])):
        one = base[(b["dataset"], b["code"])]
        code = "current" if b["code"] == "current" else f"baseline {rev}"
        lines.append(
            f"| {b['dataset']} ({b['records']:,} structures) | {code} | {b['jobs']} | "
            f"{b['structures_per_s']:.0f} | "
            f"{b['structures_per_s'] / one['structures_per_s']:.2f}× | "
            f"{b['steady_structures_per_s']:.0f} | "
            f"{b['steady_structures_per_s'] / one['steady_structures_per_s']:.2f}× | "
            f"{b['cpu_structures_per_s']:.0f} | {b['main_peak_rss_mib']:.0f} | "
            f"{b['worker_peak_rss_mib']:.0f} | {b['bytes_per_atom']:.0f} | "
            f"{b['edges_per_atom']:.0f} |"
        )
    lines += [
        "",
        "Content hashes of every build of a dataset (1 and 2 jobs"
        + (", current and baseline" if rev else "")
        + ") are equal (checked).",
        "",
        "### Against the CIF-parse bound (pymatgen, one core)",
        "",
        "Parse alone: `CifParser.from_str(cif).parse_structures(primitive=False)` as the builder "
        "calls it, on CIFs spread over the dataset, records per CPU second (and per wall "
        "second); `check_cif=False` (pymatgen's composition check, whose warning the builder "
        "discards) shown for comparison. Ratio = `--jobs 1` build rate / parse rate.",
        "",
        "| dataset | code | CIFs | parse/s CPU | parse/s wall | no check_cif parse/s CPU | "
        "build/s CPU | ratio CPU | build/s wall | ratio wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in r["cif_parse"].items():
        p, q = v["check_cif"], v["no_check_cif"]
        for code in ("current", "baseline"):
            b = base.get((name, code))
            if b is None:
                continue
            label = "current" if code == "current" else f"baseline {rev}"
            lines.append(
                f"| {name} | {label} | {v['structures']} | {p['structures_per_s']:.0f} | "
                f"{p['wall_structures_per_s']:.0f} | {q['structures_per_s']:.0f} | "
                f"{b['cpu_structures_per_s']:.0f} | "
                f"{b['cpu_structures_per_s'] / p['structures_per_s']:.2f} | "
                f"{b['structures_per_s']:.0f} | "
                f"{b['structures_per_s'] / p['wall_structures_per_s']:.2f} |"
            )
    imp = r.get("pymatgen_import_cpu_s")
    if imp is not None:
        lines += [
            "",
            f"Of a build's CPU time, {imp:.2f} s is pymatgen's import (`from pymatgen.io.cif "
            "import CifParser` in a fresh process, best of the rounds), which the parse bound "
            "(timed after the import) does not pay. Without it, the `--jobs 1` ratios are: "
            + ", ".join(
                f"{name} {code} "
                f"{b['records'] / (b['main_cpu_s'] + b['worker_cpu_s'] - imp) / p:.2f}"
                for name, v in r["cif_parse"].items()
                for code in ("current", "baseline")
                if (b := base.get((name, code))) is not None
                for p in [v["check_cif"]["structures_per_s"]]
            )
            + ".",
        ]
    if r.get("scaling"):
        lines += [
            "",
            "### `--jobs 2`: CPU efficiency and implied 2-core scaling",
            "",
            "Wall-clock speed-ups mean nothing on cores shared with training jobs, so the "
            "2-job build is judged by CPU time: T1 = total CPU of the 1-job build (its wall "
            "time on a free core); C2 = main process + workers with 2 jobs; serial S = the "
            "main process's CPU outside the records loop (inputs' hash and row count, "
            "finalisation); everything else (workers, and the main process's dispatch, "
            "unpickling and commits, which overlap them) spreads over both cores. Implied "
            "2-core scaling = T1 / (S + (C2 − S) / 2) (Amdahl); CPU efficiency = T1 / C2. It "
            "ignores the tail (the last chunk keeps one worker busy alone: ~0.1 s).",
            "",
            "| build | T1 µs/structure | C2 µs/structure | main process µs/structure | "
            "serial S s | CPU efficiency | main-process share | serial share | "
            "implied scaling |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, v in r["scaling"].items():
            name = label.replace("baseline", f"baseline {rev}")
            lines.append(
                f"| {name} | {v['t1_us_per_structure']:,.0f} | "
                f"{v['c2_us_per_structure']:,.0f} | {v['main_us_per_structure']:,.0f} | "
                f"{v['serial_cpu_s']:.2f} | {v['cpu_efficiency']:.3f} | "
                f"{v['parent_share']:.3f} | {v['serial_share']:.3f} | "
                f"{v['implied_scaling']:.2f}× |"
            )
    lines += breakdown_markdown(r["breakdown"])
    if r["engines"]:
        lines += engines_markdown(r)
    if r["reader"]:
        lines += reader_markdown(r["reader"])
    return "\n".join(lines) + "\n"


def breakdown_markdown(breakdown: dict) -> list[str]:
    """The per-stage CPU table (none when the run skipped it: ``--rates-only``)."""
    if not breakdown:
        return [""]
    lines = [
        "",
        "### Where a `--jobs 1` build's CPU time goes (µs per structure)",
        "",
        "Stages' exclusive CPU time in one instrumented build (the first parse includes "
        "pymatgen's import).",
        "",
    ]
    names = list(breakdown)
    stages = sorted(
        {k for v in breakdown.values() for k in v["us_per_structure"]},
        key=lambda k: -breakdown[names[0]]["us_per_structure"].get(k, 0),
    )
    lines += ["| stage | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for stage in stages:
        cells = [f"{breakdown[n]['us_per_structure'].get(stage, 0):,.0f}" for n in names]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    totals = [f"{breakdown[n]['total_s'] / breakdown[n]['records'] * 1e6:,.0f}" for n in names]
    return lines + ["| **total** | " + " | ".join(totals) + " |", ""]


def engines_markdown(r: dict, timing: str = ", CPU time") -> list[str]:
    """The neighbour-list engines table; ``timing`` ends its heading (older results: "")."""
    lines = [
        f"## Neighbour-list engines (8 Å, same structures, one core{timing})",
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
    return lines


def old_markdown(r: dict) -> str:
    """Results written before the parse-bound and breakdown sections."""
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
    lines += engines_markdown(r, timing="")
    lines += reader_markdown(r["reader"])
    return "\n".join(lines) + "\n"


def reader_markdown(reader: dict) -> list[str]:
    """The reader section (older results without a baseline have the plain layout)."""
    lines = ["", "## Reader: random access, one process", ""]
    if "stores" not in reader:  # results written before the baseline comparison
        lines += ["| dataset | LMDB records/s | Zarr records/s |", "|---|---|---|"]
        for ds, v in reader.items():
            lines.append(
                f"| {ds} | {v['lmdb']['records_per_s']:,.0f} | {v['zarr']['records_per_s']:,.0f} |"
            )
        return lines
    m = reader["machine"]
    rev = reader.get("baseline")
    lines += [
        f"{reader['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}. "
        f"`python bench/bench_build.py --reader-only"
        + (f" --baseline {rev}`" if rev else "`")
        + ". Records per second of the reading process's CPU time (wall-clock rates on this "
        "shared machine vary by up to ±50 % between runs; both are in build.json), best of 5 "
        "rounds, each a fresh process that reads every record once to warm up, then 20,000 "
        "random LMDB reads (4,000 with labels) twice, and a tenth of that from Zarr"
        + (
            f"; current and baseline readers alternate on the same stores (baseline = the "
            f"`schemas` package of {rev})."
            if rev
            else "."
        )
        + " CRC-32: CPU time of `zlib.crc32` over one record's bytes (graph record and label "
        "blobs), the integrity check's own cost.",
        "",
    ]
    head = "| store | LMDB records/s |" + (" baseline | ratio |" if rev else "")
    head += " Zarr records/s |" + (" baseline | ratio |" if rev else "")
    head += " CRC-32 µs/record (bytes) |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, v in reader["stores"].items():
        cells = []
        for backend in ("lmdb", "zarr"):
            a = v["current"][backend]["records_per_s"]
            cells.append(f"{a:,.0f}")
            if rev:
                b = v["baseline"][backend]["records_per_s"]
                cells += [f"{b:,.0f}", f"{a / b:.2f}"]
        crc = v.get("crc32")
        if crc:
            cells.append(f"{crc['us_per_record']:.1f} ({crc['bytes_per_record']:,.0f})")
        else:
            cells.append("")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
