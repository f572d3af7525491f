# fingerprint-pretrain: every entry point a user or CI needs.
#   make example   install into .venv and run the main job on the bundled example
#   make test      install (if needed) and run the whole test suite (what CI runs)
#   make bench     run the benchmarks, results in bench/results/
#   make lint      ruff

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXAMPLE_OUT ?= out/example
EXAMPLE_MODEL ?= --hidden-channels 32 --num-layers 2 --num-workers 0 --no-progress

.PHONY: install example test test-fast bench lint clean experiment results

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel on this machine, never a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	# test oracles whose declared dependencies would pull another torch / all of Lightning (SchNetPack:
	# its PaiNN only, loaded without its package __init__, tests/trainer/test_backbones.py)
	$(BIN)/pip install --quiet --no-deps pyxtal-ff==0.2.3 torchmd-net==3.1.0 schnetpack==2.1.1
	touch $(STAMP)

# The compiled EAD and GMP kernels are optional (a failed build only warns): require them in
# the tests wherever a C compiler exists, and rebuild them when a source changes (an editable
# install does not).
FP_REQUIRE_KERNEL ?= $(shell command -v $(CC) >/dev/null 2>&1 && echo 1 || echo 0)
KERNEL := $(VENV)/.ead_kernel

$(KERNEL): $(STAMP) setup.py builder/descriptors/_ead_kernel.c builder/descriptors/_gmp_kernel.c \
		builder/descriptors/_wacsf_kernel.c
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(KERNEL)

install: $(KERNEL)

example: $(KERNEL)
	rm -rf $(EXAMPLE_OUT)
	mkdir -p $(EXAMPLE_OUT)
	$(BIN)/fp-build build examples/mp_20_sample.csv --out $(EXAMPLE_OUT)/mp_sample.lmdb \
		--target formation_energy_per_atom --target-unit formation_energy_per_atom=eV/atom \
		--target band_gap --target-unit band_gap=eV --jobs 2 \
		--descriptor wacsfset1 --descriptor eadset1
	$(BIN)/fp-build add $(EXAMPLE_OUT)/mp_sample.lmdb --descriptor gmpset1 --jobs 2
	$(BIN)/fp-build info $(EXAMPLE_OUT)/mp_sample.lmdb
	$(BIN)/fp-build verify $(EXAMPLE_OUT)/mp_sample.lmdb --quiet
	# a short pre-train (EAD labels) -> fine-tune (band gap) with a small model
	$(BIN)/fp-train pretrain --store $(EXAMPLE_OUT)/mp_sample.lmdb --descriptor eadset1 \
		--run-dir $(EXAMPLE_OUT)/pretrain $(EXAMPLE_MODEL) --epochs 3 --batch-size 8
	$(BIN)/fp-train finetune --store $(EXAMPLE_OUT)/mp_sample.lmdb --target band_gap \
		--init $(EXAMPLE_OUT)/pretrain/best.pt --run-dir $(EXAMPLE_OUT)/finetune \
		$(EXAMPLE_MODEL) --epochs 5 --batch-size 8
	# a shipped model: fine-tune the zoo's EAD-pre-trained ET (no model flags: they come with
	# it), then predict the band gap of structures it never saw, from their CIFs
	$(BIN)/fp-train models
	$(BIN)/fp-train finetune --store $(EXAMPLE_OUT)/mp_sample.lmdb --target band_gap \
		--init et-small-mp20-eadset1 --run-dir $(EXAMPLE_OUT)/finetune-zoo \
		--num-workers 0 --no-progress --epochs 5 --batch-size 8
	$(BIN)/fp-train predict --checkpoint $(EXAMPLE_OUT)/finetune-zoo/best.pt \
		--out $(EXAMPLE_OUT)/perovskite_gaps.csv examples/perov_5_sample.csv \
		--id-column castelli_id --quiet
	head -4 $(EXAMPLE_OUT)/perovskite_gaps.csv

test: $(KERNEL)
	FP_REQUIRE_KERNEL=$(FP_REQUIRE_KERNEL) $(BIN)/python -m pytest -q

test-fast: $(KERNEL)
	FP_REQUIRE_KERNEL=$(FP_REQUIRE_KERNEL) $(BIN)/python -m pytest -q -m "not slow"

# Oracles that may live in their own environment (PyXtal_FF, GMPFeaturizer built from source):
# the interpreter named by $FP_PYXTAL_PYTHON / $FP_GMPFEATURIZER_PYTHON, else this venv's when
# it imports them; a comparison whose oracle is missing is skipped with a note saying so.
bench: $(KERNEL)
	OMP_NUM_THREADS=1 $(BIN)/python bench/bench_build.py
	$(BIN)/python bench/bench_descriptors.py --out bench/results/descriptors.json
	$(BIN)/python bench/bench_gmp.py --out bench/results/gmp.json
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_fetch.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/bench_scaling.py
	$(BIN)/python bench/summarize.py

# The paper's experiment at CPU scale (needs `make datasets`); resumable: rerun to continue.
EXPERIMENT ?= experiments/cpu_small.yaml
EXPERIMENT_RUNS ?= experiments/runs/cpu-small
experiment: $(KERNEL)
	$(BIN)/fp-train sweep $(EXPERIMENT) --runs-dir $(EXPERIMENT_RUNS) --parallel 2

results: $(KERNEL)
	$(BIN)/fp-train report $(EXPERIMENT_RUNS) --out docs/results.md

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf out .pytest_cache

# The paper's datasets as ready stores (docs/datasets.md): every registry entry that can be had is
# downloaded (or found locally), checked, built with all nine label sets, verified and split.
# Downloads go to $FP_DATA/downloads, stores to $FP_DATA/stores (FP_DATA defaults to
# ~/.cache/fingerprint-pretrain); re-running skips complete stores. Where ../shared/datasets
# exists (the project's machines, which have no internet) it is the mirror and nothing is
# downloaded; elsewhere pass a mirror with DATASETS_ARGS="--from-dir DIR".
DATASETS_MIRROR ?= $(wildcard ../shared/datasets)
DATASETS_ARGS ?= $(if $(DATASETS_MIRROR),--from-dir $(DATASETS_MIRROR) --offline)
DATASETS_JOBS ?= -1
.PHONY: datasets
datasets: $(STAMP)
	$(BIN)/fp-build make-datasets $(DATASETS_ARGS) --jobs $(DATASETS_JOBS) \
		$(if $(DATASETS_OUT),--out $(DATASETS_OUT))
