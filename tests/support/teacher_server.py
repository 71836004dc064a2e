"""A scripted teacher for the distillation tests: an OpenAI-compatible chat completions server in its
own process (standard library only, so it starts in a blink).

``python tests/support/teacher_server.py`` binds a free port and prints it on the first line of stdout (the
parent reads that line: ready, no polling). Then:

- ``POST /_script`` appends replies, each ``{"content": str, "usage": {...}?}`` or
  ``{"status": 429, "message": str?, "headers": {...}?}``; ``POST /_reset`` clears everything;
- ``POST /v1/chat/completions`` records the request (body and Authorization header) and answers
  with the next reply; with none left it answers 500 "script exhausted";
- ``GET /_requests`` returns the recorded requests.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()
_replies: list[dict] = []
_requests: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path == "/_requests":
            with _lock:
                self._send(200, list(_requests))
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found_error"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        with _lock:
            if self.path == "/_script":
                _replies.extend(body)
                return self._send(200, {"queued": len(_replies)})
            if self.path == "/_reset":
                _replies.clear()
                _requests.clear()
                return self._send(200, {})
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found_error"}})
            _requests.append({"body": body, "authorization": self.headers.get("authorization")})
            reply = _replies.pop(0) if _replies else {"status": 500, "message": "script exhausted",
                                                      "headers": {"x-should-retry": "false"}}
        if reply.get("status", 200) != 200:
            error = {"error": {"message": reply.get("message", "scripted error"), "type": "scripted", "code": None}}
            return self._send(reply["status"], error, reply.get("headers"))
        content = reply["content"]
        prompt_chars = sum(len(m.get("content") or "") for m in body.get("messages", []))
        usage = reply.get("usage") or {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(content) // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self._send(200, {
            "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"), "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
        })

    def _send(self, status: int, payload, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)
