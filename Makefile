# `make demo` and `make test` work on a machine with nothing installed: they create .venv and install pinned deps.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)

.PHONY: demo test bench install lock clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || (apt-get update && apt-get install -y python3 python3-venv)
	$(PYTHON) -m venv $(VENV) || (rm -rf $(VENV) && apt-get update && apt-get install -y python3-venv \
		&& $(PYTHON) -m venv $(VENV))

FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	@# constraints.txt pins every transitive dependency too (regenerate with `make lock`).
	$(BIN)/pip install -c constraints.txt -e '.[test,data]'
	@# Fashion-MNIST comes as a Debian package; without apt (or as non-root) only `--dataset fashion` is affected.
	@test -f $(FASHION) || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "warning: could not install dataset-fashion-mnist; 'contime run psmnist --dataset fashion' needs it"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/contime run delay

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	THP_MEM_ALLOC_ENABLE=1 $(BIN)/python benchmarks/lmu_modes.py

lock: $(STAMP)
	$(BIN)/pip freeze --all --exclude-editable | grep -v '^pip==' | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' > constraints.txt

clean:
	rm -rf $(VENV) runs build src/*.egg-info
