# The two commands of the README. Both make (or reuse) .venv and install everything first.
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) tools/train.py -opt options/demo_spn.yml

# two pytest workers (the machine's 2 cores), each test file on one of them, so module fixtures are built once
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile tests
