"""The registry of the paper's datasets: 11 downstream tasks and the pre-training set.

Every :class:`Dataset` lists one or more :class:`Source` s (alternative copies of the data, in
order of preference), each a set of :class:`RemoteFile` s with their official URLs and published
checksums, the reader format the builder uses, the target column and what was verified about it.
``fp-build datasets`` prints this table with what is present locally; ``docs/datasets.md`` is the
same information written out with references.

Kinds of sources:

- ``download``: files at stable public URLs with a checksum published by their maintainers
  (MatBench's sha256 in matminer, the git blob ids of the authors' repository, figshare's md5);
- ``local``: no stable public URL; the user supplies the file (``--from-dir DIR``), which must be
  exactly what :attr:`Source.note` says (our sha256 pins the copy we know);
- ``mp-api``: the Materials Project API through its official client (``pip install
  '.[mp]'`` and ``MP_API_KEY``); today's data, not a fixed snapshot.

A source marked ``subset`` is a stand-in (fewer structures than the paper used): it is used only
when no full source is available, and its store has its own name (``perov5_subset``, ...), never
the task's, so a stand-in is never mistaken for the real dataset.

Verification notes (what ``verified`` says) were made offline on this project's copies; details
and references in ``docs/datasets.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DATASETS",
    "MATBENCH_URL",
    "MDL_COMMIT",
    "MDL_RAW",
    "Dataset",
    "RemoteFile",
    "Source",
    "get",
]

MATBENCH_URL = "https://ml.materialsproject.org/projects/"
#: Fung-Lab/MatDeepLearn_dev, branch ``CT_pretrain``: the authors' converted datasets.
MDL_COMMIT = "2a7ffb329a04145542f2a726e215ac9f2069acf7"
MDL_RAW = f"https://raw.githubusercontent.com/Fung-Lab/MatDeepLearn_dev/{MDL_COMMIT}/"
MPF_ARTICLE = 19470599  # figshare: MPF.2021.2.8 (M3GNet training set)

MATBENCH_CITE = (
    "Dunn, Wang, Ganose, Dopp & Jain, npj Comput. Mater. 6, 138 (2020), "
    "doi:10.1038/s41524-020-00406-3 (MatBench v0.1)"
)
MATBENCH_LICENCE = (
    "MatBench files: as their original source (see citation); Materials Project data CC BY 4.0"
)
MDL_NOTE = (
    f"the authors' MatDeepLearn JSON (Fung-Lab/MatDeepLearn_dev @ {MDL_COMMIT[:10]}, the "
    "copy their fine-tuning configs read); the repository has no licence file, the data "
    "keep their original source's terms"
)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source.

    Attributes:
        name: file name in the download cache (and looked for under ``--from-dir``).
        urls: download locations, tried in order (empty: no stable public URL).
        sha256: published sha256 of the bytes as downloaded.
        git_blob_sha1: git's blob id of the file in the repository it is served from
            (sha1 of ``b"blob <size>\\0" + content``); a checksum the repository publishes.
        figshare: ``(article id, file id)``: the md5 figshare publishes for the file, fetched
            from figshare's API at download time.
        size: bytes, where known (a sanity check and the progress bar's total).
        aliases: ``(file name, sha256)`` of other local copies known to hold the same data
            (e.g. gzipped); accepted under ``--from-dir`` when their sha256 matches.
    """

    name: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    git_blob_sha1: str | None = None
    figshare: tuple[int, int] | None = None
    size: int | None = None
    aliases: tuple[tuple[str, str], ...] = ()

    @property
    def checksum(self) -> str:
        """What the file is checked against, for humans."""
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.git_blob_sha1:
            return f"git blob {self.git_blob_sha1}"
        if self.figshare:
            return f"figshare md5 (article {self.figshare[0]}, file {self.figshare[1]})"
        return "none published"


@dataclass(frozen=True)
class Source:
    """One copy of a dataset and how to build it.

    Attributes:
        name: short name (``--source``), e.g. ``matbench``, ``authors``, ``perov5``.
        kind: ``download``, ``local`` or ``mp-api`` (see the module docstring).
        files: the files (one build input, or the inputs of ``prepare``).
        fmt: reader format of the build input (``fingerprint_pretrain.builder.readers.FORMATS``).
        store: store name (``<store>.lmdb``); sources that are the same data share it.
        targets: target columns of the build input, stored in this order.
        units: unit per target column.
        id_column: id column of the build input (None: the reader's default).
        prepare: conversion run after download (``mpf``, ``c2db-ase-db``, ``mp-api``),
            producing a pickle-free build input; None: the (single) file is the input.
        subset: a stand-in with fewer structures than the paper's dataset.
        count: number of structures in this copy, where known.
        note: what this copy is.
        verified: what was checked about this copy, and how; "unverified: ..." otherwise.
        prebuilt: URL of a published store of parts built from this copy (the folder that
            serves its ``manifest.json``, written by ``fp-build pack``): ``fp-build fetch``
            and ``make datasets`` download it instead of building (not ``--offline``). None
            (every entry today): no store is published.
    """

    name: str
    kind: str
    files: tuple[RemoteFile, ...]
    fmt: str
    store: str
    targets: tuple[str, ...]
    units: dict[str, str] = field(default_factory=dict)
    id_column: str | None = None
    prepare: str | None = None
    subset: bool = False
    count: int | None = None
    note: str = ""
    verified: str = "unverified"
    prebuilt: str | None = None


@dataclass(frozen=True)
class Dataset:
    """A dataset of the paper.

    Attributes:
        name: registry name (``fp-build fetch NAME``).
        role: ``task`` (fine-tuning) or ``pretrain``.
        title: what it is.
        prop: the property and its unit as the paper uses it (None for pre-training).
        size: number of structures in the paper's copy.
        structure: how structures are given in the sources.
        splits: split protocols written next to the store: ``random`` (the paper's 0.6/0.2/0.2
            for seeds 111 … 555) and/or ``matbench`` (5-fold KFold, seed 18012019).
        citation: who to cite for the data.
        licence: the data licence, as far as known.
        sources: alternative copies, in order of preference.
        target: which target column of a source's store is the task's label, per source name
            (default: the source's first target).
    """

    name: str
    role: str
    title: str
    prop: str | None
    size: int
    structure: str
    splits: tuple[str, ...]
    citation: str
    licence: str
    sources: tuple[Source, ...]
    target: dict[str, str] = field(default_factory=dict)

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(
            f"{self.name} has no source {name!r}; choose from "
            f"{', '.join(s.name for s in self.sources)}"
        )

    def target_of(self, source: Source) -> str | None:
        """The task's target column in ``source``'s store (None for pre-training, whose
        labels are the descriptor sets)."""
        if self.role != "task":
            return None
        if source.name in self.target:
            return self.target[source.name]
        return source.targets[0] if source.targets else None


def _matbench(task: str, sha256: str, n: int, column: str, unit: str, verified: str = "") -> Source:
    return Source(
        name="matbench",
        kind="download",
        files=(
            RemoteFile(
                f"matbench_{task}.json.gz", (f"{MATBENCH_URL}matbench_{task}.json.gz",), sha256
            ),
        ),
        fmt="matbench",
        store=task,
        targets=(column,),
        units={column: unit},
        count=n,
        note=f"MatBench v0.1 file (gzipped DataFrame JSON, ids mb-{task}-NNNN)",
        verified=verified
        or "sha256 as published in matminer 0.10.1's dataset metadata; file not checked here",
    )


def _mdl(
    task: str,
    path: str,
    unit: str,
    store: str,
    n: int | None,
    *,
    sha256: str | None = None,
    git_blob: str | None = None,
    size: int | None = None,
    aliases: tuple[tuple[str, str], ...] = (),
    verified: str = "",
) -> Source:
    return Source(
        name="authors",
        kind="download",
        files=(
            RemoteFile(
                f"mdl_{task}.json",
                (MDL_RAW + path,),
                sha256=sha256,
                git_blob_sha1=git_blob,
                size=size,
                aliases=aliases,
            ),
        ),
        fmt="mdl",
        store=store,
        targets=("y",),
        units={"y": unit},
        id_column="structure_id",
        count=n,
        note=f"{MDL_NOTE}; path {path}; ids are running indices",
        verified=verified
        or (
            "git blob id from the repository's tree at that commit (fetched offline from a "
            "snapshot); the file itself (over 4 MiB) not checked here"
        ),
    )


#: Local stand-ins shipped with this project's development machines (../shared/datasets).
PEROV5 = Source(
    name="perov5",
    kind="local",
    files=(
        RemoteFile(
            "perov_5.csv.gz",
            sha256="06b7fc649097a0f93c35a145561a8494de71c027e81f6ed95009b30c491c34a5",
        ),
    ),
    fmt="csv-cif",
    store="perov5_subset",
    targets=("heat_all",),
    units={"heat_all": "eV/cell"},
    id_column="castelli_id",
    subset=True,
    count=7572,
    note=(
        "stand-in: 7,572 of the 18,928 Castelli perovskites (CDVAE perov_5 layout: castelli_id, "
        "cif, heat_all = heat of formation of the 5-atom cell, eV)"
    ),
    verified="sha256 and 7,572 rows checked here; targets not compared with MatBench's",
)
MP20 = Source(
    name="mp20",
    kind="local",
    files=(
        RemoteFile(
            "mp_20_subset.csv.gz",
            sha256="5c0ce4729c7942cf688e843cc07471e2d20b4c5d379256155d4740ce286e433a",
        ),
    ),
    fmt="csv-cif",
    store="mp20_subset",
    targets=("formation_energy_per_atom", "band_gap"),
    units={"formation_energy_per_atom": "eV/atom", "band_gap": "eV"},
    id_column="material_id",
    subset=True,
    count=2485,
    note=(
        "stand-in: 2,485 Materials Project structures of <= 20 atoms (a subset of MP-20: "
        "material_id, cif, formation_energy_per_atom, band_gap); one store for mp_e_form, "
        "mp_gap and pre-training"
    ),
    verified="sha256 and 2,485 rows checked here; a stand-in, not MatBench's data",
)

#: The pre-training stand-in: MPF.2021.2.8's materials that still exist in MP, current structures.
MP_RELAXED_SUBSET = Source(
    name="mpf-subset",
    kind="local",
    files=(
        RemoteFile(
            "mp_relaxed_mpf_subset.csv.gz",
            sha256="517fec79770647dd741ba43f5896f6d0317a0720b9a76fd11d2dd4ceb4291be1",
        ),
    ),
    fmt="csv-cif",
    store="mp_relaxed_subset",
    targets=(),
    id_column="material_id",
    subset=True,
    count=46765,
    note=(
        "stand-in: 46,765 of MPF.2021.2.8's 62,783 materials (74.5 %; the rest are deprecated "
        "in MP), each with MP's current structure (~v2025.02; for some a newer r2SCAN "
        "relaxation, volumes 0.5-5 % smaller than the 2021 PBE frames); columns material_id, "
        "mpf_split, nsites, formula, cif; CIFs from fxcoudert/topology_databases @ 41163fcf "
        "(MP data, CC BY 4.0); no targets"
    ),
    verified=(
        "sha256 and 46,765 rows checked here; ids are a subset of "
        "mpf_2021_2_8_material_ids.csv (62,782 ids, usnistgov/jarvis_leaderboard)"
    ),
)
_MP2018_FILE = RemoteFile(
    "mp2018_targets_with_structures.csv.gz",
    sha256="550ffe01ee914ac1d7b963f2fe2add78e1628a7b2992eebbea6ec78598d26f7c",
)
_MP2018_NOTE = (
    "MEGNet's mp.2018.6.1 formation energies and PBE gaps (via usnistgov/jarvis_leaderboard) "
    "and MatBench's mp_nostruct.csv (K_VRH, G_VRH) joined to MP's *current* structures "
    "(fxcoudert/topology_databases @ 41163fcf): targets computed on the 2018 geometries sit "
    "on slightly different structures (median |delta e_form| 0.013 eV/atom against mp_20)"
)
#: MP-2018 stand-ins for mp_e_form and mp_gap (51,149 of 132,752 / 106,113 structures).
MP2018 = Source(
    name="mp2018",
    kind="local",
    files=(_MP2018_FILE,),
    fmt="csv-cif",
    store="mp2018_subset",
    targets=("e_form_megnet", "gap_pbe_megnet"),
    units={"e_form_megnet": "eV/atom", "gap_pbe_megnet": "eV"},
    id_column="material_id",
    subset=True,
    count=51149,
    note=f"stand-in: 51,149 rows with both targets of 51,549 (the rest are rejected as missing "
    f"a target); {_MP2018_NOTE}",
    verified="sha256 and 51,549 rows checked here (51,149 with e_form_megnet and gap_pbe_megnet)",
)
#: The same file's elastic rows: stand-ins for log_gvrh / log_kvrh (6,298 of 10,987).
MP2018_ELASTIC = Source(
    name="mp2018-elastic",
    kind="local",
    files=(_MP2018_FILE,),
    fmt="csv-cif",
    store="mp2018_elastic_subset",
    targets=("log10_G_VRH", "log10_K_VRH"),
    units={"log10_G_VRH": "log10(GPa)", "log10_K_VRH": "log10(GPa)"},
    id_column="material_id",
    subset=True,
    count=6298,
    note=f"stand-in: the 6,298 rows with K_VRH and G_VRH (the other 45,251 rows are rejected as "
    f"missing a target); {_MP2018_NOTE}",
    verified="sha256 and 6,298 rows with both moduli checked here",
)
#: Petousis et al. (2017) via matminer 0.2.6: 1,056 of MatBench dielectric's 4,764.
DIELECTRIC_2017 = Source(
    name="dielectric2017",
    kind="local",
    files=(
        RemoteFile(
            "mp_dielectric_2017_subset.csv.gz",
            sha256="ea151b52110acd254b8b2b6736415fa5ff038249070e1771d213d198fe23bb55",
        ),
    ),
    fmt="csv-cif",
    store="dielectric_subset",
    targets=("n",),
    units={"n": ""},
    id_column="material_id",
    subset=True,
    count=1056,
    note=(
        "stand-in: 1,056 of MatBench dielectric's 4,764 (22 %): matminer 0.2.6's bundled "
        "dielectric_constant.csv (Petousis et al., Sci. Data 4, 160134, 2017), POSCARs "
        "converted to CIF; target n (refractive index)"
    ),
    verified="sha256 and 1,056 rows checked here; targets not compared with MatBench's",
)
#: QMOF in full, as CIFs: the authors' own copy (MatDeepLearn_dev CIFs + CT_pretrain targets).
QMOF_CIF = Source(
    name="qmof-cif",
    kind="local",
    files=(
        RemoteFile(
            "qmof_bandgap_cif.csv.gz",
            sha256="70fa8b7c81d02a5ab3235fbf26613ee231d69384a75bcc9bda28b0e2dedcc442",
        ),
    ),
    fmt="csv-cif",
    store="qmof_cif",
    targets=("band_gap",),
    units={"band_gap": "eV"},
    id_column="qmof_name",
    count=13058,
    note=(
        "the paper's MOF task complete, 13,058 of 13,058 (17-150 atoms per cell): CIFs from "
        "Fung-Lab/MatDeepLearn_dev @ b743581f (data/MOF/processed/raw_cif/) and PBE band gaps "
        "from its branch CT_pretrain (data/MOF/targets.csv), matched by name; QMOF CC BY 4.0"
    ),
    verified="sha256 and 13,058 rows checked here; all names matched a target",
)

_JDFT2D_ALIAS = (
    ("mdl_jdft2d.json.gz", "db045360a90591b92eb5dc804cac5076df696c87192abacdcb71400e75c7f473"),
)
_PHONONS_ALIAS = (
    ("mdl_phonons.json.gz", "58262240cd61de7cc9fc07392792595c4d8bb14c0f143dd1173a87c09e3fd200"),
)
_C2DB_ALIAS = (
    (
        "mdl_c2db_workfunction.json.gz",
        "5a4efe08bc9696fb715246181ce6bd35349e1c5327c839d0a5dc47ac63659b25",
    ),
)
_BOTH = ("random", "matbench")

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            name="jdft2d",
            role="task",
            title="Exfoliation energies of 2D materials (JARVIS-DFT), MatBench jdft2d",
            prop="exfoliation energy, meV/atom",
            size=636,
            structure="pymatgen Structure dicts (MatBench); positions/cell lists (authors)",
            splits=_BOTH,
            citation=MATBENCH_CITE
            + "; Choudhary et al., Sci. Rep. 7, 5179 (2017), doi:10.1038/s41598-017-05402-0",
            licence=MATBENCH_LICENCE + " (JARVIS-DFT: NIST data, public)",
            sources=(
                _matbench(
                    "jdft2d",
                    "26057dc4524e193e32abffb296ce819b58b6e11d1278cae329a2f97817a4eddf",
                    636,
                    "exfoliation_en",
                    "meV/atom",
                ),
                _mdl(
                    "jdft2d",
                    "data/JDFT/data_exfoliation.json",
                    "meV/atom",
                    "jdft2d",
                    636,
                    sha256="2387ac7aac830ab975a18a4b48439529d209dfc0f0ca6580e8d4a2bae2d8207d",
                    git_blob="e6bbd32733f40e5d22ee6247fa3872df22a27810",
                    size=409401,
                    aliases=_JDFT2D_ALIAS,
                    verified=(
                        "verified: our mdl_jdft2d.json.gz decompresses to the repository's file "
                        "byte for byte (sha256 above, computed from a snapshot at that commit); "
                        "636 records; targets of records 0-4 and 631-635 equal MatBench's "
                        "mb-jdft2d-001..005 and 632..636 (same order), record 0's lattice and "
                        "positions equal mb-jdft2d-001's (HfSiTe)"
                    ),
                ),
            ),
        ),
        Dataset(
            name="phonons",
            role="task",
            title="Frequency of the highest phonon DOS peak (DFPT), MatBench phonons",
            prop="last phonon DOS peak, cm^-1",
            size=1265,
            structure="pymatgen Structure dicts (MatBench); positions/cell lists (authors)",
            splits=_BOTH,
            citation=MATBENCH_CITE
            + "; Petretto et al., Sci. Data 5, 180065 (2018), doi:10.1038/sdata.2018.65",
            licence=MATBENCH_LICENCE,
            sources=(
                _matbench(
                    "phonons",
                    "4db551f21ec5f577e6202725f10e34dfc509aa7df3a6bdaac497da7f6dbbb9b3",
                    1265,
                    "last phdos peak",
                    "cm^-1",
                ),
                _mdl(
                    "phonons",
                    "data/Phonons/data_phonons.json",
                    "cm^-1",
                    "phonons",
                    1265,
                    sha256="b30a5d6940ae9a34b2d75581368735d07dd50728db932dd3195689b7d77dd3d7",
                    git_blob="bae90fd23bd271a552f41e597dca07b0ab9046f9",
                    size=773708,
                    aliases=_PHONONS_ALIAS,
                    verified=(
                        "verified: our mdl_phonons.json.gz decompresses to the repository's file "
                        "byte for byte; 1,265 records (MatBench's count); order against MatBench "
                        "not checked"
                    ),
                ),
            ),
        ),
        Dataset(
            name="dielectric",
            role="task",
            title="Refractive index (DFPT), MatBench dielectric",
            prop="refractive index n, dimensionless",
            size=4764,
            structure="pymatgen Structure dicts (MatBench); positions/cell lists (authors)",
            splits=_BOTH,
            citation=MATBENCH_CITE
            + "; Petousis et al., Sci. Data 4, 160134 (2017), doi:10.1038/sdata.2016.134",
            licence=MATBENCH_LICENCE,
            sources=(
                _matbench(
                    "dielectric",
                    "83befa09bc2ec2f4b6143afc413157827a90e5e2e42c1eb507ccfa01bf26a1d6",
                    4764,
                    "n",
                    "",
                ),
                _mdl(
                    "dielectric",
                    "data/Dielectric/data_dielectric.json",
                    "",
                    "dielectric",
                    None,
                    git_blob="456b880b99644f43bdfdd800d90563ce47a74107",
                ),
                DIELECTRIC_2017,
            ),
        ),
        Dataset(
            name="log_gvrh",
            role="task",
            title="Shear modulus (VRH), MatBench log_gvrh",
            prop="log10(G_VRH / GPa)",
            size=10987,
            structure="pymatgen Structure dicts (MatBench); positions/cell lists (authors)",
            splits=_BOTH,
            citation=MATBENCH_CITE
            + "; de Jong et al., Sci. Data 2, 150009 (2015), doi:10.1038/sdata.2015.9",
            licence=MATBENCH_LICENCE,
            sources=(
                _matbench(
                    "log_gvrh",
                    "098af941f4c663270f1fe21abf20ffad6fb85ecbfcba5786ceac03983ac29da7",
                    10987,
                    "log10(G_VRH)",
                    "log10(GPa)",
                ),
                _mdl(
                    "log_gvrh",
                    "data/GVRH/data_log_gvrh.json",
                    "log10(GPa)",
                    "log_gvrh",
                    None,
                    git_blob="8c5a235cf1ebb3792bc56684fe78c6c6dccbcdcc",
                ),
                MP2018_ELASTIC,
            ),
            target={"mp2018-elastic": "log10_G_VRH"},
        ),
        Dataset(
            name="log_kvrh",
            role="task",
            title="Bulk modulus (VRH), MatBench log_kvrh",
            prop="log10(K_VRH / GPa)",
            size=10987,
            structure="pymatgen Structure dicts (MatBench); positions/cell lists (authors)",
            splits=_BOTH,
            citation=MATBENCH_CITE
            + "; de Jong et al., Sci. Data 2, 150009 (2015), doi:10.1038/sdata.2015.9",
            licence=MATBENCH_LICENCE,
            sources=(
                _matbench(
                    "log_kvrh",
                    "44b113ddb7e23aa18731a62c74afa7e5aa654199e0db5f951c8248a00955c9cd",
                    10987,
                    "log10(K_VRH)",
                    "log10(GPa)",
                ),
                _mdl(
                    "log_kvrh",
                    "data/KVRH/data_log_kvrh.json",
                    "log10(GPa)",
                    "log_kvrh",
                    None,
                    git_blob="29ac97edaf15e6ea5cd7e7ea39a8056bee870fb6",
                ),
                MP2018_ELASTIC,
            ),
            target={"mp2018-elastic": "log10_K_VRH"},
        ),
        Dataset(
            name="perovskites",
            role="task",
            title="Heat of formation of cubic ABX3 perovskites (Castelli), MatBench perovskites",
            prop="heat of formation, eV per 5-atom cell",
            size=18928,
            structure="pymatgen Structure dicts (MatBench); CIF text (perov5 stand-in)",
            splits=_BOTH,
            citation=MATBENCH_CITE
            + "; Castelli et al., Energy Environ. Sci. 5, 9034 (2012), doi:10.1039/C2EE22341D",
            licence=MATBENCH_LICENCE + " (CMR database)",
            sources=(
                _matbench(
                    "perovskites",
                    "4641e2417f8ec8b50096d2230864468dfa08278dc9d257c327f65d0305278483",
                    18928,
                    "e_form",
                    "eV/cell",
                ),
                _mdl(
                    "perovskites",
                    "data/Perovskites/data_perovskites.json",
                    "eV/cell",
                    "perovskites",
                    None,
                    git_blob="13441ac1911cebf33567a43bfd683b06a094ce44",
                ),
                PEROV5,
            ),
        ),
        Dataset(
            name="mp_gap",
            role="task",
            title="PBE band gaps of Materials Project crystals, MatBench mp_gap",
            prop="PBE band gap, eV",
            size=106113,
            structure="pymatgen Structure dicts (MatBench); CIF text (mp20 stand-in)",
            splits=_BOTH,
            citation=MATBENCH_CITE
            + "; Jain et al., APL Mater. 1, 011002 (2013), doi:10.1063/1.4812323",
            licence="Materials Project data, CC BY 4.0",
            sources=(
                _matbench(
                    "mp_gap",
                    "58b65746bd88329986ed66031a2ac1369c7c522f7bc9f9081528e07097c2c057",
                    106113,
                    "gap pbe",
                    "eV",
                ),
                MP2018,
                MP20,
            ),
            target={"mp2018": "gap_pbe_megnet", "mp20": "band_gap"},
        ),
        Dataset(
            name="mp_e_form",
            role="task",
            title="Formation energies of Materials Project crystals, MatBench mp_e_form",
            prop="formation energy, eV/atom",
            size=132752,
            structure="pymatgen Structure dicts (MatBench); CIF text (mp20 stand-in)",
            splits=_BOTH,
            citation=MATBENCH_CITE
            + "; Jain et al., APL Mater. 1, 011002 (2013), doi:10.1063/1.4812323",
            licence="Materials Project data, CC BY 4.0",
            sources=(
                _matbench(
                    "mp_e_form",
                    "dedcb1d4ba2e3e50dbdd45ba5bc647a00e9c2bcf8f8bf556dc8e92caa39eb21f",
                    132752,
                    "e_form",
                    "eV/atom",
                ),
                MP2018,
                MP20,
            ),
            target={"mp2018": "e_form_megnet", "mp20": "formation_energy_per_atom"},
        ),
        Dataset(
            name="c2db",
            role="task",
            title="Work functions of 2D materials (C2DB)",
            prop="work function, eV",
            size=3814,
            structure="positions/cell lists, vacuum along c (authors); ASE database (C2DB)",
            splits=("random",),
            citation=(
                "Haastrup et al., 2D Mater. 5, 042002 (2018), doi:10.1088/2053-1583/aacfc1; "
                "Gjerding et al., 2D Mater. 8, 044002 (2021), doi:10.1088/2053-1583/ac1059"
            ),
            licence="C2DB terms of use (cmr.fysik.dtu.dk); unverified",
            sources=(
                _mdl(
                    "c2db",
                    "data/2D/data.json",
                    "eV",
                    "c2db",
                    3814,
                    sha256="d8d57384890fa51226cc2a9210b0ec586005c333ad39ae1de134db36b5cc4b91",
                    git_blob="1974c474a7e9f8eec0bb653ed12948966a6296b6",
                    size=2224631,
                    aliases=_C2DB_ALIAS,
                    verified=(
                        "verified: our mdl_c2db_workfunction.json.gz decompresses to the "
                        "repository's file byte for byte (sha256 above); 3,814 records"
                    ),
                ),
                Source(
                    name="c2db-db",
                    kind="local",
                    files=(RemoteFile("c2db.db"),),
                    fmt="extxyz",
                    store="c2db_asedb",
                    targets=("workfunction",),
                    units={"workfunction": "eV"},
                    id_column="uid",
                    prepare="c2db-ase-db",
                    note=(
                        "user-supplied: the C2DB ASE database (c2db.db, from "
                        "https://cmr.fysik.dtu.dk/c2db/c2db.html after accepting its terms); "
                        "rows with a 'workfunction' key are kept, id = the row's 'uid'; today's "
                        "C2DB has more rows than the paper's 3,814"
                    ),
                    verified="unverified: key names 'workfunction' and 'uid' not checked on a file",
                ),
            ),
        ),
        Dataset(
            name="qmof",
            role="task",
            title="PBE band gaps of metal-organic frameworks (QMOF)",
            prop="PBE band gap, eV",
            size=13058,
            structure="positions/cell lists (authors)",
            splits=("random",),
            citation=(
                "Rosen et al., Matter 4, 1578 (2021), doi:10.1016/j.matt.2021.02.015; QMOF "
                "figshare doi:10.6084/m9.figshare.13147324"
            ),
            licence="QMOF database: CC BY 4.0",
            sources=(
                _mdl(
                    "qmof",
                    "data/MOF/data.json",
                    "eV",
                    "qmof",
                    13058,
                    git_blob="ccf771a51f048b7c9768779a7c6ea1c225200122",
                    verified=(
                        "git blob id from the repository's tree (file over 4 MiB, not checked "
                        "here); its data/MOF/targets.csv (13,058 refcodes, sha256 "
                        "9808a550d5f5555f582203cfc3db43f28fbc16b891e498035ac69481e0235ede) was "
                        "checked, so the count is the authors'"
                    ),
                ),
                QMOF_CIF,
            ),
        ),
        Dataset(
            name="surface",
            role="task",
            title="Adsorption energies on alloy surfaces (Mamun et al., CatHub)",
            prop="adsorption (reaction) energy, eV",
            size=37334,
            structure="positions/cell lists (authors)",
            splits=("random",),
            citation=(
                "Mamun et al., Sci. Data 6, 76 (2019), doi:10.1038/s41597-019-0080-z "
                "(CatHub pubId MamunHighT2019)"
            ),
            licence="Sci. Data article and CatHub data: CC BY 4.0; unverified",
            sources=(
                _mdl(
                    "surface",
                    "data/Surface/data.json",
                    "eV",
                    "surface",
                    None,
                    git_blob="257336ad0bac574abef7a9fccf6c322fb08c610a",
                ),
            ),
        ),
        Dataset(
            name="mp_relaxed",
            role="pretrain",
            title='Pre-training set "MP Relaxed": relaxed MP structures of MPF.2021.2.8',
            prop=None,
            size=62783,
            structure=(
                "pickled dicts keyed by mp-id: lists structure (pymatgen), energy, force, "
                "stress, id per relaxation frame; the relaxed structure is the last frame"
            ),
            splits=(),
            citation=(
                "Chen & Ong, Nat. Comput. Sci. 2, 718 (2022), doi:10.1038/s43588-022-00349-3; "
                "figshare doi:10.6084/m9.figshare.19470599"
            ),
            licence="figshare item licence (CC BY 4.0 expected); unverified",
            sources=(
                Source(
                    name="mpf",
                    kind="download",
                    files=(
                        RemoteFile(
                            "mpf_block_0.p",
                            ("https://figshare.com/ndownloader/files/37587100",),
                            figshare=(MPF_ARTICLE, 37587100),
                        ),
                        RemoteFile(
                            "mpf_block_1.p",
                            ("https://figshare.com/ndownloader/files/37587103",),
                            figshare=(MPF_ARTICLE, 37587103),
                        ),
                    ),
                    fmt="extxyz",
                    store="mp_relaxed",
                    targets=("mpf_energy",),
                    units={"mpf_energy": "eV (MPF's energy of the last frame)"},
                    id_column="material_id",
                    prepare="mpf",
                    count=62783,
                    note=(
                        "MPF.2021.2.8 block_0.p + block_1.p (~1.1 GB of pickles); read once "
                        "with a restricted unpickler and converted to mp_relaxed.extxyz.gz "
                        "(last frame of each trajectory); no pickle reaches a store"
                    ),
                    verified=(
                        "unverified: no copy checked here; checked at download against the md5 "
                        "figshare publishes; that the paper took the last frame is unverified"
                    ),
                ),
                Source(
                    name="mp-api",
                    kind="mp-api",
                    files=(),
                    fmt="extxyz",
                    store="mp_api_relaxed",
                    targets=("formation_energy_per_atom", "band_gap"),
                    units={"formation_energy_per_atom": "eV/atom", "band_gap": "eV"},
                    id_column="material_id",
                    prepare="mp-api",
                    note=(
                        "today's Materials Project relaxed structures via the official client "
                        "(pip install '.[mp]', MP_API_KEY); not the 2021 snapshot"
                    ),
                    verified="not a fixed snapshot: nothing to verify against",
                ),
                MP_RELAXED_SUBSET,
                MP20,
            ),
        ),
    ]
}


def get(name: str) -> Dataset:
    """The registry entry ``name``; KeyError listing the names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(
            f"unknown dataset {name!r}; choose from {', '.join(DATASETS)} "
            f"(fp-build datasets lists them)"
        ) from None
