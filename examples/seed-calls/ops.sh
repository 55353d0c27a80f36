#!/usr/bin/env bash
# Dialect 3: per-backend status, and model management with a key of the `admin` scope
# (IM_ADMIN_KEY). One JSON answer per line.
set -euo pipefail
IM_URL=${IM_URL:-http://localhost:8000}
IM_KEY=${IM_KEY:-im-demo-key}
IM_ADMIN_KEY=${IM_ADMIN_KEY:-$IM_KEY}

curl "$IM_URL/status" -H "X-API-Key: $IM_KEY"
echo

curl -X POST "$IM_URL/models/load" \
  -H "Content-Type: application/json" \
  -H "X-API-Key: $IM_ADMIN_KEY" \
  -d '{"model": "llava-1.6-mistral-7b"}'
echo

curl -X POST "$IM_URL/models/unload" \
  -H "Content-Type: application/json" \
  -H "X-API-Key: $IM_ADMIN_KEY" \
  -d '{"model": "llava-1.6-mistral-7b", "force": true}'
echo
