# Two commands for a newcomer: `make demo` runs the broker with sandbox providers on an embedded PostgreSQL;
# `make test` runs the linters and every test. Both create .venv and install what they need first, from the hashed
# lock files in requirements/ (`make lock` regenerates them from pyproject.toml): `make demo` the runtime only,
# `make test` the development and test tools on top.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet
UV := $(BIN)/uv --quiet pip
RUNTIME := $(VENV)/.runtime
DEV := $(VENV)/.dev
NODE_RUNTIME := node_modules/.dlnuf-runtime
NODE_DEV := node_modules/.dlnuf-dev
CHROMIUM ?= /usr/bin/chromium
APT := DEBIAN_FRONTEND=noninteractive apt-get
LOCK := $(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 \
	--custom-compile-command 'make lock'

.PHONY: demo test lint audit lock bench clean assets browser screenshots

# --require-hashes: every wheel is the one the lock names. pip (whatever the Python came with) installs only
# build.txt: pip, setuptools and uv, hashed; uv installs the rest, in parallel, in seconds where pip takes minutes.
# The project itself is the one unhashed install, from this directory.
$(RUNTIME): requirements/build.txt requirements/runtime.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --require-hashes -r requirements/build.txt
	$(UV) install --python $(BIN)/python --require-hashes -r requirements/runtime.txt
	$(UV) install --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $@

$(DEV): $(RUNTIME) requirements/dev.txt
	$(UV) install --python $(BIN)/python --require-hashes -r requirements/dev.txt
	touch $@

# The DSFR (served with the citizen pages) is the one runtime Node package; axe-core (browser tests) and the interop
# suite's packages (openid-client, oidc-provider, http-message-signatures: tests/interop) are devDependencies, for
# `make test` only, exactly as package-lock.json says. `npm ci` empties node_modules first, stamps included.
# The pages work without the DSFR, unstyled: for the demo, a missing npm or a failed install is reported, not fatal.
$(NODE_RUNTIME): package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --omit=dev --no-audit --no-fund && touch $@; \
	else echo "npm not found: the pages are served without the DSFR styles (install Node.js and npm)" >&2; fi

$(NODE_DEV): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $(NODE_RUNTIME) $@

assets:
	-@$(MAKE) --no-print-directory $(NODE_RUNTIME)

# The browser tests need Debian's Chromium and axe-core, the TLS test Debian's nginx (tests/deploy/test_nginx.py),
# the pooler test Debian's PgBouncer (tests/deploy/test_pgbouncer.py), the alerting rules' test promtool (Debian's
# prometheus, whose server the test does not need: stopped and disabled where systemd started it;
# tests/deploy/test_prometheus.py);
# CI runs as root on a fresh clone, so install what is missing.
browser: $(DEV)
	@command -v npm >/dev/null 2>&1 || { $(APT) update -qq && $(APT) install -y -qq npm; }
	@$(MAKE) --no-print-directory $(NODE_DEV)
	@test -x $(CHROMIUM) || { $(APT) update -qq && $(APT) install -y -qq chromium chromium-l10n; }
	@test -x /usr/sbin/nginx || { $(APT) update -qq && $(APT) install -y -qq nginx; }
	@test -x /usr/sbin/pgbouncer || { $(APT) update -qq && $(APT) install -y -qq pgbouncer; }
	@test -x /usr/bin/promtool || { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends prometheus && \
		{ ! test -d /run/systemd/system || systemctl disable --now prometheus; }; }

demo: $(RUNTIME) assets
	$(BIN)/python -m broker demo

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint audit browser
	$(BIN)/pytest -q

# Known advisories against the locked versions (pip-audit, the index's advisory data). Found ones fail; what could
# not be audited is named "NOT AUDITED" and does not fail the run (scripts/audit_dependencies.py says why).
audit: $(DEV)
	$(BIN)/python scripts/audit_dependencies.py requirements/runtime.txt requirements/dev.txt

# Regenerate the hashed lock files after a change of pyproject.toml (newest versions allowed by its floors).
lock: $(DEV)
	$(LOCK) requirements/build.in -o requirements/build.txt
	$(LOCK) pyproject.toml -o requirements/runtime.txt
	$(LOCK) pyproject.toml --extra dev --extra test -c requirements/runtime.txt -o requirements/dev.txt

# docs/journal.png and docs/consent-screen.png, taken by the browser test of a citizen's path
screenshots: browser
	DLNUF_UPDATE_DOCS=1 $(BIN)/pytest -q tests/browser/test_portal.py -k test_a_citizen_from_login_to_export

bench: $(DEV)
	$(BIN)/python benchmarks/exchange.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
