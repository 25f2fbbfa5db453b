#!/usr/bin/env bash
# The whole ALOE loop on one machine, every stage into one run root, small sizes:
#   personas -> trees -> SFT -> DPO -> serve (Ray Serve, OpenAI API) -> ALOE benchmark, SFT vs DPO.
# Usage: scripts/full_loop.sh [RUN_ID] [OUTPUT]      (about 14 minutes on 2 CPU cores)
# Each stage resumes if the script is run again with the same RUN_ID.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-loop-$(date +%Y%m%d-%H%M%S)}
OUT=${2:-./aloe-data}
ROOT="$OUT/$RUN"
PY=${PYTHON:-.venv/bin/python}
PORT=${PORT:-8000}
export HF_HUB_OFFLINE=1

stage() { echo; echo "=== $* ==="; }

stage "1/6 persona pool (1 round)"
$PY jobs/generate_personas.py --run_id="$RUN" --output="$OUT" --profiles.max_rounds=1 --personalities.max_rounds=1

stage "2/6 conversation trees from the pool's train split"
$PY jobs/generate_trees.py --run_id="$RUN" --output="$OUT" --num_trees=8 --tree.max_turns=3 \
    --personas.table="$ROOT/personas" --personas.split=train

# The embedded default's short replies from the 135M model are mostly cut at max_tokens (the
# trees' jobs/generate_trees/quality.md says how many), which training drops by default: keep them
# here, where the point is to exercise every stage, not to train on good data.
stage "3/6 SFT (LoRA, 2 Ray Train workers)"
$PY jobs/train_sft.py --run_id="$RUN" --output="$OUT" --data.trees="$ROOT" --optim.max_steps=4 \
    --optim.max_length=1024 --keep_truncated=true

stage "4/6 DPO from the SFT model"
$PY jobs/train_dpo.py --run_id="$RUN" --output="$OUT" --data.trees="$ROOT" --from_sft="$ROOT" \
    --optim.max_steps=4 --optim.max_length=1024 --keep_truncated=true

stage "5/6 serve the SFT model with the DPO adapter (OpenAI-compatible, port $PORT)"
cfg=$(mktemp --suffix=.yaml)
cat > "$cfg" <<EOF
http_options: {host: 127.0.0.1, port: $PORT, request_timeout_s: 300}
applications:
  - name: aloe
    route_prefix: /
    import_path: serving.app:build_app
    args:
      model: $(realpath "$ROOT/models/sft")
      served_model_name: sft
      adapters: [{name: dpo, path: $(realpath "$ROOT/adapters/dpo")}]
EOF
.venv/bin/serve run "$cfg" > "$ROOT/serve.log" 2>&1 &
SERVE=$!
trap 'kill -TERM $SERVE 2>/dev/null || true; wait $SERVE 2>/dev/null || true' EXIT   # serve run stops its Ray instance (SIGINT is ignored by background jobs)
for _ in $(seq 180); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    sleep 2
done
curl -sf "http://127.0.0.1:$PORT/v1/models"; echo

stage "6/6 ALOE benchmark against the endpoint: sft vs dpo (2 held-out personas x 3 turns)"
for model in sft dpo; do
    $PY jobs/eval_aloe.py --run_id="$RUN" --output="$OUT" --name="$model" --num_personas=2 --turns=3 \
        --personas.table="$ROOT/personas" \
        --engines.api.backend=openai --engines.api.model="$model" \
        --engines.api.base_url="http://127.0.0.1:$PORT/v1" --roles.model.engine=api
done
$PY jobs/eval_aloe.py compare "$ROOT/eval/sft" "$ROOT/eval/dpo" --output "$ROOT/compare"
echo; echo "everything is under $ROOT"
