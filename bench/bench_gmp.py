"""Benchmark of the GMP descriptors (label sets gmpset1..3) against GMP-featurizer.

On the same structures (first ``--perov`` of perov_5 and first ``--mp`` of mp_20_subset), one
core (OMP_NUM_THREADS=1, set before NumPy loads):

1. atoms/s of ``featurize`` per set and dataset; neighbour-list time reported separately, for
   the structure-independent radius (``required_radius(**params)``, what a static registry
   asks for) and for the radius of the elements present (``required_radius(elements=z, ...)``).
2. GMP-featurizer (TRI-AMDD, built from source; not on any package registry) on the same
   structures in the same run, as a subprocess in its own virtual environment
   (``--gmpfeaturizer-python``, default ``$FP_GMPFEATURIZER_PYTHON``, else this interpreter
   when it imports ``GMPFeaturizer``; skipped with a note saying how to give it when there is
   none), ``cores=1``, periodic: atoms/s (its time includes its own
   neighbour search), our speed ratio, and the largest difference of the features.
3. Work per atom: exp evaluations and multiply-adds of the ideal algorithm (every Gaussian term
   within its truncation radius once, no padding), and the time that work needs at this core's
   measured exp throughput and dgemm rate: the fraction of the CPU's limit we reach.

Times are process CPU time (the machine may be shared), best of ``--repeats`` rounds; each round
runs GMP-featurizer, then per structure the neighbour lists and each implementation in turn
(``--baseline REV`` adds ``builder/descriptors/gmp.py`` as of git revision REV, timed on the same
lists, with the largest difference of its features from the current ones).

Run: ``python bench/bench_gmp.py --out bench/results/gmp.json`` (also writes ``gmp.md`` beside).
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before NumPy loads: one core, BLAS included
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import gzip  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_label  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
sys.path.insert(0, str(REPO))
csv.field_size_limit(sys.maxsize)

from fingerprint_pretrain.builder.descriptors import gmp  # noqa: E402
from fingerprint_pretrain.builder.descriptors.registry import get as get_set  # noqa: E402
from fingerprint_pretrain.builder.neighbors import neighbour_list  # noqa: E402


def default_oracle_python() -> str | None:
    """GMP-featurizer's interpreter: ``$FP_GMPFEATURIZER_PYTHON``, else this one when it imports
    ``GMPFeaturizer``, else None."""
    import importlib.util

    if os.environ.get("FP_GMPFEATURIZER_PYTHON"):
        return os.environ["FP_GMPFEATURIZER_PYTHON"]
    return sys.executable if importlib.util.find_spec("GMPFeaturizer") else None


ORACLE_MISSING = (
    "GMP-featurizer not run: {python} (build it from source, github.com/TRI-AMDD/GMP-featurizer, "
    "then pass --gmpfeaturizer-python PATH or set FP_GMPFEATURIZER_PYTHON to its interpreter)"
)
GMP_NAMES = ("gmpset1", "gmpset2", "gmpset3")


def gmp_params(name: str) -> dict:
    return dict(get_set(name).params)


# Runs inside GMP-featurizer's environment: reads structures from an .npz, featurizes each set
# with cores=1 (no Ray), writes features and the best CPU time of `repeats` runs.
ORACLE_WORKER = r"""
import json, sys, time
import numpy as np
from GMPFeaturizer import GMPFeaturizer
from GMPFeaturizer.constants import ATOM_INDEX_TO_SYMBOL_DICT as SYMBOL
data = np.load(sys.argv[1])
sets = json.loads(sys.argv[2])
psp_path, out_path, repeats = sys.argv[3], sys.argv[4], int(sys.argv[5])
names = json.loads(str(data["names"]))
results, timings = {}, {}
for set_name, params in sets.items():
    featurizer = GMPFeaturizer(
        GMPs={"GMPs": {"orders": params["orders"], "sigmas": params["sigmas"]},
              "psp_path": psp_path, "overlap_threshold": params["overlap_threshold"]},
        converter=None, calc_derivatives=False, verbose=False)
    for dataset, keys in names.items():
        images = [{"pbc": np.array([True, True, True]), "cell": data[k + "/cell"],
                   "atom_positions": data[k + "/pos"],
                   "atom_symbols": np.array([SYMBOL[int(z)] for z in data[k + "/z"]])}
                  for k in keys]
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()  # CPU time of this process: the machine may be shared
            out = featurizer.prepare_features(images, cores=1)
            best = min(best, time.process_time() - start)
        timings[set_name + "|" + dataset] = best
        for k, entry in zip(keys, out):
            results[set_name + "|" + k] = entry["features"]
np.savez(out_path, **results)
print(json.dumps(timings))
"""


def load_structures(name: str, count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(z, pos, cell) of the first ``count`` structures of a dataset (pymatgen CIF parser)."""
    from pymatgen.core import Structure

    with gzip.open(DATASETS / f"{name}.csv.gz", "rt", newline="") as fh:
        rows = list(itertools.islice(csv.DictReader(fh), count))
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in rows:
            s = Structure.from_str(row["cif"], fmt="cif")
            out.append((np.array(s.atomic_numbers), s.cart_coords, s.lattice.matrix))
    return out


def cpu_limits() -> dict:
    """This core's NumPy exp throughput (ns per exp) and dgemm rate (GFLOP/s)."""
    x = -np.random.default_rng(0).random(1 << 20) * 30
    y = np.empty_like(x)
    np.exp(x, out=y)
    start = time.process_time()
    for _ in range(20):
        np.exp(x, out=y)
    exp_ns = (time.process_time() - start) / (20 * x.size) * 1e9
    a = np.random.default_rng(1).random((1024, 1024))
    a @ a
    start = time.process_time()
    for _ in range(5):
        a @ a
    gflops = 5 * 2 * 1024**3 / (time.process_time() - start) / 1e9
    return {"exp_ns": exp_ns, "dgemm_gflops": gflops}


def ideal_work(z, nl, params) -> tuple[int, int]:
    """(exp evaluations, multiply-adds) of the ideal algorithm for one structure.

    Every (edge, σ or order −1 slot, Gaussian) within its truncation radius costs one exp and
    one multiply-add per order layer (radial weights); every (edge, σ, component) one
    multiply-add (contraction with the monomials) plus one multiply per monomial and edge.
    """
    plan, _ = gmp._plan_for(dict(params))
    n_sigma, layers = len(plan.sigmas), plan.max_order + 1
    radius = gmp.required_radius(elements=z, **params)
    nl = nl.within(radius)
    neighbour_z = z[nl.edge_index[0]]
    exps = macs = 0
    for element in np.unique(z):
        d2 = np.sort(nl.edge_dist[neighbour_z == element] ** 2)
        n_gauss = int(plan.counts[element])
        for slot in range(plan.decay.shape[0]):
            reach = np.searchsorted(d2, plan.radius[slot, element, :n_gauss] ** 2)
            exps += int(reach.sum())
            macs += int(reach.sum()) * (layers if slot < n_sigma else 1)
    components = sum((n + 1) * (n + 2) // 2 for n in range(1, plan.max_order + 1))
    macs += nl.num_edges * (n_sigma * (1 + components) + components)
    return exps, macs


def load_revision(revision: str):
    """``builder/descriptors/gmp.py`` as it was at a git revision, imported as a module (the
    baseline that ``--baseline`` compares with, in the same run)."""
    source = subprocess.run(
        ["git", "show", f"{revision}:builder/descriptors/gmp.py"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    import importlib.util

    path = Path(tempfile.mkdtemp()) / f"gmp_{revision}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"gmp_{revision}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def time_round(structures, params, modules: dict) -> tuple[dict, dict]:
    """One round over the structures: process CPU time (s) of the neighbour lists (global and
    elements radius) and of each module's ``featurize`` on the same list, alternating module by
    module per structure; and each module's features."""
    pbc = np.ones(3, bool)
    global_radius = gmp.required_radius(**params)
    spent = {"nl_global_s": 0.0, "nl_elements_s": 0.0, **{name: 0.0 for name in modules}}
    features = {name: [] for name in modules}
    clock = time.process_time  # CPU time of this process: other jobs share the machine
    for z, pos, cell in structures:
        radius = gmp.required_radius(elements=z, **params)
        # Per structure, nothing kept but the features: holding all lists (~1e7 edges) would
        # time the memory system instead.
        start = clock()
        # sort=False: descriptors need no distance order (the builder skips the sort too)
        neighbour_list(pos, cell, pbc, global_radius, sort=False)
        spent["nl_global_s"] += clock() - start
        start = clock()
        nl = neighbour_list(pos, cell, pbc, radius, sort=False)
        spent["nl_elements_s"] += clock() - start
        for name, module in modules.items():
            start = clock()
            features[name].append(module.featurize(z, pos, cell, pbc, nl, **params))
            spent[name] += clock() - start
    return spent, features


def work(structures, params) -> tuple[float, float]:
    """(exp evaluations, multiply-adds) per atom of the ideal algorithm on the structures."""
    pbc = np.ones(3, bool)
    exps = macs = 0
    for z, pos, cell in structures:
        nl = neighbour_list(pos, cell, pbc, gmp.required_radius(elements=z, **params), sort=False)
        e, m = ideal_work(z, nl, params)
        exps, macs = exps + e, macs + m
    atoms = sum(len(s[0]) for s in structures)
    return exps / atoms, macs / atoms


def run_oracle(python: str, datasets: dict, sets: dict, repeats: int) -> tuple[dict, dict] | str:
    """GMP-featurizer timings and features, or a note why it did not run."""
    if not python or not Path(python).exists():
        where = f"{python} not found" if python else "no interpreter imports GMPFeaturizer"
        return ORACLE_MISSING.format(python=where)
    psp = REPO / "builder" / "data" / "QE-kjpaw.gpsp"
    with tempfile.TemporaryDirectory() as tmp:
        arrays, names = {}, {}
        for dataset, structures in datasets.items():
            names[dataset] = []
            for k, (z, pos, cell) in enumerate(structures):
                key = f"{dataset}/{k}"
                names[dataset].append(key)
                arrays[key + "/z"], arrays[key + "/pos"], arrays[key + "/cell"] = z, pos, cell
        np.savez(Path(tmp) / "in.npz", names=json.dumps(names), **arrays)
        proc = subprocess.run(
            [python, "-c", ORACLE_WORKER, str(Path(tmp) / "in.npz"), json.dumps(sets), str(psp),
             str(Path(tmp) / "out.npz"), str(repeats)],
            capture_output=True, text=True, cwd=tmp,
            env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_DISABLE_IMPORT_WARNING": "1"},
        )  # fmt: skip
        if proc.returncode != 0:
            return f"GMP-featurizer failed: {proc.stderr.strip().splitlines()[-1:]}"
        timings = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(Path(tmp) / "out.npz") as out:
            features = {k: out[k] for k in out.files}
    return timings, features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gmp.json"))
    parser.add_argument("--perov", type=int, default=500, help="first N structures of perov_5")
    parser.add_argument("--mp", type=int, default=300, help="first N of mp_20_subset")
    parser.add_argument(
        "--gmpfeaturizer-python",
        default=default_oracle_python(),
        help="interpreter that imports GMPFeaturizer (default: $FP_GMPFEATURIZER_PYTHON, else "
        "this one if it can)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds; best of N timings")
    parser.add_argument(
        "--baseline",
        default=None,
        help="git revision whose gmp.py is timed beside the current one in every round",
    )
    args = parser.parse_args()

    datasets = {"perov_5": load_structures("perov_5", args.perov)}
    datasets["mp_20_subset"] = load_structures("mp_20_subset", args.mp)
    limits = cpu_limits()
    sets = {name: gmp_params(name) for name in GMP_NAMES}
    modules = {"current": gmp}
    if args.baseline:
        modules = {"baseline": load_revision(args.baseline), "current": gmp}

    results, oracle_note = {}, None
    for set_name, params in sets.items():
        best: dict[str, dict] = {ds: {} for ds in datasets}
        features: dict[str, dict] = {}
        reference = None
        for _ in range(args.repeats):
            # Rounds: GMP-featurizer, then per structure the neighbour lists and each module
            # in turn, so that load from other processes hits all alike; best of the rounds.
            oracle = run_oracle(args.gmpfeaturizer_python, datasets, {set_name: params}, 1)
            if isinstance(oracle, tuple):
                timings, reference = oracle
                for dataset in datasets:
                    seconds = timings[f"{set_name}|{dataset}"]
                    previous = best[dataset].get("gmpfeaturizer_s", np.inf)
                    best[dataset]["gmpfeaturizer_s"] = min(previous, seconds)
            else:
                oracle_note = oracle
            for dataset, structures in datasets.items():
                spent, features[dataset] = time_round(structures, params, modules)
                for key, seconds in spent.items():
                    best[dataset][key] = min(best[dataset].get(key, np.inf), seconds)
        for dataset, structures in datasets.items():
            row = summarise(best[dataset], structures, params, limits)
            current = features[dataset]["current"]
            if "baseline" in modules:
                old = features[dataset]["baseline"]
                row["identical_to_baseline"] = all(map(np.array_equal, current, old))
                row["max_abs_diff_vs_baseline"] = max(
                    float(np.abs(a - b).max(initial=0.0)) for a, b in zip(current, old)
                )
                # relative to each atom's largest feature (invariants that vanish by symmetry
                # are ~1e-16 noise in both, so a per-feature ratio would mean nothing there)
                row["max_rel_diff_vs_baseline"] = max(
                    float((np.abs(a - b) / np.abs(b).max(axis=1, keepdims=True)).max(initial=0.0))
                    for a, b in zip(current, old)
                )
            if reference is not None:
                worst = 0.0
                for k, ours in enumerate(current):
                    theirs = reference[f"{set_name}|{dataset}/{k}"]
                    scale = np.abs(theirs).max(axis=1, keepdims=True)
                    worst = max(worst, float((np.abs(ours - theirs) / scale).max()))
                row["max_diff_vs_gmpfeaturizer"] = worst
            results[f"{set_name}|{dataset}"] = row
            print(set_name, dataset, {k: round(v, 3) for k, v in row.items()}, flush=True)

    report = {
        "machine": {
            "cpu": cpu_label(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "gmp_path": gmp_path(),
        "cpu_limits": limits,
        "gmpfeaturizer": oracle_note or "ran",
        "baseline": args.baseline,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report, args))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def gmp_path() -> str:
    """The evaluation path ``featurize`` takes by default here: the compiled kernel and its
    instruction-set variant, or the NumPy path and why."""
    from fingerprint_pretrain.builder.descriptors import gmp_kernel

    if gmp_kernel.available():
        return f"compiled kernel ({gmp_kernel.ISA})"
    return f"NumPy path (kernel unavailable: {gmp_kernel.unavailable_reason()})"


def summarise(best: dict, structures, params, limits: dict) -> dict:
    """A result row from the best CPU times of a set on a dataset: rates and ratios."""
    atoms = sum(len(s[0]) for s in structures)
    exps, macs = work(structures, params)
    row = {"structures": len(structures), "atoms": atoms, **best}
    row["featurize_s"] = row.pop("current")
    row["featurize_atoms_per_s"] = atoms / row["featurize_s"]
    row["nl_elements_atoms_per_s"] = atoms / row["nl_elements_s"]
    row["nl_global_atoms_per_s"] = atoms / row["nl_global_s"]
    row["total_atoms_per_s"] = atoms / (row["featurize_s"] + row["nl_elements_s"])
    row["exps_per_atom"], row["macs_per_atom"] = exps, macs
    ideal_s = atoms * (exps * limits["exp_ns"] * 1e-9 + 2 * macs / (limits["dgemm_gflops"] * 1e9))
    row["ideal_work_s"] = ideal_s
    row["fraction_of_cpu_limit"] = ideal_s / row["featurize_s"]
    if "baseline" in row:
        row["baseline_featurize_s"] = row.pop("baseline")
        row["speedup_vs_baseline"] = row["baseline_featurize_s"] / row["featurize_s"]
    if "gmpfeaturizer_s" in row:
        seconds = row["gmpfeaturizer_s"]
        row["gmpfeaturizer_atoms_per_s"] = atoms / seconds
        row["speedup_featurize"] = seconds / row["featurize_s"]
        row["speedup_with_nl"] = seconds / (row["featurize_s"] + row["nl_elements_s"])
        if "baseline_featurize_s" in row:
            row["baseline_speedup_with_nl"] = seconds / (
                row["baseline_featurize_s"] + row["nl_elements_s"]
            )
    return row


def markdown(report: dict, args) -> str:
    baseline = report.get("baseline")
    lines = [
        "# GMP descriptors (gmpset1..3)",
        "",
        f"Machine: {report['machine']['cpu']}, one core (OMP_NUM_THREADS=1), Python "
        f"{report['machine']['python']}, NumPy {report['machine']['numpy']}; gmp.py path: "
        f"{report['gmp_path']}. Structures: first "
        f"{args.perov} of perov_5, first {args.mp} of mp_20_subset. Times are process CPU time, "
        f"best of {args.repeats} rounds; each round runs GMP-featurizer, then per structure the "
        "neighbour lists and "
        + (f"gmp.py of {baseline} and the current one in turn" if baseline else "ours")
        + f". GMP-featurizer: {report['gmpfeaturizer']} (built from source, cores=1, periodic; "
        "its time includes its own neighbour search). Core limits measured: "
        f"exp {report['cpu_limits']['exp_ns']:.2f} ns, dgemm "
        f"{report['cpu_limits']['dgemm_gflops']:.1f} GFLOP/s.",
        "",
        "| set | dataset | atoms | featurize atoms/s | NL atoms/s (elements / global radius) | "
        "GMP-featurizer atoms/s | speed-up (featurize / with NL) | max diff | "
        + (
            "baseline: speed-up with NL, current/baseline featurize, max abs / rel diff | "
            if baseline
            else ""
        )
        + "exps/atom | MACs/atom | % of CPU limit |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if baseline else "") + "---|---|---|",
    ]
    for key, r in report["results"].items():
        set_name, dataset = key.split("|")
        oracle = (
            f"{r['gmpfeaturizer_atoms_per_s']:.0f} | {r['speedup_featurize']:.2f} / "
            f"{r['speedup_with_nl']:.2f} | {r['max_diff_vs_gmpfeaturizer']:.1e}"
            if "gmpfeaturizer_s" in r
            else "– | – | –"
        )
        old = ""
        if baseline:
            old = (
                f" {r.get('baseline_speedup_with_nl', float('nan')):.2f}, "
                f"{r['speedup_vs_baseline']:.2f}, {r['max_abs_diff_vs_baseline']:.1e} / "
                f"{r['max_rel_diff_vs_baseline']:.1e}"
                + (" (identical)" if r["identical_to_baseline"] else "")
                + " |"
            )
        lines.append(
            f"| {set_name} | {dataset} | {r['atoms']} | {r['featurize_atoms_per_s']:.0f} | "
            f"{r['nl_elements_atoms_per_s']:.0f} / {r['nl_global_atoms_per_s']:.0f} | {oracle} |"
            f"{old} {r['exps_per_atom']:.3g} | {r['macs_per_atom']:.3g} | "
            f"{100 * r['fraction_of_cpu_limit']:.0f} |"
        )
    lines += [
        "",
        "speed-up: GMP-featurizer's time / ours (featurize alone, or featurize + the neighbour "
        "list of the elements' radius). max diff: largest |ours − GMP-featurizer| over all atoms "
        "and features, divided by the atom's largest feature. Work: the ideal algorithm's exp "
        "evaluations and multiply-adds (each Gaussian term within its truncation radius once); "
        "% of CPU limit = time that work needs at the measured exp and dgemm rates / our "
        "featurize time."
        + (
            " Baseline diff: largest |current − baseline| over all atoms and features, absolute "
            "and divided by the atom's largest feature."
            if baseline
            else ""
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
