#!/usr/bin/env bash
# The wheels the GPU machine lacks, for its Python 3.12: it has torch, numpy, pandas, pyarrow,
# scipy, Pillow, PyYAML, safetensors and tqdm, but not PyAV (HiCo writes and reads mp4 with it).
# Run here, where PyPI is reachable, before `bash benchmarks/gpu_check.sh` goes to the GPU with
# `.whl` carried. The folder is kept out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
av_version=$(grep -oP '^av==\K.*' requirements.txt)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "av==${av_version}"
ls -l .whl
