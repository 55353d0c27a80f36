#!/usr/bin/env bash
# Dialect 1: /infer with versions, /infer/batch, /models. One JSON answer per line.
set -euo pipefail
IM_URL=${IM_URL:-http://localhost:8000}
IM_KEY=${IM_KEY:-im-demo-key}

curl -X POST "$IM_URL/infer" \
  -H "Content-Type: application/json" \
  -H "X-API-Key: $IM_KEY" \
  -d '{"text": "Artificial intelligence is transforming industries from healthcare to finance. Machine learning models can now diagnose diseases, detect fraud and drive cars.", "model": "summarizer", "parameters": {"max_length": 50, "min_length": 10}}'
echo

curl -X POST "$IM_URL/infer" \
  -H "Content-Type: application/json" \
  -H "X-API-Key: $IM_KEY" \
  -d '{"text": "I absolutely love this product! It exceeded all my expectations.", "model": "sentiment", "version": "v1"}'
echo

curl -X POST "$IM_URL/infer" \
  -H "Content-Type: application/json" \
  -H "X-API-Key: $IM_KEY" \
  -d '{"text": "Once upon a time", "model": "generator", "parameters": {"max_length": 100, "num_return_sequences": 2}}'
echo

curl -X POST "$IM_URL/infer/batch" \
  -H "Content-Type: application/json" \
  -H "X-API-Key: $IM_KEY" \
  -d '{"requests": [{"text": "Great service!", "model": "sentiment"}, {"text": "Terrible experience.", "model": "sentiment"}, {"text": "The meeting covered budgets, hiring and the roadmap for next year.", "model": "summarizer"}]}'
echo

curl "$IM_URL/models" -H "X-API-Key: $IM_KEY"
echo
