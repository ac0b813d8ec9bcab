# Quick start: `make demo` and `make test` on a fresh machine (network: package registries only).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The default torch wheel (CUDA build) runs on CPU; torch and torchvision are installed as a pair.
# --no-cache-dir: the CUDA build is several GB, and a second copy in pip's cache once filled a CI disk.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test venv browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --no-cache-dir "torch" "torchvision"
	$(BIN)/python -m pip install -q --no-cache-dir -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/medtransfer demo

# The report test opens report.html in headless Chromium (Debian package); without it that test skips.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  ($$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will be skipped"; }

# Two workers, whole test files each (--dist loadfile): many tests wait on subprocesses, servers and
# process groups, so two files at once finish in about 9 minutes where one at a time takes 13 on 2 cores.
# One OpenMP thread per process: two workers (and the processes they start) with torch's default of a
# thread per core oversubscribed the 2 cores, and spinning OpenMP threads then wait on each other
# (the ECG fixture: 27 s alone, 221 s in the suite). The suite: 5.5-7.5 min in three runs, 10-12 min before.
test: venv browser
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) demo-report
