"""EAD kernel builds side by side: contraction rate as a fraction of dgemm (issue 21, goal 3).

Usage::

    .venv/bin/python bench/bench_ead_kernel.py --baseline REV [--so DIR ...] [--reps 5]
        [--sets eadset1,eadset2,eadset3] [--cache /tmp/ead_bench.pkl] [--out results.json]

Each variant is one build of ``_ead_kernel.c``: ``--baseline REV`` compiles REV's C file (and
loads REV's ``ead_kernel.py`` to build its plans) with setup.py's flags into a temporary folder;
``--so DIR`` adds a build found in DIR (its ``ead_kernel.py`` there is used for plans when
present); the in-place build of this tree (``builder/descriptors/_ead_kernel*.so``, plans from
this tree) always comes last, as "current". The kernels are called directly
(``_ead_kernel.featurize`` with prebuilt plans and neighbour lists: no Python wrapper).

Measure. "Effective GFLOP/s" = 2·M·|η|·|Rs|·edges / seconds (the contraction, unpadded, as
``bench_descriptors.py``), against a 1000³ dgemm (NumPy's BLAS, one thread). Times are **process
CPU time** (the cores here are shared with training jobs: wall time is meaningless). The
structures are timed in groups of 10; per round and group every variant runs in turn (the order
rotates), with a dgemm every 5 groups, so all sides see the same load; a variant's time is the
sum over groups of its best of ``--reps`` rounds, the dgemm rate the best call's.

Deviation of each variant from the first: the largest relative difference over the features
>= 1e-2 of their atom's largest feature, and whether the outputs are bitwise identical.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import glob  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fingerprint_pretrain.builder.descriptors import ead, ead_kernel  # noqa: E402
from fingerprint_pretrain.builder.descriptors.registry import REGISTRY  # noqa: E402
from machine import cpu_label  # noqa: E402

KERNEL_DIR = REPO / "builder" / "descriptors"
DATASETS = (("perov_5", "perov_5.csv.gz", 200), ("mp_20_subset", "mp_20_subset.csv.gz", 100))
# setup.py's flags (UNIX_FLAGS) plus what building a shared module needs.
CFLAGS = ["-O3", "-ffp-contract=fast", "-fPIC", "-shared", "-fwrapv"]
DGEMM_N = 1000  # ~2 GFLOP per call: ~50 ms, interleaved with the kernels
GROUP = 10  # structures timed together
DGEMM_EVERY = 5  # groups per dgemm call (a call costs ~5 groups of kernel calls)
SIGNIFICANT = 1e-2  # deviation measured on features >= this fraction of the atom's largest


@dataclass
class Variant:
    """One kernel build: its extension module and the plan builder that matches its ABI."""

    label: str
    module: object
    plan_module: object


def load_module(path: Path, name: str):
    """Import a module (an extension .so or a .py file) from a path under a private name."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compile_kernel(source: Path, folder: Path) -> Path:
    """Compile one ``_ead_kernel.c`` into ``folder`` with setup.py's flags; the .so's path."""
    paths = sysconfig.get_paths()
    target = folder / f"_ead_kernel{sysconfig.get_config_var('EXT_SUFFIX')}"
    command = ["gcc", *CFLAGS, f"-I{paths['include']}", str(source), "-o", str(target), "-lm"]
    subprocess.run(command, check=True)
    return target


def baseline_variant(rev: str, folder: Path) -> Variant:
    """REV's kernel (compiled here) and REV's ead_kernel.py (for plans in REV's layout)."""
    for name in ("_ead_kernel.c", "ead_kernel.py"):
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:builder/descriptors/{name}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (folder / name).write_text(text)
    so = compile_kernel(folder / "_ead_kernel.c", folder)
    tag = rev.replace("~", "_").replace("^", "_")
    module = load_module(so, f"ead_baseline_{tag}._ead_kernel")
    plans = load_module(folder / "ead_kernel.py", f"ead_baseline_{tag}_plans")
    return Variant(f"{rev}", module, plans)


def folder_variant(folder: Path, k: int) -> Variant:
    """A build in ``folder`` (plans from its ead_kernel.py if there, else this tree's)."""
    so = Path(glob.glob(str(folder / "_ead_kernel*.so"))[0])
    module = load_module(so, f"ead_variant{k}._ead_kernel")
    py = folder / "ead_kernel.py"
    plans = load_module(py, f"ead_variant{k}_plans") if py.exists() else ead_kernel
    return Variant(folder.name, module, plans)


def current_variant() -> Variant:
    so = Path(glob.glob(str(KERNEL_DIR / "_ead_kernel*.so"))[0])
    return Variant("current", load_module(so, "ead_current._ead_kernel"), ead_kernel)


def structures(cache: Path | None) -> dict:
    """{(dataset, rc): [(z, pos, cell, edge_index, edge_shift, edge_dist), ...]}."""
    if cache is not None and cache.exists():
        return pickle.loads(cache.read_bytes())
    import bench_descriptors
    from fingerprint_pretrain.builder.neighbors import neighbour_list

    pbc = np.ones(3, bool)
    out = {}
    for name, file, count in DATASETS:
        items = bench_descriptors.load(file, count)
        for rc in sorted({float(s.params["rc"]) for s in REGISTRY.values() if s.family == "ead"}):
            out[(name, rc)] = []
            for z, pos, cell in items:
                nl = neighbour_list(pos, cell, pbc, rc, sort=False)
                out[(name, rc)].append(
                    (
                        np.ascontiguousarray(z, dtype=np.int64),
                        np.ascontiguousarray(pos, dtype=np.float64),
                        np.ascontiguousarray(cell, dtype=np.float64),
                        np.ascontiguousarray(nl.edge_index, dtype=np.int64),
                        np.ascontiguousarray(nl.edge_shift, dtype=np.int64),
                        np.ascontiguousarray(nl.edge_dist, dtype=np.float64),
                    )
                )
    if cache is not None:
        cache.write_bytes(pickle.dumps(out))
    return out


def plan_for(variant: Variant, name: str):
    """The variant's plan of registry set ``name``."""
    p = REGISTRY[name].params
    max_l, etas, rs, rc = ead._validated(p["L"], p["etas"], p["rs"], p["rc"])
    _, recursion, reduce = ead._monomial_tables(max_l, rc)
    return variant.plan_module.kernel_plan(etas, rs, rc, recursion, reduce)


def dgemm_rate(a: np.ndarray, b: np.ndarray) -> float:
    """GFLOP/s of one a @ b, process CPU time."""
    start = time.process_time()
    a @ b
    return 2.0 * a.shape[0] ** 3 / (time.process_time() - start) / 1e9


def deviation(x: np.ndarray, ref: np.ndarray) -> float:
    """Largest |x - ref| / |ref| over the features >= SIGNIFICANT of their atom's largest."""
    big = np.abs(ref) >= SIGNIFICANT * np.abs(ref).max(axis=1, keepdims=True)
    big &= ref != 0
    return float(np.max(np.abs(x[big] - ref[big]) / np.abs(ref[big]), initial=0.0))


def measure(variants: list[Variant], data: dict, sets: list[str], reps: int) -> list[dict]:
    """One row per (set, dataset): best CPU times, rates and deviations of every variant.

    The structures are timed in groups of GROUP; per round and group every variant (in an
    order that rotates), with a dgemm before every DGEMM_EVERY-th group, so that all sides see
    the same load. A variant's time is the sum over groups of its best time of the rounds; the
    dgemm rate is the best call's."""
    rng = np.random.default_rng(0)
    a, b = rng.random((DGEMM_N, DGEMM_N)), rng.random((DGEMM_N, DGEMM_N))
    rows = []
    for name in sets:
        p = REGISTRY[name].params
        plans = [plan_for(v, name) for v in variants]
        n_mono = (p["L"] + 1) * (p["L"] + 2) * (p["L"] + 3) // 6
        radial = len(p["etas"]) * len(p["rs"])
        isa = os.environ.get("ISA")
        indices = [v.module.ALL_ISAS.index(isa) if isa else -1 for v in variants]
        for dataset, _, _ in DATASETS:
            items = data[(dataset, float(p["rc"]))]
            atoms = sum(len(it[0]) for it in items)
            edges = sum(len(it[5]) for it in items)
            flops = 2.0 * n_mono * radial * edges
            outs = [[np.empty((len(it[0]), pl.n_features)) for it in items] for pl in plans]
            groups = [range(g, min(g + GROUP, len(items))) for g in range(0, len(items), GROUP)]
            best = np.full((len(variants), len(groups)), np.inf)
            dgemm = 0.0
            for r in range(reps):
                for g, group in enumerate(groups):
                    if g % DGEMM_EVERY == 0:
                        dgemm = max(dgemm, dgemm_rate(a, b))
                    order = list(range(len(variants)))
                    order = order[(r + g) % len(order) :] + order[: (r + g) % len(order)]
                    for k in order:
                        module, plan, index = variants[k].module, plans[k], indices[k]
                        start = time.process_time()
                        for s in group:
                            module.featurize(*items[s], plan.iplan, plan.dplan, outs[k][s], index)
                        best[k, g] = min(best[k, g], time.process_time() - start)
            seconds = best.sum(axis=1)
            ref = np.concatenate(outs[0])
            row = {"set": name, "dataset": dataset, "atoms": atoms, "edges": edges}
            row["dgemm_gflops"] = dgemm
            row["variants"] = []
            for k, v in enumerate(variants):
                x = np.concatenate(outs[k])
                gflops = flops / seconds[k] / 1e9
                row["variants"].append(
                    {
                        "label": v.label,
                        "seconds": float(seconds[k]),
                        "atoms_per_s": atoms / seconds[k],
                        "gflops": gflops,
                        "fraction_of_dgemm": gflops / dgemm,
                        "max_rel_dev_significant": deviation(x, ref),
                        "bitwise": bool(np.array_equal(x, ref)),
                    }
                )
            rows.append(row)
            print(line(row), flush=True)
    return rows


def line(row: dict) -> str:
    parts = [f"{row['set']:8s} {row['dataset']:13s} dgemm {row['dgemm_gflops']:5.1f}"]
    for v in row["variants"]:
        dev = "bitwise" if v["bitwise"] else f"d={v['max_rel_dev_significant']:.1e}"
        parts.append(
            f"{v['label']}: {v['atoms_per_s']:7.0f} at/s {v['gflops']:5.1f} GF "
            f"{v['fraction_of_dgemm']:4.0%} {dev}"
        )
    return " | ".join(parts)


def markdown(rows: list[dict]) -> str:
    """The results table: per (set, dataset) every variant's fraction of dgemm."""
    labels = [v["label"] for v in rows[0]["variants"]]
    arrow = " → ".join(labels)
    out = [
        f"| set | dataset | dgemm GFLOP/s | atoms/s ({arrow}) | effective GFLOP/s | "
        f"fraction of dgemm | max rel. dev. vs {labels[0]} (features ≥ 1e-2 of the atom's max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        vs = row["variants"]
        dev = ", ".join(
            "bitwise" if v["bitwise"] else f"{v['max_rel_dev_significant']:.1e}" for v in vs[1:]
        )
        out.append(
            f"| {row['set']} | {row['dataset']} | {row['dgemm_gflops']:.1f} | "
            + " → ".join(f"{v['atoms_per_s']:,.0f}" for v in vs)
            + " | "
            + " → ".join(f"{v['gflops']:.1f}" for v in vs)
            + " | "
            + " → ".join(f"{v['fraction_of_dgemm']:.0%}" for v in vs)
            + f" | {dev} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", action="append", default=[], help="git revision(s)")
    parser.add_argument("--so", action="append", default=[], type=Path, help="build folder(s)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sets", default="eadset1,eadset2,eadset3")
    parser.add_argument("--cache", type=Path, default=None, help="pickle of the structures")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    parser.add_argument("--no-current", action="store_true", help="skip the in-place build")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ead_bench_") as tmp:
        variants = []
        for k, rev in enumerate(args.baseline):
            folder = Path(tmp) / f"rev{k}"
            folder.mkdir()
            variants.append(baseline_variant(rev, folder))
        variants += [folder_variant(f, k) for k, f in enumerate(args.so)]
        if not args.no_current:
            variants.append(current_variant())
        load = os.getloadavg()
        rows = measure(variants, structures(args.cache), args.sets.split(","), args.reps)
        load = (load, os.getloadavg())
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_label(),
        "numpy": np.__version__,
        "isa": os.environ.get("ISA") or "best supported",
        "reps": args.reps,
        "load_average_before_after": load,
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    print(markdown(rows))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
