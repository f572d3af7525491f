#!/usr/bin/env bash
# Prepare, on a project machine (package registries reachable), what a lent GPU machine needs to
# run experiments/gpu_session.sh: that machine has Python 3.12 with torch, numpy, scipy, pandas,
# matplotlib, scikit-learn, pyyaml, click, tqdm, joblib and tensorboard, but no lmdb or
# pymatgen, no internet and no ../shared. This writes (into .devkit/, git-ignored):
#   .devkit/whl/       cp312 manylinux wheels of what is missing (versions pinned to .venv's)
#   .devkit/datasets/  the raw dataset files of ../shared/datasets (2.5 MiB)
# Then, with the device tool:  run(command="bash experiments/gpu_session.sh",
#                                  carry=[".devkit"], timeout_s=600)
# Everything travels with the working tree (64 MiB in all: the kit is about 14 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-.devkit}
PY=${PY:-.venv/bin/python}
MIRROR=${MIRROR:-../shared/datasets}

pinned() {  # NAME -> NAME==VERSION as installed in .venv (NAME alone if it is not)
    local v
    v=$("$PY" -m pip show "$1" 2>/dev/null | awk '/^Version:/{print $2}')
    if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}

# What the builder and the trainer import that the device image lacks. pymatgen's own
# dependencies that only its analysis modules import (plotly, bibtexparser) are left out.
PACKAGES="lmdb pymatgen pymatgen-core monty ruamel.yaml ruamel.yaml.clib spglib uncertainties
palettable orjson ase"
specs=()
for p in $PACKAGES; do specs+=("$(pinned "$p")"); done

rm -rf "$KIT/whl"
mkdir -p "$KIT/whl" "$KIT/datasets"
platforms=()
for tag in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
    manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$KIT/whl" "${specs[@]}"
cp "$MIRROR"/*.gz "$KIT/datasets/"
grep -qx '/.devkit/' .gitignore || echo '/.devkit/' >> .gitignore
du -sh "$KIT/whl" "$KIT/datasets"
ls "$KIT/whl"
# what travels to the device: tracked and untracked-not-ignored files, plus the carried kit;
# the device tool refuses more than 64 MiB
tree_bytes=$({ git ls-files -z --cached --others --exclude-standard \
    | xargs -0 stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}')
kit_bytes=$(du -sb "$KIT" | cut -f1)
total_mib=$(( (tree_bytes + kit_bytes) / 1048576 ))
echo "upload: working tree $(( tree_bytes / 1048576 )) MiB + kit $(( kit_bytes / 1048576 )) MiB = ${total_mib} MiB of 64"
if (( tree_bytes + kit_bytes > 64 * 1048576 )); then
    echo "too large for the device machine: git-ignore bulky run files (checkpoints) first" >&2
    exit 1
fi
