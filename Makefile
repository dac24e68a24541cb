# Corral: the two commands are `make serve` and `make test`. Everything else is a step of them.
SHELL := /bin/bash
SWIFT_FLAGS ?=
VENV := .venv-test
PY := $(VENV)/bin/python
BIN := .build/debug/corral
SYSTEM_PACKAGES := libcurl4-openssl-dev libsqlite3-dev libssl-dev cmake ninja-build python3-venv
# Only the test suite needs these: promtool (package prometheus) checks /metrics; the dashboard
# test drives headless Chromium through chromedriver; the cluster tests start their own
# PostgreSQL server from Debian's binaries (package postgresql).
TEST_PACKAGES := prometheus chromium chromium-driver postgresql

.PHONY: serve test test-quick swift-test-quick python-test-quick test-system system llama build build-tests release venv demo-model format swift-test python-test bench-gguf bench-gateway bench-evals bench-pull bench-finetune bench-tuning bench-auth bench-load bench-quant-ladder bench-cache bench-draft bench-split bench-cluster soak fuzz clean docs

## serve: install what is missing, build, get the demo model, and run on routes.json (on
## routes.offline.json, with a generated random model, when the demo model cannot be fetched)
serve: system llama build demo-model
	@if [ -e models/smollm2-135m-instruct.gguf ]; then config=routes.json; else \
	  echo "serving a generated RANDOM model (routes.offline.json): its answers are noise. Run make serve again with network to get the demo model"; \
	  config=routes.offline.json; fi; \
	$(BIN) serve --config $$config

## test: the whole suite (Swift unit + integration against real llama-server, then Python clients)
test: test-system llama build-tests venv
	$(MAKE) swift-test python-test

## test-quick: a developer's inner loop: the Swift unit tests, then the Python tests without the
## browser, cluster, slow and real-model tiers (docs/testing.md). `make test` is what CI runs.
test-quick: llama build-tests venv
	$(MAKE) swift-test-quick python-test-quick

system:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test-system:
	@$(MAKE) --no-print-directory system SYSTEM_PACKAGES="$(SYSTEM_PACKAGES) $(TEST_PACKAGES)"

llama:
	scripts/install-llama.sh

build:
	swift build $(SWIFT_FLAGS)

build-tests:
	swift build --build-tests $(SWIFT_FLAGS)

venv: $(VENV)/.ready
$(VENV)/.ready: tests/python/requirements.txt tests/harness/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r tests/python/requirements.txt
	touch $@

## demo-model: SmolLM2-135M-Instruct, verified against its pinned digest and linked into models/;
## without network, a generated random model instead
demo-model:
	@scripts/get-demo-model.sh --link models >/dev/null || { \
	  echo "the demo model cannot be fetched: generating a random model, models/random-demo.gguf"; \
	  [ -e models/random-demo.gguf ] || $(BIN) models make-test --out models --name random-demo; }

swift-test:
	CORRAL_PYTHON=$(abspath $(PY)) swift test --skip-build --no-parallel 2>&1 | tee .build/swift-test.log; exit $${PIPESTATUS[0]}

# The Swift suites that start llama-server or PostgreSQL, or fuzz for half a minute: left out
# of swift-test-quick (a suite's name matches the whole test's identifier).
SWIFT_INTEGRATION_SUITES := ErrorShapeTests|OllamaErrorShapeTests|NoBufferingTests|OperationsTests|SchedulingTests|StreamingTests|QualityProbeTests|LlamaServerSmokeTests|EstimatorAccuracyTests|PostgresStoreTests|HostileInputTests

## swift-test-quick: the Swift unit tests (no llama-server, no PostgreSQL); serial like swift-test,
## because the shared-quota tests measure deadlines
swift-test-quick:
	CORRAL_PYTHON=$(abspath $(PY)) swift test --skip-build --no-parallel --skip '$(SWIFT_INTEGRATION_SUITES)'

## python-test: every Python tier (tests/python, docs/testing.md): what `make test` and CI run
python-test:
	CORRAL_BIN=$(BIN) $(PY) -m pytest -q tests/python

## python-test-quick: the Python tests without the browser, cluster, slow and real_model tiers
python-test-quick:
	CORRAL_BIN=$(BIN) $(PY) -m pytest -q tests/python -m "not browser and not cluster and not slow and not real_model"

format:
	swift format format --parallel --in-place --recursive Sources Tests Package.swift

## docs: regenerate docs/configuration.md (from docs/routes.schema.json), docs/api/admin.md (from a
## running Corral's /admin/openapi.json), README.md's module map and BENCHMARKS.md
docs: build venv
	CORRAL_BIN=$(BIN) $(PY) scripts/gen_docs.py
	$(PY) scripts/gen_benchmarks.py

## benchmarks (not part of `make test`): each appends to benchmarks/results.jsonl, then BENCHMARKS.md is regenerated
RELEASE_BIN := .build-release/release/corral

release:
	swift build -c release --scratch-path .build-release --product corral

## bench-evals: a 200-item evaluation run at concurrency 4 vs 1, and Corral's cost per item vs a plain loop
bench-evals: llama release venv
	CORRAL_BIN=$(RELEASE_BIN) $(PY) scripts/bench_evals.py
	$(PY) scripts/gen_benchmarks.py

## bench-pull: a 1 GiB pull through Corral vs curl, hashing cost, RSS, and a remote header read
bench-pull: llama release venv
	CORRAL_BIN=$(RELEASE_BIN) $(PY) scripts/bench_pull.py
	$(PY) scripts/gen_benchmarks.py

## bench-finetune: a 3-epoch fine-tuning job through Corral vs the same llama-finetune run by hand
bench-finetune: llama release venv
	CORRAL_BIN=$(RELEASE_BIN) $(PY) scripts/bench_finetune.py
	$(PY) scripts/gen_benchmarks.py

## bench-tuning: tpe and hyperband against the exhaustive grid on a 48-candidate space, 5 seeds
bench-tuning: llama release venv
	CORRAL_BIN=$(RELEASE_BIN) $(PY) scripts/bench_tuning.py
	$(PY) scripts/gen_benchmarks.py

## bench-cluster: accounts on PostgreSQL vs SQLite, end-to-end requests/s, the routed hop (real PostgreSQL)
bench-cluster: llama release venv
	$(PY) scripts/bench_cluster.py --corral $(RELEASE_BIN)
	$(PY) scripts/gen_benchmarks.py

bench-gguf: llama release venv
	$(PY) scripts/bench_gguf.py --corral $(RELEASE_BIN)
	$(PY) scripts/gen_benchmarks.py

bench-gateway: llama release venv
	swift build -c release --package-path benchmarks/nio-floor
	$(PY) scripts/bench_gateway.py --corral $(RELEASE_BIN) --floor benchmarks/nio-floor/.build/release/nio-floor
	$(PY) scripts/gen_benchmarks.py

bench-auth: llama release venv
	$(PY) scripts/bench_auth.py --corral $(RELEASE_BIN)
	$(PY) scripts/gen_benchmarks.py

## bench-load: Corral (open, keyed, limits, cluster) vs nginx direct vs LiteLLM under wrk at 1-256 connections, and admin queries over a 10M-row ledger
bench-load: release venv
	$(PY) scripts/bench_load.py --corral $(RELEASE_BIN)
	$(PY) scripts/gen_benchmarks.py

## bench-quant-ladder: the quant ladder on the real demo model (dequantized to F32) over an English text
bench-quant-ladder: build venv
	CORRAL_BIN=$(BIN) $(PY) scripts/bench_quant_ladder.py
	$(PY) scripts/gen_benchmarks.py

## bench-cache: warm swaps on the real demo model: the next turn's time to first token after a
## swap with the KV cache restored, against cold and against never swapped, and the swap's cost;
## then 16 conversations on two replicas routed by prompt prefix against round-robin
bench-cache: llama release venv
	CORRAL_BIN=$(RELEASE_BIN) $(PY) scripts/bench_cache.py
	$(PY) scripts/gen_benchmarks.py

## bench-draft: speculative decoding on the real demo model: generation tokens/s with a draft
## (the model itself) against without, side by side; on a CPU this shows the mechanism, not the gain
bench-draft: llama release venv
	CORRAL_BIN=$(RELEASE_BIN) $(PY) scripts/bench_draft.py
	$(PY) scripts/gen_benchmarks.py

## bench-split: the demo model split over two loopback RPC workers against loaded whole, side by
## side; on this CPU it shows the mechanism and the RPC cost, not a gain
bench-split: llama release venv
	CORRAL_BIN=$(RELEASE_BIN) $(PY) scripts/bench_split.py
	$(PY) scripts/gen_benchmarks.py

## fuzz: the GGUF reader and the OpenAI <-> Ollama translators, far longer than `make test` runs them
FUZZ_ITERATIONS ?= 300000
FUZZ_SEED ?= $(shell date +%s)
fuzz: build-tests
	CORRAL_FUZZ_ITERATIONS=$(FUZZ_ITERATIONS) CORRAL_FUZZ_SEED=$(FUZZ_SEED) swift test --skip-build --filter 'mutatedHeaders|TranslatorFuzzTests'

## soak: ten minutes of mixed traffic against a release build; the report goes to BENCHMARKS.md
SOAK_SECONDS ?= 600
soak: llama release venv
	$(PY) scripts/soak.py --corral $(RELEASE_BIN) --seconds $(SOAK_SECONDS); status=$$?; $(PY) scripts/gen_benchmarks.py; exit $$status

clean:
	rm -rf .build .build-release $(VENV) data models
