"""Load-test scenarios of the seeds for im, with Locust.

    pip install locust
    locust -f tests/load/locustfile.py --host http://127.0.0.1:8000 --headless -u 20 -r 5 -t 60s
    SCENARIO=peak IM_API_KEY=im-demo-key locust -f tests/load/locustfile.py --host ... --headless -u 50 -r 10 -t 60s

SCENARIO picks the think time between a user's requests, as in the seeds:
normal 1-5 s, peak 0.1-1 s, sustained 5-10 s. Models default to im-http --simulate's catalogue.
The same scenarios run without Python: `cargo xtask load --scenario peak`.
"""

import base64
import os
import random
import struct
import zlib

from locust import HttpUser, between, task

THINK = {"normal": (1, 5), "peak": (0.1, 1), "sustained": (5, 10)}
SCENARIO = os.environ.get("SCENARIO", "normal")
KEY = os.environ.get("IM_API_KEY", "im-demo-key")
LLM = os.environ.get("IM_LLM", "llama-3.2-3b-instruct")
VLM = os.environ.get("IM_VLM", "llava-1.6-mistral-7b")
SD = os.environ.get("IM_SD", "stablediffusion")


def tiny_png() -> str:
    """A valid 8x8 grey PNG, base64."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + b"\x80" * 8 for _ in range(8))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


IMAGE = tiny_png()


class ImUser(HttpUser):
    wait_time = between(*THINK[SCENARIO])

    def on_start(self):
        self.client.headers.update({"X-API-Key": KEY})

    @task(5)
    def txt2txt(self):
        self.client.post("/txt2txt", json={"model": LLM, "messages": [{"role": "user", "content": "Hello!"}],
                                           "temperature": 0.7, "max_tokens": 32}, name="txt2txt")

    @task(2)
    def txt2img(self):
        self.client.post("/txt2img", json={"model": SD, "prompt": "a lighthouse at dusk", "width": 64,
                                           "height": 64, "steps": 4}, name="txt2img")

    @task(2)
    def img2img(self):
        self.client.post("/img2img", json={"model": SD, "prompt": "make it blue", "file": IMAGE, "width": 64,
                                           "height": 64, "steps": 4}, name="img2img")

    @task(1)
    def img2txt(self):
        content = [{"type": "text", "text": "What is in this image?"},
                   {"type": "image_url", "image_url": {"url": "data:image/png;base64," + IMAGE}}]
        self.client.post("/img2txt", json={"model": VLM, "messages": [{"role": "user", "content": content}],
                                           "temperature": 0.2}, name="img2txt")
