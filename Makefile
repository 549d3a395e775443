# Two entry points (README): `make pipeline` runs the main job, `make test` the tests.
# Both install what they need into the current Python first.
PYTHON ?= python3
ARCH ?= nin_xnornet
DATA ?= ../shared/data/cifar10-jpeg.tar.gz
EPOCHS ?=
TRAIN_FLAGS ?=
TORCH_PIN ?= torch==2.13.0

.PHONY: install test lint pipeline native clean

# torch first, pinned: a CPU build that installs in seconds; the project's range accepts it.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_PIN)"
	$(PYTHON) -m pip install -q -e ".[test]"

test: install lint
	$(PYTHON) -m pytest -q -ra

lint:
	$(PYTHON) -m ruff check .

# Train, export every ONNX form, then benchmark every CPU engine against PyTorch on the CIFAR-10
# test set. With CUDA: the seed's recipe (--amp). Without: a short schedule (CPU_EPOCHS epochs,
# stopped at an epoch boundary by CPU_TIME_LIMIT seconds) so the whole target, install included,
# finishes in under 30 minutes on 2 cores; EPOCHS=200 asks for the seed's schedule anyway.
CPU_EPOCHS ?= 2
CPU_TIME_LIMIT ?= 1200
HAS_CUDA = $(shell $(PYTHON) -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null)

pipeline: install
	@if [ "$(HAS_CUDA)" = 1 ]; then \
	  echo "pipeline: CUDA found: training $(ARCH) with the seed's recipe$(if $(EPOCHS), ($(EPOCHS) epochs))"; \
	  $(PYTHON) -m xnorpipe.cli train --arch $(ARCH) --data $(DATA) --amp $(if $(EPOCHS),--epochs $(EPOCHS)) $(TRAIN_FLAGS); \
	else \
	  echo "pipeline: no GPU: a short CPU schedule ($(or $(EPOCHS),$(CPU_EPOCHS)) epochs, at most $(CPU_TIME_LIMIT) s), not the seed's 200 epochs (see README)"; \
	  $(PYTHON) -m xnorpipe.cli train --arch $(ARCH) --data $(DATA) --epochs $(or $(EPOCHS),$(CPU_EPOCHS)) \
	    --time-limit $(CPU_TIME_LIMIT) $(TRAIN_FLAGS); \
	fi
	$(PYTHON) -m xnorpipe.cli export --arch $(ARCH) --form all
	$(PYTHON) -m xnorpipe.cli bench --arch $(ARCH) --engine torch,ort,ort-xnor --data $(DATA) \
	  --batch-size 100 --iters 20 --warmup 2

# Native libraries only, into build/dev (found by xnorpipe.native without reinstalling).
native:
	cmake -S plugins -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build/dev

clean:
	rm -rf build dist *.egg-info
