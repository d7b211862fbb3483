"""A small misbehaving OpenAI-compatible HTTP server on 127.0.0.1 for fault-injection tests.

A healthy server (``vllm serve``) never answers 429 with Retry-After, a 500, a hang, a body that
is not JSON or a cut connection on demand, so these faults come from this fake. Each request draws
a fault with probability ``fault_rate`` (seeded), or follows ``script`` (a list of kinds consumed
in order) when given; otherwise it answers a valid chat completion.
"""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("429", "500", "hang", "nonjson", "cut", "badanswer")


class FaultServer:
    def __init__(
        self,
        fault_rate: float = 0.0,
        seed: int = 0,
        hang_s: float = 3.0,
        script: list[str] | None = None,
        kinds: tuple[str, ...] = KINDS,
    ):
        self.fault_rate, self.hang_s, self.kinds = fault_rate, hang_s, kinds
        self.script = list(script or [])
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.faults: dict[str, int] = {}
        self.auth_headers: set[str] = set()
        self.bodies: list[dict] = []  # every request as sent
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                server.auth_headers.add(self.headers.get("authorization", ""))
                server.bodies.append(body)
                kind = server._draw()
                if kind == "429":
                    return self._send(429, {"error": {"message": "slow down"}}, {"retry-after": "0.05"})
                if kind == "500":
                    return self._send(500, {"error": {"message": "boom"}})
                if kind == "hang":
                    time.sleep(server.hang_s)
                    return self._send(500, {"error": {"message": "late"}})
                if kind == "401":  # like a real API, the message quotes the key it was given
                    auth = self.headers.get("authorization", "")
                    return self._send(401, {"error": {"message": f"Incorrect API key provided: {auth}"}})
                if kind == "nonjson":
                    return self._raw(200, b"<html>not json</html>", "text/html")
                if kind == "cut":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                text = "I think it is pretty good" if kind == "badanswer" else server.answer(body)
                return self._send(200, completion(body.get("model", "m"), text))

            def _send(self, status, obj, headers=None):
                self._raw(status, json.dumps(obj).encode(), "application/json", headers)

            def _raw(self, status, data, ctype, headers=None):
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # clients that gave up on a hang: expected
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _draw(self) -> str:
        with self.lock:
            self.requests += 1
            if self.script:
                kind = self.script.pop(0)
            elif self.rng.random() < self.fault_rate:
                kind = self.rng.choice(self.kinds)
            else:
                kind = "ok"
            self.faults[kind] = self.faults.get(kind, 0) + 1
            return kind

    @staticmethod
    def answer(body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        if not isinstance(prompt, str):  # content parts: images and the text
            prompt = " ".join(part.get("text", "") for part in prompt)
        if "[Response 1]" in prompt or "verdict" in json.dumps(body["messages"]):
            return json.dumps({"rationale": "first is better", "verdict": "[[1]]"})
        return json.dumps({"rationale": "fine", "score": 7})

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(model: str, text: str) -> dict:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
