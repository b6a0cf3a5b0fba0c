#!/usr/bin/env bash
# The Python packages benchmark/perf/gpu.sh needs that the lent GPU machine's image lacks (it has
# torch, transformers, accelerate, peft; not diffusers, hydra/omegaconf or bitsandbytes), downloaded
# here as wheels into .whl/ (git-ignored) for a device call to carry. About 50 MB: with the
# repository that stays under a call's 64 MiB. Run once, here, from the repository root:
#   bash benchmark/perf/wheels.sh
# The device command then begins with the install (docs/perf.md, "Round two").
set -eu
DEST=${DEST:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
$PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" \
    diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1 bitsandbytes==0.50.2
# omegaconf's parser runtime is published as a source archive only: build its pure-Python wheel
$PY -m pip wheel --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
ls -l "$DEST"
du -sh "$DEST"
