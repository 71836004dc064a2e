"""Security headers on every page (the public chat at / as much as /staff and /admin) and
trailing-slash redirects for the signed-in pages.

The pages are never framed (``X-Frame-Options: DENY``, ``frame-ancestors 'none'``) and may load
images, scripts and connections only from this server: even text that slipped past ``ui.text`` as
HTML could not make a staff browser fetch another host. gradio itself needs inline scripts/styles
(its config is an inline script) and ``data:``/``blob:`` images. The API's own docs (/docs, /redoc)
are left alone: FastAPI loads Swagger UI from a CDN.
"""

from __future__ import annotations

CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
       "worker-src 'self' blob:; frame-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'self'; "
       "form-action 'self'")
PROTECTED = ("/staff", "/admin")
API_DOCS = ("/docs", "/redoc")


class PageHeaders:
    """ASGI middleware: CSP and X-Frame-Options on every response but the API docs (a framed chat page
    could be overlaid to trick a customer into clicking; a chat message that slipped through as HTML could
    still not fetch another host), and ``/staff`` → ``/staff/`` (gradio answers only with the slash; the
    README writes it without)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path or any(path == p or path.startswith(p + "/") for p in API_DOCS):
            return await self.app(scope, receive, send)
        if path in PROTECTED:
            query = scope.get("query_string", b"")
            location = (path + "/" + ("?" + query.decode("latin-1") if query else "")).encode("latin-1")
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
