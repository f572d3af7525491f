"""Benchmark of every registered label set (wACSF, GMP, EAD) on one core.

On the same structures (first ``--perov`` of perov_5 and first ``--mp`` of mp_20_subset), one
core (OMP_NUM_THREADS=1, set before NumPy loads), best of ``--repeat`` passes:

1. atoms/s of ``featurize`` for each registered set and dataset (neighbour lists built beforehand
   and timed separately, once per radius). Sets whose family does not import (e.g. GMP while
   ``builder/descriptors/gmp.py`` is absent) are reported as skipped.
2. wACSF sets: DScribe ``ACSF`` (G2 only, the same (η, Rs) and cutoff, one species list per
   dataset) on the same structures in the same process, and our speed ratio.
3. EAD sets: PyXtal_FF 0.2.3 ``EAD`` (derivative=False) as a subprocess (``--pyxtal-python``,
   default ``$FP_PYXTAL_PYTHON``, else this interpreter when it imports ``pyxtal_ff``: ``make
   install`` puts it in the venv; skipped with a note saying how to give it when there is none),
   on the first ``--pyxtal-structures`` structures of each dataset (it runs at ~500 atoms/s); our
   rate on that same subset, the ratio, and the largest relative difference.
   GMPFeaturizer comparisons are in ``bench/bench_gmp.py``.
4. Work per atom of the EAD sets (the contraction's multiply-adds, 2·M·|η|·|Rs|·neighbours flops,
   M monomials) and this core's dgemm rate (a 2000³ product): the effective GFLOP/s reached.
   EAD sets are also timed per evaluation path on the same structures in the same run: the
   compiled kernel (``method="kernel"``, :mod:`builder.descriptors.ead_kernel`, when built; the
   instruction-set variant is reported) and the NumPy path (``method="numpy"``); the main rate
   is the default (``"auto"``: the kernel when available).
5. The projection of all nine sets over 1.9 M atoms on 16 such cores, in minutes.

Run: ``python bench/bench_descriptors.py --out bench/results/descriptors.json`` (also writes
``descriptors.md`` beside). ``--quick`` uses 200 / 100 structures and one pass.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before NumPy loads: one core, BLAS included
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import gzip  # noqa: E402
import importlib  # noqa: E402
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
from machine import cpu_name  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
sys.path.insert(0, str(REPO))
csv.field_size_limit(sys.maxsize)

from fingerprint_pretrain.builder.descriptors import ead_kernel  # noqa: E402
from fingerprint_pretrain.builder.descriptors.registry import REGISTRY  # noqa: E402
from fingerprint_pretrain.builder.neighbors import neighbour_list  # noqa: E402


def default_pyxtal_python() -> str | None:
    """PyXtal_FF's interpreter: ``$FP_PYXTAL_PYTHON``, else this one when it imports
    ``pyxtal_ff`` (``make install`` installs it), else None."""
    import importlib.util

    if os.environ.get("FP_PYXTAL_PYTHON"):
        return os.environ["FP_PYXTAL_PYTHON"]
    return sys.executable if importlib.util.find_spec("pyxtal_ff") else None


PYXTAL_MISSING = (
    "PyXtal_FF not run: {where} (pip install --no-deps pyxtal-ff==0.2.3, as make install does, "
    "or pass --pyxtal-python PATH / set FP_PYXTAL_PYTHON to an interpreter that imports it)"
)
PROJECTION_ATOMS = 1.9e6
PROJECTION_CORES = 16

# Runs inside PyXtal_FF's environment: structures from an .npz, one EAD set per call (params in
# a JSON file), one core; writes features and the wall time of the featurisation loop.
PYXTAL_WORKER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
from ase import Atoms
from pyxtal_ff.descriptors.EAD import EAD
data = np.load(sys.argv[1])
params = json.load(open(sys.argv[2]))
count = int(data["count"])
atoms = [
    Atoms(numbers=data[f"z{k}"], positions=data[f"pos{k}"], cell=data[f"cell{k}"], pbc=True)
    for k in range(count)
]
calculator = EAD(
    {"L": params["L"], "eta": params["etas"], "Rs": params["rs"]},
    Rc=params["rc"], derivative=False,
)
calculator.calculate(atoms[0])  # warm-up
start = time.perf_counter()
features = [calculator.calculate(a)["x"] for a in atoms]
seconds = time.perf_counter() - start
np.save(sys.argv[3], np.concatenate(features))
print(json.dumps({"seconds": seconds, "atoms": int(sum(len(a) for a in atoms))}))
"""


def load(name: str, count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """First ``count`` structures of a dataset CSV as (z, pos, cell) arrays (pymatgen parses)."""
    from pymatgen.core import Structure

    out = []
    with gzip.open(DATASETS / name, "rt", newline="") as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in itertools.islice(csv.DictReader(fh), count):
            s = Structure.from_str(row["cif"], fmt="cif")
            out.append(
                (np.array(s.atomic_numbers), np.array(s.cart_coords), np.array(s.lattice.matrix))
            )
    return out


def best_rate(run, atoms: int, repeat: int) -> tuple[float, float]:
    """(atoms/s, seconds) of the fastest of ``repeat`` calls of ``run``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return atoms / best, best


def dgemm_gflops() -> float:
    """This core's double-precision matrix-product rate (best of 3 × 2000³), GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = rng.random((2000, 2000)), rng.random((2000, 2000))
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(3))
    return 2 * 2000**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def family_available(family: str) -> str | None:
    """None when ``fingerprint_pretrain.builder.descriptors.<family>`` imports, else the reason."""
    try:
        importlib.import_module(f"fingerprint_pretrain.builder.descriptors.{family}")
    except Exception as error:  # noqa: BLE001 - any failure means: skip this family
        return f"{type(error).__name__}: {error}"
    return None


def dscribe_rate(structures, params, repeat) -> float | None:
    try:
        from ase import Atoms
        from dscribe.descriptors import ACSF
    except ImportError:
        return None
    species = sorted({int(x) for z, _, _ in structures for x in z})
    acsf = ACSF(
        species=species,
        r_cut=params["rc"],
        g2_params=[[e, r] for e in params["etas"] for r in params["rs"]],
        periodic=True,
    )
    atoms = [Atoms(numbers=z, positions=p, cell=c, pbc=True) for z, p, c in structures]
    n_atoms = sum(len(a) for a in atoms)
    return best_rate(lambda: [acsf.create(a) for a in atoms], n_atoms, repeat)[0]


def pyxtal_run(python: str, structures, params, workdir: Path) -> dict:
    """PyXtal_FF's EAD in its own environment: {'rate', 'features'} or {'error'}."""
    data = {"count": len(structures)}
    for k, (z, pos, cell) in enumerate(structures):
        data[f"z{k}"], data[f"pos{k}"], data[f"cell{k}"] = z, pos, cell
    npz, params_file, out = workdir / "s.npz", workdir / "p.json", workdir / "x.npy"
    np.savez(npz, **data)
    params_file.write_text(json.dumps(params))
    worker = workdir / "worker.py"
    worker.write_text(PYXTAL_WORKER)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [python, str(worker), str(npz), str(params_file), str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1:] or ["failed"]}
    timing = json.loads(result.stdout.strip().splitlines()[-1])
    return {"rate": timing["atoms"] / timing["seconds"], "features": np.load(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "descriptors.json"))
    parser.add_argument("--perov", type=int, default=1000, help="structures of perov_5")
    parser.add_argument("--mp", type=int, default=500, help="structures of mp_20_subset")
    parser.add_argument("--repeat", type=int, default=3, help="passes; the fastest counts")
    parser.add_argument("--sets", default="all", help="comma-separated registry names")
    parser.add_argument(
        "--pyxtal-python",
        default=default_pyxtal_python(),
        help="interpreter that imports pyxtal_ff (default: $FP_PYXTAL_PYTHON, else this one if "
        "it can)",
    )
    parser.add_argument("--pyxtal-structures", type=int, default=100)
    parser.add_argument("--no-oracles", action="store_true", help="skip DScribe and PyXtal_FF")
    parser.add_argument("--quick", action="store_true", help="200 / 100 structures, one pass")
    args = parser.parse_args()
    if args.quick:
        args.perov, args.mp, args.repeat = 200, 100, 1
        args.pyxtal_structures = min(args.pyxtal_structures, 30)
    names = list(REGISTRY) if args.sets == "all" else args.sets.split(",")

    datasets = {
        "perov_5": load("perov_5.csv.gz", args.perov),
        "mp_20_subset": load("mp_20_subset.csv.gz", args.mp),
    }
    gflops = dgemm_gflops()
    report = {
        "machine": {
            "cpu": cpu_name(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "dgemm_gflops_one_core": round(gflops, 1),
            "ead_kernel": ead_kernel.ISA if ead_kernel.available() else None,
            "ead_kernel_unavailable": ead_kernel.unavailable_reason(),
        },
        "structures": {k: len(v) for k, v in datasets.items()},
        "atoms": {k: int(sum(len(s[0]) for s in v)) for k, v in datasets.items()},
        "neighbour_lists": {},
        "sets": {},
    }
    pbc = np.ones(3, dtype=bool)
    lists: dict[tuple[str, float], list] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench_descriptors_"))
    for name in names:
        spec = REGISTRY[name]
        reason = family_available(spec.family)
        entry: dict = {"family": spec.family, "dim": None, "radius": None}
        report["sets"][name] = entry
        if reason:
            entry["skipped"] = reason
            print(f"{name}: skipped ({reason})", flush=True)
            continue
        entry["dim"], entry["radius"] = spec.dim, spec.radius
        for dname, structures in datasets.items():
            n_atoms = report["atoms"][dname]
            # As the builder does: the radius the set needs for the elements present (GMP's
            # depends on them), and no distance sort (descriptors do not need one).
            radii = [spec.radius_for(z) for z, _, _ in structures]
            key = (dname, spec.name if len(set(radii)) > 1 else spec.radius)
            if key not in lists:
                start = time.perf_counter()
                lists[key] = [
                    neighbour_list(p, c, pbc, r, sort=False)
                    for (_, p, c), r in zip(structures, radii)
                ]
                seconds = time.perf_counter() - start
                edges = sum(nl.num_edges for nl in lists[key])
                label = f"{spec.name} radius" if isinstance(key[1], str) else f"{spec.radius:.4g} Å"
                report["neighbour_lists"][f"{dname}@{label}"] = {
                    "atoms_per_s": round(n_atoms / seconds),
                    "edges_per_atom": round(edges / n_atoms, 1),
                }
            nls = lists[key]

            def run(structures=structures, nls=nls, spec=spec):
                for (z, p, c), nl in zip(structures, nls):
                    spec.compute(z, p, c, pbc, nl)

            rate, _ = best_rate(run, n_atoms, args.repeat)
            result = {"atoms_per_s": round(rate)}
            edges_per_atom = sum(nl.num_edges for nl in nls) / n_atoms
            if spec.family == "ead":
                n_mono = (
                    (spec.params["L"] + 1) * (spec.params["L"] + 2) * (spec.params["L"] + 3) // 6
                )
                radial = len(spec.params["etas"]) * len(spec.params["rs"])
                flops = 2.0 * n_mono * radial * edges_per_atom
                result["contraction_mflop_per_atom"] = round(flops / 1e6, 3)
                result["effective_gflops"] = round(flops * rate / 1e9, 1)
                result["fraction_of_dgemm_peak"] = round(flops * rate / 1e9 / gflops, 3)
                # Each evaluation path on the same structures (kernel only where it is built).
                methods = ["kernel", "numpy"] if ead_kernel.available() else ["numpy"]
                for method in methods:

                    def run_method(structures=structures, nls=nls, spec=spec, method=method):
                        for (z, p, c), nl in zip(structures, nls):
                            spec.module.featurize(z, p, c, pbc, nl, **spec.params, method=method)

                    method_rate, _ = best_rate(run_method, n_atoms, args.repeat)
                    result[f"{method}_atoms_per_s"] = round(method_rate)
                    result[f"{method}_fraction_of_dgemm_peak"] = round(
                        flops * method_rate / 1e9 / gflops, 3
                    )
            if not args.no_oracles and spec.family == "wacsf":
                reference = dscribe_rate(structures, spec.params, args.repeat)
                if reference:
                    result["dscribe_atoms_per_s"] = round(reference)
                    result["ratio_vs_dscribe"] = round(rate / reference, 2)
            if not args.no_oracles and spec.family == "ead":
                if args.pyxtal_python and Path(args.pyxtal_python).exists():
                    subset = structures[: args.pyxtal_structures]
                    sub_atoms = int(sum(len(s[0]) for s in subset))

                    def run_subset(subset=subset, nls=nls, spec=spec):
                        return [
                            spec.compute(z, p, c, pbc, nl) for (z, p, c), nl in zip(subset, nls)
                        ]

                    ours_subset, _ = best_rate(run_subset, sub_atoms, args.repeat)

                    def run_subset_numpy(subset=subset, nls=nls, spec=spec):
                        for (z, p, c), nl in zip(subset, nls):
                            spec.module.featurize(z, p, c, pbc, nl, **spec.params, method="numpy")

                    numpy_subset, _ = best_rate(run_subset_numpy, sub_atoms, args.repeat)
                    oracle = pyxtal_run(args.pyxtal_python, subset, spec.params, workdir)
                    if "error" in oracle:
                        result["pyxtal_ff"] = {"error": oracle["error"]}
                    else:
                        ours = np.concatenate(run_subset())
                        difference = np.abs(ours - oracle["features"]) / np.maximum(
                            np.abs(oracle["features"]), 1e-300
                        )
                        result["pyxtal_ff"] = {
                            "structures": len(subset),
                            "atoms": sub_atoms,
                            "atoms_per_s": round(oracle["rate"], 1),
                            "ours_atoms_per_s": round(ours_subset),
                            "ratio": round(ours_subset / oracle["rate"], 1),
                            "numpy_atoms_per_s": round(numpy_subset),
                            "numpy_ratio": round(numpy_subset / oracle["rate"], 1),
                            "max_relative_difference": float(difference.max()),
                        }
                else:
                    where = (
                        f"{args.pyxtal_python} not found"
                        if args.pyxtal_python
                        else "no interpreter imports pyxtal_ff"
                    )
                    result["pyxtal_ff"] = {"error": PYXTAL_MISSING.format(where=where)}
            entry[dname] = result
            print(f"{name} {dname}: {result}", flush=True)

    report["projection"] = projection(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def projection(report: dict) -> dict:
    """Minutes for all computed sets over PROJECTION_ATOMS atoms on PROJECTION_CORES cores, at
    the atoms-weighted mean rate of the two datasets (neighbour lists: once per radius)."""
    total_atoms = sum(report["atoms"].values())
    seconds_per_atom = {}
    for name, entry in report["sets"].items():
        if "skipped" in entry:
            continue
        seconds_per_atom[name] = (
            sum(report["atoms"][d] / entry[d]["atoms_per_s"] for d in report["atoms"]) / total_atoms
        )
    lists = {}
    for key, value in report["neighbour_lists"].items():
        dname, radius = key.split("@")
        lists.setdefault(radius, 0.0)
        lists[radius] += report["atoms"][dname] / value["atoms_per_s"] / total_atoms
    scale = PROJECTION_ATOMS / PROJECTION_CORES / 60.0
    return {
        "atoms": PROJECTION_ATOMS,
        "cores": PROJECTION_CORES,
        "sets_computed": sorted(seconds_per_atom),
        "featurize_minutes": round(sum(seconds_per_atom.values()) * scale, 2),
        "neighbour_list_minutes": round(sum(lists.values()) * scale, 2),
        "per_set_minutes": {k: round(v * scale, 3) for k, v in seconds_per_atom.items()},
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Descriptor benchmark (one core)",
        "",
        f"Machine: {m['cpu']}, Python {m['python']}, NumPy {m['numpy']}; one core "
        f"(OMP_NUM_THREADS=1), dgemm {m['dgemm_gflops_one_core']} GFLOP/s (2000³). Structures: "
        + ", ".join(
            f"{k} {report['structures'][k]} ({report['atoms'][k]} atoms)"
            for k in report["structures"]
        )
        + ". Rates are atoms/s of `featurize` alone, best of the passes; neighbour lists below. "
        "On a machine shared with other jobs, rates vary by up to ~±30 % between runs.",
        "",
        "| set | dim | radius Å | perov_5 atoms/s | mp_20 atoms/s | reference (mp_20) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in report["sets"].items():
        if "skipped" in e:
            lines.append(f"| {name} | – | – | skipped: {e['skipped'][:60]} | | | |")
            continue
        mp, pv = e.get("mp_20_subset", {}), e.get("perov_5", {})
        ref, ratio = "", ""
        if "dscribe_atoms_per_s" in mp:
            ref, ratio = f"DScribe {mp['dscribe_atoms_per_s']:,}", f"{mp['ratio_vs_dscribe']}×"
        elif "pyxtal_ff" in mp and "ratio" in mp["pyxtal_ff"]:
            px = mp["pyxtal_ff"]
            ref = f"PyXtal_FF {px['atoms_per_s']:,} ({px['structures']} structures)"
            ratio = f"{px['ratio']}×"
        lines.append(
            f"| {name} | {e['dim']} | {e['radius']:.4g} | {pv.get('atoms_per_s', 0):,} | "
            f"{mp.get('atoms_per_s', 0):,} | {ref} | {ratio} |"
        )
    lines += ["", "| neighbour list | atoms/s | edges/atom |", "|---|---|---|"]
    for key, v in report["neighbour_lists"].items():
        lines.append(f"| {key} | {v['atoms_per_s']:,} | {v['edges_per_atom']} |")
    ead = [(n, e) for n, e in report["sets"].items() if e["family"] == "ead" and "skipped" not in e]
    if ead:
        kernel = m.get("ead_kernel")
        lines += [
            "",
            "EAD evaluation paths on the same structures, same run: the compiled kernel "
            + (
                f"(`{kernel}` variant)"
                if kernel
                else f"(unavailable: {m.get('ead_kernel_unavailable')})"
            )
            + " and the NumPy path. PyXtal_FF ratios on its subset of mp_20 (rate of each path "
            "on that subset / PyXtal_FF's).",
            "",
            "| set | dataset | kernel atoms/s | NumPy atoms/s | kernel / NumPy | "
            "kernel vs PyXtal_FF | NumPy vs PyXtal_FF |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, e in ead:
            for d in ("perov_5", "mp_20_subset"):
                r = e.get(d, {})
                if "numpy_atoms_per_s" not in r:
                    continue
                k, nump = r.get("kernel_atoms_per_s"), r["numpy_atoms_per_s"]
                px = r.get("pyxtal_ff", {})
                kernel_ratio = f"{px['ratio']}×" if "ratio" in px and k else "–"
                numpy_ratio = f"{px['numpy_ratio']}×" if "numpy_ratio" in px else "–"
                speedup = f"{k / nump:.2f}×" if k else "–"
                lines.append(
                    f"| {n} | {d} | {f'{k:,}' if k else '–'} | {nump:,} | {speedup} | "
                    f"{kernel_ratio} | {numpy_ratio} |"
                )
        lines += [
            "",
            "EAD work per atom (the contraction Σ_j weight · Gaussian, 2·M·|η|·|Rs|·neighbours "
            "flops with M monomials) and the effective rate it implies, against dgemm:",
            "",
            "| set | dataset | MFLOP/atom | effective GFLOP/s | fraction of dgemm |",
            "|---|---|---|---|---|",
        ]
        for n, e in ead:
            for d in ("perov_5", "mp_20_subset"):
                r = e.get(d, {})
                if "contraction_mflop_per_atom" in r:
                    lines.append(
                        f"| {n} | {d} | {r['contraction_mflop_per_atom']} | "
                        f"{r['effective_gflops']} | {r['fraction_of_dgemm_peak']:.0%} |"
                    )
    p = report["projection"]
    lines += [
        "",
        f"Projection: {', '.join(p['sets_computed'])} over {p['atoms'] / 1e6:.1f} M atoms on "
        f"{p['cores']} cores: **{p['featurize_minutes']} min** of featurisation + "
        f"{p['neighbour_list_minutes']} min of neighbour lists (one per radius), at the "
        "atoms-weighted mean rate of the two datasets.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
