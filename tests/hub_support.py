"""A minimal Hugging Face hub on loopback, serving one repository from a local folder.

The real hub cannot be reached here; this one answers the endpoints huggingface-hub's
`model_info` and `snapshot_download` use (model info, file tree, resolve), so `models
pull` runs its real download code. `corrupt` names a file served with one byte flipped.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class Hub:
    def __init__(self, repo: str, root: Path, corrupt: str | None = None) -> None:
        self.repo, self.root, self.corrupt = repo, root, corrupt
        self.commit = hashlib.sha1(repo.encode()).hexdigest()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self) -> list[dict]:
        found = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            found.append({"path": path.relative_to(self.root).as_posix(), "size": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
        return found

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                if path.startswith(f"/api/models/{hub.repo}/tree/"):
                    tree = [{"type": "file", "path": f["path"], "size": f["size"], "oid": "0" * 40,
                             "lfs": {"oid": f["sha256"], "size": f["size"], "pointerSize": 130}}
                            for f in hub.files()]  # fmt: skip
                    return self._send(json.dumps(tree).encode(), "application/json", body)
                if path.startswith(f"/api/models/{hub.repo}/revision/"):
                    siblings = [{"rfilename": f["path"], "size": f["size"],
                                 "lfs": {"sha256": f["sha256"], "size": f["size"],
                                         "pointerSize": 130}}
                                for f in hub.files()]  # fmt: skip
                    info = {"id": hub.repo, "sha": hub.commit, "siblings": siblings}
                    return self._send(json.dumps(info).encode(), "application/json", body)
                prefix = f"/{hub.repo}/resolve/{hub.commit}/"
                file = hub.root / path.removeprefix(prefix)
                if not path.startswith(prefix) or not file.is_file():
                    self.send_response(404)
                    self.end_headers()
                    return
                data = file.read_bytes()
                etag = hashlib.sha256(data).hexdigest()
                if path.endswith("/" + (hub.corrupt or "\0")):
                    data = data[:-1] + bytes([data[-1] ^ 1])
                self._send(data, "application/octet-stream", body, etag)

            def _send(self, data: bytes, kind: str, body: bool, etag: str | None = None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Repo-Commit", hub.commit)
                if etag is not None:
                    self.send_header("ETag", f'"{etag}"')
                self.end_headers()
                if body:
                    self.wfile.write(data)

        return Handler
