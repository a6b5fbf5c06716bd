# Two commands on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make run    virtualenv + install + setup + demo data, serves http://127.0.0.1:5000
#   make test   virtualenv + install + the whole test suite
#   make test-fast   the same without the browser, pip and live-server tests
#                    (-m "not browser and not pip and not live")
#   make serve  production server (gunicorn, manage.py serve) on $(HOST):$(PORT); run
#               `manage.py setup` first; put it behind a buffering HTTPS proxy
#   make translations   re-extract the messages, update every catalogue (cs, sk, de)
#                       and compile them; then translate what is new or fuzzy and run it again
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 5000
ADMIN_EMAIL ?= admin@example.com
ADMIN_PASSWORD ?= admin-demo-password

WORKERS ?= 2
THREADS ?= 32
PYBABEL := $(VENV)/bin/pybabel
LANGUAGES_ := cs sk de
#: catalogue directory, gettext domain, extraction config (one line per catalogue)
CATALOGUES := guest_registration/translations:messages:babel.cfg \
              plugins/backup/translations:backup:plugins/backup/babel.cfg \
              plugins/export_formats/translations:csv_format:plugins/export_formats/babel.cfg

.PHONY: run serve test test-fast install clean translations bench

# constraints.txt: the versions CI tested (docs/testing.md, "Pinned versions")
$(VENV)/.installed: setup.cfg pyproject.toml setup.py plugins/export_formats/_copyrender.c constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade -c constraints.txt pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	$(PY) -m compileall -q guest_registration plugins manage.py  # as a wheel install has it
	touch $@

install: $(VENV)/.installed

# The login is printed with its password only when setup created the admin (or reset
# its password): an admin that already exists keeps its own (setup --reset-password).
run: install
	$(PY) manage.py setup --admin-email "$(ADMIN_EMAIL)" --admin-password "$(ADMIN_PASSWORD)" >$(VENV)/.run-setup.out; \
	  status=$$?; cat $(VENV)/.run-setup.out; exit $$status
	$(PY) manage.py demo-data
	@echo
	@if grep -q -E '^admin user (created|password reset): ' $(VENV)/.run-setup.out; then \
	  echo "  Demo admin login:  $(ADMIN_EMAIL) / $(ADMIN_PASSWORD)"; \
	else \
	  echo "  Admin login:  $(ADMIN_EMAIL) (it existed: its password is unchanged,"; \
	  echo "  ADMIN_PASSWORD was not applied; manage.py setup --reset-password applies it)"; \
	fi
	@echo "  Open http://$(HOST):$(PORT)/admin/"
	@echo
	$(PY) manage.py run --host $(HOST) --port $(PORT)

serve: install
	$(PY) manage.py serve --host $(HOST) --port $(PORT) --workers $(WORKERS) --threads $(THREADS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not browser and not pip and not live" $(PYTEST_ARGS)

# For each catalogue: extract into its .pot, update (or create) the .po of every
# language, compile the .mo files (committed, so a fresh clone needs no compile
# step). guest_registration/translations/{cs,sk}/LC_MESSAGES/flask_security.po is
# not extracted from our code: it fills Flask-Security-Too's missing Czech and Slovak.
translations: install
	@set -e; for entry in $(CATALOGUES); do \
	  dir=$${entry%%:*}; rest=$${entry#*:}; domain=$${rest%%:*}; cfg=$${rest#*:}; mkdir -p $$dir; \
	  $(PYBABEL) -q extract -F $$cfg -k _l -k lazy_gettext -c TRANSLATORS: \
	    --project guest-registration -o $$dir/$$domain.pot . ; \
	  for lang in $(LANGUAGES_); do \
	    if [ -f $$dir/$$lang/LC_MESSAGES/$$domain.po ]; then \
	      $(PYBABEL) -q update -i $$dir/$$domain.pot -d $$dir -D $$domain -l $$lang; \
	    else \
	      $(PYBABEL) -q init -i $$dir/$$domain.pot -d $$dir -D $$domain -l $$lang; \
	    fi; \
	  done; \
	  $(PYBABEL) compile -d $$dir -D $$domain --statistics; \
	done
	$(PYBABEL) compile -d guest_registration/translations -D flask_security --statistics

clean:
	rm -rf $(VENV) .pytest_cache plugins/export_formats/_copyrender.*.so

# make bench: one command per row of issue 26's table, each printing its ratio (baseline
# and ours alternated BENCH_RUNS times, medians and spread); tables in benchmarks/results/
# and the whole output in benchmarks/results/bench.log. Needs PostgreSQL on 127.0.0.1
# (postgres without a password), GNU time, age, moto. Own databases (gr_makebench_*,
# dropped at the end); a row that fails does not stop the others. benchmarks/README.md.
bench: BENCH_GUESTS ?= 1500000
bench: BENCH_EXPORT_ROWS ?= 500000
bench: BENCH_RUNS ?= 3
bench: BENCH_PG ?= postgresql://postgres@127.0.0.1:5432
bench: install
	@mkdir -p benchmarks/results
	@$(PY) -m compileall -q guest_registration plugins manage.py
	@{ date -u '+make bench started %Y-%m-%d %H:%M:%S UTC'; \
	  echo "machine: $$(nproc) CPUs ($$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $$(free -m | awk '/Mem:/{print $$2}') MiB RAM, $$(uname -sr), $$($(PY) -V), $$(psql --version), $$(gzip --version | head -1), age $$(age --version)"; \
	  echo "load average: $$(cut -d' ' -f1-3 /proc/loadavg); BENCH_GUESTS=$(BENCH_GUESTS) BENCH_EXPORT_ROWS=$(BENCH_EXPORT_ROWS) BENCH_RUNS=$(BENCH_RUNS)"; \
	} | tee benchmarks/results/bench.log
	-@echo "== signed + encrypted backup vs pg_dump | gzip" | tee -a benchmarks/results/bench.log; \
	  $(PY) benchmarks/backup_benchmark.py --encrypted --rows $(BENCH_GUESTS) --runs $(BENCH_RUNS) \
	    --replace --database-url $(BENCH_PG)/gr_makebench_backup 2>&1 | tee -a benchmarks/results/bench.log
	-@echo "== the same to S3 (moto), BACKUP_KEEP_LOCAL=0, vs the same to local disk" | tee -a benchmarks/results/bench.log; \
	  $(PY) benchmarks/s3_benchmark.py --encrypted --keep-local 0 --small-part-runs 0 --rows $(BENCH_GUESTS) \
	    --runs $(BENCH_RUNS) --replace --database-url $(BENCH_PG)/gr_makebench_s3 2>&1 | tee -a benchmarks/results/bench.log
	-@echo "== the same with moto over HTTPS (as S3 is reached in production)" | tee -a benchmarks/results/bench.log; \
	  $(PY) benchmarks/s3_benchmark.py --tls --encrypted --keep-local 0 --small-part-runs 0 --rows $(BENCH_GUESTS) \
	    --runs $(BENCH_RUNS) --replace --database-url $(BENCH_PG)/gr_makebench_s3 2>&1 | tee -a benchmarks/results/bench.log
	-@echo "== restore vs psql -f of the unzipped dump" | tee -a benchmarks/results/bench.log; \
	  $(PY) benchmarks/restore_benchmark.py --rows $(BENCH_GUESTS) --runs $(BENCH_RUNS) \
	    --replace --database-url $(BENCH_PG)/gr_makebench_restore 2>&1 | tee -a benchmarks/results/bench.log
	-@echo "== monthly export, CSV and JSON over HTTP, vs COPY ... TO STDOUT" | tee -a benchmarks/results/bench.log; \
	  $(PY) benchmarks/export_benchmark.py --rows $(BENCH_EXPORT_ROWS) --runs $(BENCH_RUNS) \
	    --replace --database-url $(BENCH_PG)/gr_makebench_export 2>&1 | tee -a benchmarks/results/bench.log
	-@echo "== start-up of backup --help and backup-list vs python -c pass" | tee -a benchmarks/results/bench.log; \
	  $(PY) benchmarks/startup_benchmark.py --runs $(BENCH_RUNS) 2>&1 | tee -a benchmarks/results/bench.log
	@date -u '+make bench finished %Y-%m-%d %H:%M:%S UTC; load average '"$$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a benchmarks/results/bench.log
