# Two commands for a newcomer: `make demo` runs the broker with sandbox providers on an embedded PostgreSQL;
# `make test` runs the linters and every test. Both create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.package-lock.json
CHROMIUM ?= /usr/bin/chromium
APT := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: demo test lint bench clean assets browser screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,test]'
	touch $(STAMP)

# The DSFR (served with the citizen pages), axe-core (browser tests) and the interop suite's Node packages
# (openid-client, oidc-provider, http-message-signatures: tests/interop), exactly as package-lock.json says.
# The pages work without them, unstyled: for the demo, a missing npm or a failed install is reported, not fatal.
$(NODE_STAMP): package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund; \
	else echo "npm not found: the pages are served without the DSFR styles (install Node.js and npm)" >&2; fi

assets:
	-@$(MAKE) --no-print-directory $(NODE_STAMP)

# The browser tests need Debian's Chromium and axe-core; CI runs as root on a fresh clone, so install what is missing.
browser: $(STAMP)
	@command -v npm >/dev/null 2>&1 || { $(APT) update -qq && $(APT) install -y -qq npm; }
	@$(MAKE) --no-print-directory $(NODE_STAMP)
	@test -x $(CHROMIUM) || { $(APT) update -qq && $(APT) install -y -qq chromium chromium-l10n; }

demo: $(STAMP) assets
	$(BIN)/python -m broker demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint browser
	$(BIN)/pytest -q

# docs/journal.png and docs/consent-screen.png, taken by the browser test of a citizen's path
screenshots: browser
	DLNUF_UPDATE_DOCS=1 $(BIN)/pytest -q tests/browser/test_portal.py -k test_a_citizen_from_login_to_export

bench: $(STAMP)
	$(BIN)/python benchmarks/exchange.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
