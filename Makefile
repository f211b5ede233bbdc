# Two commands do all set-up on a fresh machine:
#   make demo   creates the venv, installs, runs the demo sweep, writes its report
#   make test   installs the Debian packages the tests need (as root; else says which),
#               creates the venv if needed, runs the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The venv is rebuilt when the dependency list changes.
DEPS_HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
STAMP := $(VENV)/.deps-$(DEPS_HASH)
STORAGE ?= results
PYTEST_ARGS ?=
# What the tests build through the harness's cache (the glyphs build and the glyph backbone
# of the README's own-data flow, keyed by fonts, settings and versions), kept between runs
# like the venv: a machine's first `make test` builds them (about 100 s).
HARNESS_TEST_CACHE ?= $(HOME)/.cache/metric-harness-tests

.PHONY: venv install system-deps fonts demo test test-fast fuzz bench clean

venv: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@rm -f $(VENV)/.deps-*
	@touch $(STAMP)

# The editable install points at this checkout (a cached venv may have served another).
install: venv
	@$(PY) -m pip install -q --no-deps -e . >/dev/null

# CJK fonts for the glyphs dataset (the demo's data): installed with apt when missing
# and possible (root), else a one-line hint. Without dpkg (macOS, ...) nothing happens here:
# the glyphs build then names `--fonts DIR` for the system's own CJK fonts.
GLYPH_FONTS := fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-wqy-zenhei fonts-wqy-microhei \
	fonts-ipafont-gothic fonts-ipafont-mincho fonts-unfonts-core fonts-hanazono fonts-lxgw-wenkai
fonts:
	@command -v dpkg-query >/dev/null 2>&1 || exit 0; \
	missing=$$(for p in $(GLYPH_FONTS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	missing=$$(echo $$missing); \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing CJK fonts for the glyphs dataset: $$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "hint: the glyphs dataset needs CJK fonts: sudo apt-get install $$missing (or harness data build glyphs --fonts DIR)"; fi

# A second `make demo` continues (or just re-reports) the sweep already in $(STORAGE).
demo: install fonts
	$(VENV)/bin/harness sweep demo --storage $(STORAGE) $(if $(wildcard $(STORAGE)/demo/sweep.json),--resume,)

# Debian packages the tests read or drive (Fashion-MNIST files, headless chromium):
# installed when make runs as root with apt-get, else one line says what to install.
system-deps:
	@bash tools/system-deps.sh

# The suite runs on TEST_WORKERS pytest-xdist workers, a test module to a worker (a module's
# fixtures are built once), the longest modules first (tests/conftest.py orders them; xdist
# would order them by their number of tests); 2 suits the 2-core machine CI and the
# README's figures use.
# More workers start more Ray instances at once: raise it with the cores and memory.
TEST_WORKERS ?= 2
test: system-deps install
	HARNESS_TEST_CACHE=$(HARNESS_TEST_CACHE) $(PY) -m pytest -q --durations=20 -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: system-deps install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The Hypothesis fuzz tests (marker fuzz) with 40 times the examples `make test` gives them
# (still derandomized: the same inputs on every run, so a failure reproduces).
FUZZ_SCALE ?= 40
fuzz: install
	HARNESS_FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest -q -m fuzz $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/memory_step.py
	$(PY) benchmarks/step_syncs.py
	$(PY) benchmarks/eval_speed.py
	$(PY) benchmarks/loader_speed.py
	$(PY) benchmarks/sweep_overhead.py
	$(PY) benchmarks/index_speed.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
