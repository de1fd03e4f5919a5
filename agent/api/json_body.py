"""Request bodies are JSON whatever their Content-Type, as Ollama (and vLLM) read them.

Ollama's documentation and every example copied from it use `curl URL -d '{...}'`, which
sends `application/x-www-form-urlencoded`; FastAPI would hand such a body to validation as
bytes. This pure ASGI layer relabels the body of every API route as JSON, so the request is
parsed (or refused as invalid JSON) the same way whatever the client declared.
"""

from __future__ import annotations

from agent.api.guard import App, Receive, Scope, Send

JSON_ROUTES = ("/api/", "/v1/", "/reasoning")
WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class JsonBody:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in WITH_BODY
            and scope["path"].startswith(JSON_ROUTES)
        ):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
