"""A minimal client for OpenAI-compatible chat endpoints, with an on-disk cache keyed by the request.

The API key is read from the environment at request time and sent only in the Authorization header: it
is never stored on the client, in the cache, in logs or in the run directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path


class EndpointError(RuntimeError):
    """The endpoint could not answer (one line: URL, status or reason)."""


class ChatClient:
    def __init__(self, endpoint, cache: Path | None):
        """``endpoint``: a ``supervision.config.EndpointConfig``; ``cache``: a JSONL file (None: memory only)."""
        self.url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.timeout_s = endpoint.model, endpoint.api_key_env, endpoint.timeout_s
        self.cache_path = cache
        self.cache: dict[str, str] = {}
        if cache is not None and cache.exists():
            for line in cache.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                self.cache[entry["key"]] = entry["content"]
        self.requests = 0

    def complete(self, messages: list[dict]) -> str:
        """The assistant's reply to ``messages`` (temperature 0), from the cache when asked before."""
        body = {"model": self.model, "messages": messages, "temperature": 0.0}
        key = hashlib.sha256(json.dumps([self.url, body], sort_keys=True).encode()).hexdigest()
        if key in self.cache:
            return self.cache[key]
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                content = json.loads(response.read())["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as exc:
            raise EndpointError(f"{self.url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise EndpointError(f"{self.url}: {getattr(exc, 'reason', exc)}") from None
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.url}: the reply is not an OpenAI chat completion") from None
        if not isinstance(content, str):
            raise EndpointError(f"{self.url}: the reply has no text content")
        self.cache[key] = content
        if self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as cache:
                cache.write(json.dumps({"key": key, "content": content}) + "\n")
        return content
