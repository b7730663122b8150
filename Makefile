# Every target bootstraps what it needs: a pinned uv in .tools/, then .venv from uv.lock.
UV_VERSION := 0.13.8
PYTHON ?= python3
UV := .tools/bin/uv
VENV := .venv
SYNCED := $(VENV)/.synced-$(shell cat uv.lock pyproject.toml clients/python/pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)

.PHONY: serve test protos lint bench venv promtool bytecode

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Bytecode is compiled here, once: where PYTHONDONTWRITEBYTECODE is set (as on CI) Python
# never caches it, and every gateway, worker and test process compiled the SDK stack's ~10,000
# modules again on import (~3 s of its ~4 s start).
$(SYNCED): $(UV)
	$(UV) sync --frozen --all-extras --quiet --compile-bytecode
	rm -f $(VENV)/.synced-*
	touch $@

venv: $(SYNCED)

# The repository's own modules, for the same reason (up-to-date files are skipped).
bytecode: $(SYNCED)
	@$(VENV)/bin/python -m compileall -q -j 0 gateway clients/python/qgateway tests bench > /dev/null

## Start the gateway on 127.0.0.1:50051 with embedded defaults (the local fleet; SQLite in ./data).
serve: $(SYNCED) bytecode
	$(VENV)/bin/qgateway serve $(if $(CONFIG),--config $(CONFIG))

## promtool for the observability checks (skipped with a note where it cannot be installed).
promtool:
	@sh scripts/ensure_promtool.sh

## Run the whole test suite.
# Two pytest processes (pytest-xdist), each taking whole modules (module fixtures start their
# gateways once): most tests wait on gateway processes, so the CI machine's two cores were half
# idle with one (15.6 -> 12.7 min). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: $(SYNCED) bytecode promtool
	$(VENV)/bin/pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

## Regenerate clients/python/qgateway/v1 from protos/ (the result is committed).
protos: $(SYNCED)
	$(VENV)/bin/python scripts/gen_protos.py

## buf runs on a descriptor image (googleapis' protos come from googleapis-common-protos).
lint: $(SYNCED)
	$(VENV)/bin/python scripts/gen_protos.py --image $(VENV)/qgateway-v1.binpb
	$(VENV)/bin/buf lint $(VENV)/qgateway-v1.binpb --path qgateway --config protos/buf.yaml
	$(VENV)/bin/buf breaking $(VENV)/qgateway-v1.binpb --against protos/baseline/qgateway-v1.binpb \
		--path qgateway --config protos/buf.yaml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy gateway clients/python/qgateway

## Benchmarks (not tests): print gateway vs direct-SDK ratios measured in the same run.
bench: $(SYNCED)
	$(VENV)/bin/python -m bench.run_bench $(BENCH_ARGS)
