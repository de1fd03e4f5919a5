"""A minimal Hugging Face hub on loopback, serving one repository from a local folder.

The real hub cannot be reached here; this one answers the endpoints huggingface-hub's
`model_info` and `snapshot_download` use (model info, file tree, resolve, HTTP Range), so
`models pull` runs its real download code. `corrupt` names a file served with one byte
flipped; `plain` names files stored without LFS (the hub gives their git blob id, not a
sha256); `cut` names a file whose first download breaks off halfway. `ranges` records every
Range header received. `listed` gives sizes the file listing reports in place of the files'
own, so small stand-ins can play a real variant's files up to the download; `downloads`
records every file body served.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class Hub:
    def __init__(
        self,
        repo: str,
        root: Path,
        corrupt: str | None = None,
        plain: frozenset[str] = frozenset(),
        cut: str | None = None,
        listed: dict[str, int] | None = None,
    ) -> None:
        self.repo, self.root, self.corrupt, self.plain, self.cut = repo, root, corrupt, plain, cut
        self.listed = listed or {}  # relative path -> the size the listing reports
        self.ranges: list[str] = []
        self.downloads: list[str] = []
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
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            relative = path.relative_to(self.root).as_posix()
            found.append({"path": relative, "size": self.listed.get(relative, len(data)),
                          "sha256": hashlib.sha256(data).hexdigest(), "blob_id": blob,
                          "lfs": path.name not in self.plain})  # fmt: skip
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
                    tree = [{"type": "file", "path": f["path"], "size": f["size"],
                             "oid": f["blob_id"], **({"lfs": {"oid": f["sha256"], "size": f["size"],
                                                     "pointerSize": 130}} if f["lfs"] else {})}
                            for f in hub.files()]  # fmt: skip
                    return self._send(json.dumps(tree).encode(), "application/json", body)
                if path.startswith(f"/api/models/{hub.repo}/revision/"):
                    siblings = [{"rfilename": f["path"], "size": f["size"], "blobId": f["blob_id"],
                                 **({"lfs": {"sha256": f["sha256"], "size": f["size"],
                                            "pointerSize": 130}} if f["lfs"] else {})}
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
                if body:
                    hub.downloads.append(path.removeprefix(prefix))
                etag = hashlib.sha256(data).hexdigest()
                if file.name in hub.plain:  # the real hub's ETag for a git-stored file
                    etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                if path.endswith("/" + (hub.corrupt or "\0")):
                    data = data[:-1] + bytes([data[-1] ^ 1])
                if body and (asked := self.headers.get("Range")):
                    hub.ranges.append(asked)
                    return self._send_range(data, asked)
                if body and file.name == hub.cut:
                    hub.cut = None  # once: the retry resumes with a Range
                    return self._send(data, "application/octet-stream", body, etag, len(data) // 2)
                self._send(data, "application/octet-stream", body, etag)

            def _send_range(self, data: bytes, asked: str) -> None:
                first, last = asked.removeprefix("bytes=").split("-")
                end = int(last) + 1 if last else len(data)
                part = data[int(first) : end]
                self.send_response(206)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(part)))
                self.send_header("Content-Range", f"bytes {first}-{end - 1}/{len(data)}")
                self.end_headers()
                self.wfile.write(part)

            def _send(
                self,
                data: bytes,
                kind: str,
                body: bool,
                etag: str | None = None,
                upto: int | None = None,
            ) -> None:
                """`upto`: send only that many bytes of the body, then drop the connection."""
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Repo-Commit", hub.commit)
                if etag is not None:
                    self.send_header("ETag", f'"{etag}"')
                self.end_headers()
                if body:
                    self.wfile.write(data[:upto])
                if upto is not None:
                    self.wfile.flush()
                    self.close_connection = True

        return Handler
