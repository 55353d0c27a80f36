#!/usr/bin/env bash
# Dialect 2: the streaming call, server-sent events: token events, then `done` (or `error`).
set -euo pipefail
IM_URL=${IM_URL:-http://localhost:8000}
IM_KEY=${IM_KEY:-im-demo-key}

curl -N -X POST "$IM_URL/v1/infer/stream" \
  -H "Content-Type: application/json" \
  -H "X-API-Key: $IM_KEY" \
  -d '{"model": "llama-3.2-3b-instruct", "prompt": "Write a haiku about GPUs", "params": {"max_new_tokens": 64, "temperature": 0.7}}'
