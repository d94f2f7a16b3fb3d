# Developer tasks. Run inside the project's virtual environment (`.ci/run` builds one from scratch).
.PHONY: lint format typecheck test test-fast gpu-check ci

lint:           ## ruff lint + format check + mypy (what .ci/run checks before the tests)
	ruff check .
	ruff format --check .
	scripts/mypy.sh

format:         ## rewrite the tree in ruff's format and apply ruff's safe fixes
	ruff format .
	ruff check --fix .

typecheck:      ## mypy on the strict packages (pyproject.toml [tool.mypy])
	scripts/mypy.sh

test:           ## the whole suite, as CI runs it (browser, PostgreSQL and Triton-interpreter tests included)
	pytest -q

test-fast:      ## the quick part: no slow, browser, PostgreSQL or Triton tests (a couple of minutes)
	pytest -q -m "not slow and not browser and not postgres and not triton"

gpu-check:      ## on a machine with a CUDA GPU: kernel tests, tile sweep and benchmarks into gpu-out/
	scripts/gpu_check.sh gpu-out

ci:             ## the whole CI script: fresh venv, installs, lint, tests
	bash .ci/run
