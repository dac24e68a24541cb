"""One HTTP call to a Corral on loopback, shared by the benchmark and soak scripts."""
import http.client
import json
import time


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


def answers(port: int, path: str = "/health", timeout: float = 60, interval: float = 0.05, alive=lambda: True) -> bool:
    """Whether GET `path` on 127.0.0.1:`port` answers 200 within `timeout` seconds (polling every
    `interval`); False at once when `alive()` turns false (the server exited)."""
    deadline = time.time() + timeout
    while time.time() < deadline and alive():
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(interval)
    return False
