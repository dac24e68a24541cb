"""A fake Ollama registry and a fake Hugging Face hub: real HTTP servers on loopback, for the pull
tests, with the faults a real one cannot produce on demand (a dropped connection mid-blob, a range
ignored, 416, a flipped byte, a short body, 404s, 429/503 with Retry-After, a redirect to another
host, a slow trickle). Every request is logged with its Range and Authorization headers."""
import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Blob:
    def __init__(self, data: bytes, media_type: str):
        self.data = data
        self.media_type = media_type
        self.digest = "sha256:" + hashlib.sha256(data).hexdigest()


def size_of(data) -> int:
    return os.path.getsize(data) if isinstance(data, str) else len(data)


def sha_of(data) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


class FakeServer:
    """Serves `blobs` (digest → Blob), Ollama `manifests` ((ns, model, tag) → bytes) and hub
    `repos` (repo → {"commit", "files": {name: bytes}}). `faults` maps a digest or a hub file name
    to a list of faults, each used once, in order: "drop:N" (close after N bytes), "ignore-range",
    "416", "flip", "short:N", "503", "429", "redirect" (to `redirect_to`), "slow:BYTES_PER_S"
    (not used up: it applies to every request)."""

    def __init__(self):
        self.blobs: dict[str, Blob] = {}
        self.manifests: dict[tuple, bytes] = {}
        self.repos: dict[str, dict] = {}
        self.faults: dict[str, list[str]] = {}
        self.log: list[dict] = []
        self.redirect_to: "FakeServer | None" = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.log.append({"path": self.path, "range": self.headers.get("Range"), "authorization": self.headers.get("Authorization"),
                                   "if_range": self.headers.get("If-Range")})
                try:
                    server.handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # Content

    def add_model(self, namespace: str, model: str, tag: str, gguf: bytes, params: dict | None = None, system: str | None = None):
        layers = [Blob(gguf, "application/vnd.ollama.image.model")]
        if params is not None:
            layers.append(Blob(json.dumps(params).encode(), "application/vnd.ollama.image.params"))
        if system is not None:
            layers.append(Blob(system.encode(), "application/vnd.ollama.image.system"))
        config = Blob(json.dumps({"model_format": "gguf", "model_family": "llama"}).encode(), "application/vnd.docker.container.image.v1+json")
        for blob in layers + [config]:
            self.blobs[blob.digest] = blob
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": config.media_type, "digest": config.digest, "size": len(config.data)},
                    "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": len(b.data)} for b in layers]}
        self.manifests[(namespace, model, tag)] = json.dumps(manifest).encode()
        return layers[0].digest

    def add_repo(self, repo: str, files: dict, commit: str = "0123456789abcdef0123456789abcdef01234567", tags=("gguf",)):
        """`files`: name → bytes, or → a path (a large sparse file, read by range; its listed
        SHA-256 is made up, as it is never downloaded whole)."""
        self.repos[repo] = {"commit": commit, "files": files, "tags": list(tags)}

    def requests_for(self, fragment: str) -> list[dict]:
        return [r for r in self.log if fragment in r["path"]]

    # Serving

    def take_fault(self, key: str) -> str | None:
        queue = self.faults.get(key) or []
        for fault in queue:
            if fault.startswith("slow:"):
                continue
            queue.remove(fault)
            return fault
        return None

    def slow(self, key: str) -> int | None:
        for fault in self.faults.get(key) or []:
            if fault.startswith("slow:"):
                return int(fault[5:])
        return None

    def handle(self, h: BaseHTTPRequestHandler):
        path = h.path.split("?")[0]
        parts = path.strip("/").split("/")
        if parts[:1] == ["v2"] and len(parts) == 5 and parts[3] == "manifests":
            body = self.manifests.get((parts[1], parts[2], parts[4]))
            if body is None:
                return self.reply(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            return self.reply(h, 200, body, {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
        if parts[:1] == ["v2"] and len(parts) == 5 and parts[3] == "blobs":
            blob = self.blobs.get(parts[4])
            if blob is None:
                return self.reply(h, 404, b"")
            return self.send_file(h, parts[4], blob.data, etag=f'"{blob.digest}"')
        if parts == ["api", "models"]:
            from urllib.parse import parse_qs, urlparse
            query = parse_qs(urlparse(h.path).query)
            words = query.get("search", [""])[0].lower()
            found = [{"id": repo, "tags": info.get("tags", ["gguf"]), "downloads": 7} for repo, info in self.repos.items() if words in repo.lower()]
            return self.reply(h, 200, json.dumps(found).encode())
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
            repo = self.repos.get(f"{parts[2]}/{parts[3]}")
            if repo is None:
                return self.reply(h, 404, b'{"error":"Repository not found"}')
            siblings = [{"rfilename": name, "size": size_of(data), "lfs": {"sha256": sha_of(data), "size": size_of(data)}}
                        for name, data in repo["files"].items()]
            return self.reply(h, 200, json.dumps({"id": f"{parts[2]}/{parts[3]}", "sha": repo["commit"], "siblings": siblings}).encode())
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self.repos.get(f"{parts[0]}/{parts[1]}")
            name = "/".join(parts[4:])
            if repo is None or name not in repo["files"]:
                return self.reply(h, 404, b"")
            data = repo["files"][name]
            return self.send_file(h, name, data, etag=f'"{sha_of(data)}"', extra={"X-Repo-Commit": repo["commit"], "X-Linked-Etag": f'"{sha_of(data)}"'})
        if parts[:1] == ["cdn"]:
            # A redirected download: served by the other host.
            name = "/".join(parts[1:])
            for blob in self.blobs.values():
                if blob.digest == name:
                    return self.send_file(h, name, blob.data, etag=f'"{blob.digest}"')
            for repo in self.repos.values():
                if name in repo["files"]:
                    return self.send_file(h, name, repo["files"][name], etag='"cdn"')
            return self.reply(h, 404, b"")
        self.reply(h, 404, b"")

    def reply(self, h, status, body: bytes, headers: dict | None = None):
        h.send_response(status)
        for k, v in (headers or {"Content-Type": "application/json"}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def send_file(self, h, key: str, data, etag: str, extra: dict | None = None):
        if isinstance(data, str):
            return self.send_range_of_file(h, data, etag)
        fault = self.take_fault(key)
        if fault in ("503", "429"):
            h.send_response(int(fault))
            h.send_header("Retry-After", "1")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if fault == "redirect" and self.redirect_to is not None:
            h.send_response(302)
            h.send_header("Location", f"http://{self.redirect_to.host}/cdn/{key}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if fault == "416":
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start = 0
        rng = h.headers.get("Range")
        if rng and fault != "ignore-range" and rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            start = int(first)
            end = int(last) if last else len(data) - 1
        else:
            end = len(data) - 1
        if fault == "flip":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        body = data[start:end + 1]
        status = 206 if start > 0 or (rng and fault != "ignore-range") else 200
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if fault and fault.startswith("drop:"):
            h.wfile.write(body[:int(fault[5:])])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if fault and fault.startswith("short:"):
            h.wfile.write(body[:int(fault[6:])])
            h.close_connection = True
            h.connection.shutdown(2)
            return
        rate = self.slow(key)
        if rate:
            step = max(1, rate // 20)
            for i in range(0, len(body), step):
                h.wfile.write(body[i:i + step])
                h.wfile.flush()
                time.sleep(step / rate)
            return
        h.wfile.write(body)

    def send_range_of_file(self, h, path: str, etag: str):
        """A file on disk (sparse, large) by range only: the whole of it is never sent."""
        size = os.path.getsize(path)
        rng = h.headers.get("Range", "")
        if not rng.startswith("bytes="):
            return self.reply(h, 400, b"this fake serves large files by range only")
        first, _, last = rng[6:].partition("-")
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
        self.sent = getattr(self, "sent", 0) + (end - start + 1)
        h.send_response(206)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("ETag", etag)
        h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.send_header("Content-Length", str(end - start + 1))
        h.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            h.wfile.write(f.read(end - start + 1))
