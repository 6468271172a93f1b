"""A stand-in for the Hugging Face hub on 127.0.0.1: serves model repos' branches and files as the hub's HTTP API does,
so the real `huggingface_hub` client code (list_repo_refs, hf_hub_download via from_pretrained) runs end to end.

    with HubStandIn({"org/tiny": {"step0": folder0, "step1": folder1}}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": tmp}      # then `rtn ingest --model org/tiny --checkpoints all`

Routes (the subset the client uses): GET /api/models/{repo}/refs, .../revision/{revision} (model info),
.../tree/{revision}/{folder} (file listing), HEAD and GET /{repo}/resolve/{revision}/{file};
anything else answers 404 with the hub's X-Error-Code header, which the client turns into its own exceptions.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from typing_extensions import Self


def commit_of(repo: str, revision: str) -> str:
    """Returns the 40-hex commit id the stand-in gives a branch (stable per repo and branch)."""
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


class HubStandIn:
    """Serves {repo id: {branch name: local folder}} on a free port of 127.0.0.1; records the paths asked for."""

    def __init__(self, repos: dict[str, dict[str, Path]]):
        self.repos = {repo: {branch: Path(folder) for branch, folder in branches.items()}
                      for repo, branches in repos.items()}
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):     # quiet: the test reads hub.requests instead
                pass

            def do_GET(self):
                self._answer(with_body=True)

            def do_HEAD(self):
                self._answer(with_body=False)

            def _answer(self, with_body: bool):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                for repo, branches in hub.repos.items():
                    if path == f"/api/models/{repo}/refs":
                        return self._json({"branches": [{"name": b, "ref": f"refs/heads/{b}",
                                                         "targetCommit": commit_of(repo, b)} for b in branches],
                                           "converts": [], "tags": []}, with_body)
                    api = f"/api/models/{repo}/"
                    if path.startswith((api + "revision/", api + "tree/")):
                        kind, _, rest = path[len(api):].partition("/")
                        revision, _, inside = rest.partition("/")
                        if revision not in branches:
                            return self._error(404, "RevisionNotFound", with_body)
                        return self._api(repo, revision, kind, inside, with_body)
                    prefix = f"/{repo}/resolve/"
                    if path.startswith(prefix):
                        revision, _, name = path[len(prefix):].partition("/")
                        revision = next((b for b in branches if revision in (b, commit_of(repo, b))), None)
                        if revision is None:
                            return self._error(404, "RevisionNotFound", with_body)
                        file = branches[revision] / name
                        if not file.is_file():
                            return self._error(404, "EntryNotFound", with_body)
                        return self._file(file, commit_of(repo, revision), with_body)
                self._error(404, "RepoNotFound" if path.startswith("/api/models/") else "EntryNotFound", with_body)

            def _api(self, repo: str, revision: str, kind: str, inside: str, with_body: bool):
                folder = hub.repos[repo][revision]
                files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                if kind == "revision":     # model_info: the commit and the file list
                    return self._json({"id": repo, "modelId": repo, "sha": commit_of(repo, revision), "private": False,
                                       "siblings": [{"rfilename": f} for f in files]}, with_body)
                if inside and not (folder / inside).is_dir():
                    return self._error(404, "EntryNotFound", with_body)
                listed = [f for f in files if not inside or f.startswith(inside.rstrip("/") + "/")]
                return self._json([{"type": "file", "path": f, "size": (folder / f).stat().st_size,
                                    "oid": hashlib.sha1((folder / f).read_bytes()).hexdigest()} for f in listed],
                                  with_body)

            def _json(self, payload, with_body: bool):
                body = json.dumps(payload).encode()
                self._send(200, body, {"Content-Type": "application/json"}, with_body)

            def _file(self, file: Path, commit: str, with_body: bool):
                body = file.read_bytes()
                etag = hashlib.sha256(body).hexdigest()
                self._send(200, body, {"X-Repo-Commit": commit, "ETag": f'"{etag}"',
                                       "Content-Type": "application/octet-stream"}, with_body)

            def _error(self, status: int, code: str, with_body: bool):
                body = json.dumps({"error": code}).encode()
                self._send(status, body, {"X-Error-Code": code, "Content-Type": "application/json"}, with_body)

            def _send(self, status: int, body: bytes, headers: dict, with_body: bool):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

        return Handler
