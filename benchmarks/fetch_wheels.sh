#!/usr/bin/env bash
# The packages the GPU machine lacks, for its Python 3.12, packed as one file: .whl/site-py312.tar.xz
# (kept out of git). Run here, where PyPI is reachable, before `bash benchmarks/gpu_check.sh` goes
# to the GPU with `.whl` carried; the script unpacks it into /tmp/site there.
#
# The GPU machine has torch, numpy, pandas, pyarrow, scipy, scikit-learn, numba, Pillow, PyYAML,
# safetensors, tqdm, httpx, jinja2, rich and onnx(runtime), but not PyAV, pydicom,
# gradio with its server (fastapi, starlette, uvicorn, pydantic), plotly or umap-learn (its own
# huggingface-hub may be older than gradio_client needs, so that is carried too). As wheels
# those are 85 MB: more than one device call may carry (64 MiB, the repository's 6 MB included).
# Installed, stripped of what the app never loads (gradio's server-side-rendering bundle and
# example media, plotly's JupyterLab extension, Jupyter's share folder) and packed with xz, they
# are about 50 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pin() { grep -oP "^$1==\K\S+" requirements.txt; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
platforms=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
python3 -m pip download -q "${platforms[@]}" -d "$stage/wheels" "gradio==$(pin gradio)" "plotly==$(pin plotly)" \
    "umap-learn==$(pin umap-learn)" "av==$(pin av)" "pydicom==$(pin pydicom)" "nvidia-ml-py==$(pin nvidia-ml-py)"
# what the GPU machine has (its own builds, some against its torch and numpy): not carried
have='torch|triton|nvidia_(?!ml_py)|numpy|scipy|pandas|pyarrow|scikit_learn|numba|llvmlite|pillow|onnx|onnxruntime|sympy|mpmath|networkx|ml_dtypes|protobuf|joblib|threadpoolctl|pyyaml|safetensors|tqdm|hf_xet|fsspec|filelock|jinja2|markupsafe|setuptools|pygments|rich|markdown_it_py|mdurl|narwhals|packaging|typing_extensions|python_dateutil|six|certifi|idna|anyio|h11|httpx|httpcore|click|typer|shellingham|annotated_doc|cuda'
find "$stage/wheels" -name '*.whl' | { grep -P "/($have)-" || true; } | xargs -r rm
python3 -m pip install -q --no-deps --no-compile --target "$stage/site" "${platforms[@]}" "$stage"/wheels/*.whl
rm -rf "$stage/site/gradio/templates/node" "$stage/site/gradio/media_assets" "$stage/site/plotly/labextension" \
    "$stage/site/share" "$stage/site/bin"
rm -f .whl/*.whl
tar -C "$stage/site" -cf - . | xz -9 -T0 > .whl/site-py312.tar.xz
ls "$stage/wheels" | sed 's/-py.*//; s/-cp.*//' | tr '\n' ' '; echo
ls -l .whl
