"""The service's outer guard, one ASGI middleware in front of every route: a Host allow-list (against DNS
rebinding: a web page the user visits cannot reach the loopback service under its own name), an optional bearer
token on the API, a cap on request bodies (uploads have their own, larger cap), and security headers on every
response. Refusals are one sentence in {"detail": ...} like every other error of the service.
"""
from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

#: The viewer loads its script, style sheet and scan from the service itself; NiiVue draws with WebGL and
#: makes images from blob:/data: URLs, and sets element styles from script.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
#: Paths of the API (the token guards them); the viewer's static files are public (the token arrives in the
#: page's URL fragment, which the browser never sends, and the viewer's script sends it as a header).
PROTECTED_PREFIXES = ("/api/",)
#: FastAPI's /docs and /redoc pages load Swagger UI / ReDoc from their CDN, with an inline script.
DOCS_PREFIXES = ("/docs", "/redoc")
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; style-src 'self' "
    "'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; font-src 'self' https://fonts.gstatic.com; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
UPLOAD_PATH = "/api/scans/upload"


def host_name(header: str) -> str | None:
    """The host name of a Host header, lower-case, without its port ('[::1]:8000' -> '::1'); None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        if end < 0 or (header[end + 1:] and not header[end + 1:].startswith(":")):
            return None
        return header[1:end]
    name, _, port = header.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


@dataclass(frozen=True)
class Guard:
    allowed_hosts: frozenset[str]
    token: str | None
    max_body_bytes: int


class SecurityMiddleware:
    """Host allow-list, bearer token, body cap and security headers (pure ASGI: it streams, and it sees the
    raw request before FastAPI parses any of it)."""

    def __init__(self, app, *, guard: Guard):
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        security = SECURITY_HEADERS
        if scope.get("path", "").startswith(DOCS_PREFIXES):
            security = [(b"content-security-policy", DOCS_CONTENT_SECURITY_POLICY.encode()), *SECURITY_HEADERS[1:]]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": list(message.get("headers", []))
                           + [(k, v) for k, v in security if k not in present]}
            await send(message)

        headers = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, text, extra = refusal
            return await _reply(send_with_headers, status, text, extra)

        path = scope.get("path", "")
        if path != UPLOAD_PATH and scope.get("method") not in ("GET", "HEAD", "OPTIONS"):
            declared = headers.get("content-length", "")
            cap = self.guard.max_body_bytes
            if declared.isdigit() and int(declared) > cap:
                return await _reply(send_with_headers, 413, _too_large(cap))
            # buffer the body up to the cap (a JSON request is small), refusing as soon as it passes it
            body, more = [], True
            total = 0
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > cap:
                    return await _reply(send_with_headers, 413, _too_large(cap))
                body.append(chunk)
                more = message.get("more_body", False)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(body), "more_body": False}
                return await receive()

            return await self.app(scope, replay, send_with_headers)
        return await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope, headers) -> tuple[int, str, list] | None:
        host = host_name(headers.get("host", ""))
        if host is None or host not in self.guard.allowed_hosts:
            return 400, ("The request's Host header names a host this server does not answer to; open the viewer "
                         "at http://127.0.0.1 or localhost, or restart the server with --allowed-host NAME."), []
        if self.guard.token is not None and scope.get("path", "").startswith(PROTECTED_PREFIXES):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                                                                     self.guard.token.encode("utf-8")):
                return 401, ("This server needs its token: send the header 'Authorization: Bearer TOKEN' (in the "
                             "viewer, open it at /#token=TOKEN)."), [(b"www-authenticate", b"Bearer")]
        return None


def _too_large(cap: int) -> str:
    return (f"The request body is larger than this server's limit of {cap / 2**20:g} MB for a JSON request; "
            "send fewer points per request.")


async def _reply(send, status: int, text: str, extra: list | None = None) -> None:
    body = json.dumps({"detail": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def allowed_host_set(extra=()) -> frozenset[str]:
    """The loopback names plus `extra` (names or addresses; brackets and ports are dropped)."""
    names = set(LOOPBACK_HOSTS)
    for item in extra:
        name = host_name(str(item)) if not _bare_ipv6(str(item)) else str(item).lower()
        if name:
            names.add(name)
    return frozenset(names)


def _bare_ipv6(text: str) -> bool:
    return text.count(":") > 1 and not text.startswith("[")
