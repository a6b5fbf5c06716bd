# Two commands on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make run    virtualenv + install + setup + demo data, serves http://127.0.0.1:5000
#   make test   virtualenv + install + the whole test suite
#   make test-fast   the same without the browser, pip and live-server tests
#                    (-m "not browser and not pip and not live")
#   make serve  production server (gunicorn, manage.py serve) on $(HOST):$(PORT); run
#               `manage.py setup` first; put it behind a buffering HTTPS proxy
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 5000
ADMIN_EMAIL ?= admin@example.com
ADMIN_PASSWORD ?= admin-demo-password

WORKERS ?= 2
THREADS ?= 32

.PHONY: run serve test test-fast install clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) manage.py setup --admin-email "$(ADMIN_EMAIL)" --admin-password "$(ADMIN_PASSWORD)"
	$(PY) manage.py demo-data
	@echo
	@echo "  Demo admin login:  $(ADMIN_EMAIL) / $(ADMIN_PASSWORD)"
	@echo "  Open http://$(HOST):$(PORT)/admin/"
	@echo
	$(PY) manage.py run --host $(HOST) --port $(PORT)

serve: install
	$(PY) manage.py serve --host $(HOST) --port $(PORT) --workers $(WORKERS) --threads $(THREADS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not browser and not pip and not live" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
