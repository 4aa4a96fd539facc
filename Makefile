# The README's two set-up commands:
#   make serve   install everything into .venv, then serve the embedded tiny checkpoint
#   make test    install everything (venv, Prometheus for the deploy tests), then run the tests
.PHONY: serve test test-fast test-engine lint audit fuzz-long bench-flops bench-overhead bench-ttft \
        bench-throughput bench-load bench-followup \
        audit-latest contract demo venv prometheus clean

PY := .venv/bin/python

venv:
	bash scripts/bootstrap.sh

prometheus:
	bash scripts/install_prometheus.sh

serve: venv
	.venv/bin/earlytom-serve $(ARGS)

demo: venv
	.venv/bin/earlytom-demo

# Two pytest processes: the in-process vLLM engine pins torch's thread count for the rest of
# its process, so the engine tests run after (and apart from) the pure-Python ones.
test: venv prometheus
	bash scripts/run_tests.sh

test-fast: venv
	$(PY) -m pytest -m "not engine" -q

test-engine: venv prometheus
	$(PY) -m pytest -m engine -q

lint: venv
	.venv/bin/ruff check .

bench-flops: venv
	$(PY) -m benchmarks.flops

bench-overhead: venv
	$(PY) -m benchmarks.compress_overhead

bench-ttft: venv
	$(PY) -m benchmarks.ttft

# The project's vLLM contract (scripts/vllm_contract.py) against the installed vLLM and the
# 0.33/0.34 sources (fetched once into ~/.cache/earlytom-vllm/vllm-sources); also in `make test`.
contract: venv
	$(PY) scripts/vllm_contract.py

# Known vulnerabilities of the installed environment (needs the PyPI JSON API or OSV; --strict
# fails when a package could not be checked, so no network means a red build, not a green one).
audit: venv
	$(PY) -m pip_audit --strict --progress-spinner off

# Where pip-audit cannot reach per-release data: PyPI's project JSON for every installed
# distribution that is the latest release (docs/reliability.md says what it covers).
audit-latest: venv
	$(PY) scripts/audit_latest.py

# Longer fuzzing: schemathesis against the fake-backend front end at 300 cases per operation and
# phase (SCHEMATHESIS_SEED=N for another seed), and the fuzzers of test_frontend_fuzz.py at 1000
# examples per property.
fuzz-long: venv
	SCHEMATHESIS_EXAMPLES=300 $(PY) -m pytest -q tests/server/test_frontend_schemathesis.py \
		-k conforms
	FUZZ_EXAMPLES=1000 $(PY) -m pytest -q tests/server/test_frontend_fuzz.py

bench-load: venv
	$(PY) -m benchmarks.load

bench-throughput: venv
	$(PY) -m benchmarks.throughput

bench-followup: venv
	$(PY) -m benchmarks.followup

clean:
	rm -rf .venv .pytest_cache .ruff_cache build *.egg-info
