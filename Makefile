# The two commands of the README. Both make (or reuse) .venv and install everything first.
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) tools/train.py -opt options/demo_spn.yml

test: setup
	$(PY) -m pytest -q tests
