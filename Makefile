# Two entry points (README): `make pipeline` runs the main job, `make test` the tests.
# Both install what they need into the current Python first.
PYTHON ?= python3
ARCH ?= nin_xnornet
DATA ?= ../shared/data/cifar10-jpeg.tar.gz
EPOCHS ?=
TRAIN_FLAGS ?=
TORCH_PIN ?= torch==2.13.0

.PHONY: install test pipeline native clean

# torch first, pinned: a CPU build that installs in seconds; the project's range accepts it.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_PIN)"
	$(PYTHON) -m pip install -q -e ".[test]"

test: install
	$(PYTHON) -m pytest -q -ra

# Train (the seed's recipe unless EPOCHS/TRAIN_FLAGS say otherwise), export every ONNX form,
# then benchmark every CPU engine against PyTorch on the CIFAR-10 test set.
pipeline: install
	$(PYTHON) -m xnorpipe.cli train --arch $(ARCH) --data $(DATA) $(if $(EPOCHS),--epochs $(EPOCHS)) $(TRAIN_FLAGS)
	$(PYTHON) -m xnorpipe.cli export --arch $(ARCH) --form all
	$(PYTHON) -m xnorpipe.cli bench --arch $(ARCH) --engine torch,ort,ort-xnor --data $(DATA)

# Native libraries only, into build/dev (found by xnorpipe.native without reinstalling).
native:
	cmake -S plugins -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build/dev

clean:
	rm -rf build dist *.egg-info
