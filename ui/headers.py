"""Security headers and trailing-slash redirects for the signed-in pages (/staff, /admin).

The pages are never framed (``X-Frame-Options: DENY``, ``frame-ancestors 'none'``) and may load
images, scripts and connections only from this server: even text that slipped past ``ui.text`` as
HTML could not make a staff browser fetch another host. gradio itself needs inline scripts/styles
(its config is an inline script) and ``data:``/``blob:`` images.
"""

from __future__ import annotations

CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
       "worker-src 'self' blob:; frame-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'self'; "
       "form-action 'self'")
PROTECTED = ("/staff", "/admin")


class SignedInPageHeaders:
    """ASGI middleware: CSP and X-Frame-Options on every response under /staff and /admin, and
    ``/staff`` → ``/staff/`` (gradio answers only with the slash; the README writes it without)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        page = next((p for p in PROTECTED if path == p or path.startswith(p + "/")), None)
        if page is None:
            return await self.app(scope, receive, send)
        if path == page:
            query = scope.get("query_string", b"")
            location = (page + "/" + ("?" + query.decode("latin-1") if query else "")).encode("latin-1")
            await send({"type": "http.response.start", "status": 307, "headers": [
                (b"location", location), (b"content-length", b"0"), *_headers()]})
            return await send({"type": "http.response.body", "body": b""})

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in _headers() if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, with_headers)


def _headers() -> list[tuple[bytes, bytes]]:
    return [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
