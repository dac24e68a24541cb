"""One HTTP call to a Corral on loopback, shared by the benchmark and soak scripts."""
import http.client
import json


def call(port: int, method: str, path: str, body=None, token=None, timeout: float = 60):
    """Returns (status, body): parsed JSON when the answer says it is JSON, text otherwise."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    ctype = r.getheader("content-type") or ""
    return r.status, (json.loads(data) if data and "json" in ctype else data.decode(errors="replace"))
