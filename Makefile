# facekd: `make demo` sets up .venv on first use and runs the demo pipeline;
# `make test` sets up .venv on first use and runs lint + the test suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.facekd-installed

.PHONY: setup demo test lint real ablation clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "facekd needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# MTCNN weights for `facekd align` ship in this MIT-licensed wheel; it pins an old torch,
	# so it is installed without its dependencies (it runs with ours: tests/test_align.py).
	$(BIN)/pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/facekd run pipelines/demo.yaml

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

# The spine's acceptance run on the real faces in ../shared (2 CPU cores: about 40 minutes).
real: $(STAMP)
	$(BIN)/facekd run pipelines/mobilefacenet_to_binary.yaml \
	  --set data.train=../shared/faces/glint24 --set data.eval=../shared/faces/celeba150 \
	  --set teacher.checkpoint=../shared/weights/mobilefacenet_casia_068.ckpt

# Distillation methods vs. no teacher on the real faces (docs/methods.md).
ablation: $(STAMP)
	$(BIN)/facekd ablate pipelines/ablation_kd.yaml

# Larq's own models for benchmarks/larq_native.py only: installed without dependencies into
# .larq-zoo/ (larq-zoo's own requirements would downgrade protobuf under TensorFlow 2.19).
larq-zoo: $(STAMP)
	$(BIN)/pip install --quiet --no-deps --target .larq-zoo larq==0.14.0 larq-zoo==2.4.0 \
	  zookeeper==1.4.0 typeguard==4.6.1 terminaltables==3.1.10 tensorflow-datasets==4.9.7 \
	  tensorflow-metadata==1.16.1 etils==1.12.2 promise==2.3 importlib-resources==7.1.0 \
	  toml==0.10.2 immutabledict==4.3.1

clean:
	rm -rf runs .pytest_cache .ruff_cache
