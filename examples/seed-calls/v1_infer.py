"""Dialect 2 with Python `requests`: what the API is, then one generation.

IM_URL and IM_KEY choose the server and the key. Prints the answers as JSON, one per line.
"""
import json
import os

import requests

BASE_URL = os.environ.get("IM_URL", "http://localhost:8000")
HEADERS = {"X-API-Key": os.environ.get("IM_KEY", "im-demo-key")}

info = requests.get(f"{BASE_URL}/", headers=HEADERS, timeout=30)
info.raise_for_status()
print(json.dumps(info.json()))

response = requests.post(
    f"{BASE_URL}/v1/infer",
    headers=HEADERS,
    json={
        "model": "llama-3.2-3b-instruct",
        "prompt": "Explain quantum computing in simple terms.",
        "params": {
            "max_new_tokens": 256,
            "temperature": 0.7,
            "top_p": 0.9,
            "stop": ["\n\n"],
        },
    },
    timeout=120,
)
response.raise_for_status()
result = response.json()
print(json.dumps(result))
