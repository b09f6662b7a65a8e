#!/usr/bin/env bash
# Install tandem and what it needs into the active Python environment.
#
# torch is only needed to export and distill models. A plain `torch`
# requirement pulls a multi-GB CUDA build from PyPI, so torch is installed
# first, explicitly: the CUDA build where an NVIDIA GPU is present, the CPU
# build otherwise. Everything else then sees torch already satisfied.
#
#   bash scripts/install.sh            # serving + export + offline models + dev tools
#                                      # + the LangChain/LlamaIndex/Haystack retriever extras
#   bash scripts/install.sh --serve    # serving only: no torch, no transformers
#   (add Milvus serving to a --serve install with: pip install -e ".[milvus]")
#
# Environment knobs:
#   TORCH_CPU_VERSION  torch version for CPU machines (default 2.13.0)
#   TORCH_CPU_INDEX    index with CPU wheels, e.g. https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."

serve_only=0
[[ "${1:-}" == "--serve" ]] && serve_only=1

gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
fi

pip() { python -m pip "$@"; }
pip install -q --upgrade pip

extras="offline-models"
if [[ $serve_only == 0 ]]; then
  if [[ $gpu == 1 ]]; then
    echo "install: NVIDIA GPU found, installing the CUDA build of torch"
    pip install -q "torch>=2.4"
  else
    echo "install: no GPU, installing the CPU build of torch ${TORCH_CPU_VERSION:-2.13.0}"
    pip install -q "torch==${TORCH_CPU_VERSION:-2.13.0}" ${TORCH_CPU_INDEX:+--index-url "$TORCH_CPU_INDEX"}
  fi
  # ray + milvus + milvus-lite: distributed indexing and the Milvus tier, tested in CI
  # (about 500 MB more: ray, pandas, milvus-lite's engine).
  extras="$extras,export,eval,dev,langchain,llamaindex,haystack,ray,milvus,milvus-lite"
fi
[[ $gpu == 1 ]] && extras="$extras,gpu"

pip install -q -e ".[${extras}]"

if [[ $gpu == 1 ]]; then
  # onnxruntime and onnxruntime-gpu (faiss-cpu and faiss-gpu) ship the same module: keep the GPU one.
  pip uninstall -q -y onnxruntime faiss-cpu || true
  pip install -q --force-reinstall --no-deps "onnxruntime-gpu>=1.20,<1.27" "faiss-gpu-cu12>=1.11"
fi
python -c "import onnxruntime, faiss; print('install: onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers(), '| faiss', faiss.__version__)"
