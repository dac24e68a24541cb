"""Browser-facing guards: DNS rebinding (only local Host names while bound to loopback) and CORS
(local origins allowed, others get no CORS headers and their preflights are refused)."""
import socket

import httpx


def raw_get(c, host: str) -> int:
    s = socket.create_connection(("127.0.0.1", c.port))
    s.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    return int(data.split(b" ", 2)[1])


def test_rebinding_guard_accepts_only_local_host_names(corral):
    for host in ("localhost", f"localhost:{corral.port}", "127.0.0.1", f"127.0.0.1:{corral.port}", "[::1]:11434", "corral.localhost"):
        assert raw_get(corral, host) == 200, host
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil.example"):
        assert raw_get(corral, host) == 403, host


def test_cors_for_local_origins_only(corral):
    local = httpx.get(corral.base + "/v1/models", headers={"origin": "http://localhost:3000"})
    assert local.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-ratelimit-remaining-requests" in local.headers["access-control-expose-headers"]
    preflight = httpx.options(corral.base + "/v1/chat/completions", headers={
        "origin": "http://127.0.0.1:8080", "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    foreign = httpx.get(corral.base + "/v1/models", headers={"origin": "https://evil.example"})
    assert foreign.status_code == 200 and "access-control-allow-origin" not in foreign.headers
    refused = httpx.options(corral.base + "/v1/chat/completions", headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
    assert refused.status_code == 403
    app = httpx.get(corral.base + "/api/tags", headers={"origin": "vscode-webview://abc"})
    assert app.headers["access-control-allow-origin"] == "vscode-webview://abc"
