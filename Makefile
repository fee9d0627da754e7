# Two commands do all the set-up on a fresh machine:
#   make demo   the whole path on a built-in dataset (digits): train, optimize, bench, report
#   make test   run the test suite
# Both create .venv and install the project when missing; `make test` also installs Chromium (for the report
# and web tests), Node.js and npm (the web page's onnxruntime-web and the tests' puppeteer-core come from npm)
# and PostgreSQL (the storage tests start a server of their own), Debian's packages, when missing and this
# user may install packages, else says how.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel on this machine's disk. A bare `torch` requirement resolves to a multi-GB CUDA build,
# so the set-up pins it here; GPU users override it: make demo TORCH="torch==2.13.0 --index-url ..."
TORCH  ?= torch==2.13.0

.PHONY: demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	rm -rf runs/demo-digits
	$(BIN)/trainfer run examples/digits.yaml --out runs/demo-digits

# The set-up step of `make test`: the Python packages, the browser the report and web tests render in, the npm
# packages of the web page and its tests, and the PostgreSQL server binaries the storage tests start.
test: $(BIN)/.installed
	scripts/ensure-chromium
	scripts/ensure-web
	scripts/ensure-postgresql
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q --durations=20

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
