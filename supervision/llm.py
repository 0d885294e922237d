"""The judge's and the hint writer's client for OpenAI-compatible chat endpoints (the ``openai`` package:
timeouts, retries with exponential backoff that honours Retry-After on 429 and 5xx), with an on-disk cache
keyed by the request.

The API key is read from the environment at request time and sent only in the Authorization header: it
is never written to the cache, logs or the run directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import openai


class EndpointError(RuntimeError):
    """The endpoint could not answer (one line: URL, status or reason)."""


class ChatClient:
    def __init__(self, endpoint, cache: Path | None):
        """``endpoint``: a ``supervision.config.EndpointConfig``; ``cache``: a JSONL file (None: memory only)."""
        base_url = endpoint.base_url.rstrip("/")
        self.url = base_url + "/chat/completions"  # part of the cache key, as before the openai client
        self.model, self.max_tokens, self.api_key_env = endpoint.model, endpoint.max_tokens, endpoint.api_key_env
        self.client = openai.OpenAI(base_url=base_url, api_key=lambda: os.environ.get(endpoint.api_key_env, ""),
                                    timeout=endpoint.timeout_s, max_retries=endpoint.max_retries)
        self.cache_path = cache
        self.cache: dict[str, str] = {}
        if cache is not None and cache.exists():
            for line in cache.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                self.cache[entry["key"]] = entry["content"]
        self.requests = 0  # answered by the endpoint (its retries not counted)
        self.cache_hits = 0
        self.unusable = 0  # replies without text, and requests the endpoint refused as bad (HTTP 400/422)

    def complete(self, messages: list[dict]) -> str | None:
        """The assistant's reply to ``messages`` (temperature 0), from the cache when asked before; None
        (counted in ``unusable``) when the reply has no text or the endpoint refused this request."""
        body = {"model": self.model, "messages": messages, "temperature": 0.0}
        if self.max_tokens is not None:  # absent, the key of a cache written before the setting existed holds
            body["max_tokens"] = self.max_tokens
        key = hashlib.sha256(json.dumps([self.url, body], sort_keys=True).encode()).hexdigest()
        if key in self.cache:
            self.cache_hits += 1
            return self._usable(self.cache[key])
        self.requests += 1
        try:
            # without a key no Authorization header goes out (a local endpoint), as before the openai client
            unauthenticated = {} if os.environ.get(self.api_key_env) else {"Authorization": openai.omit}
            reply = self.client.chat.completions.create(**body, extra_headers=unauthenticated)
        except (openai.BadRequestError, openai.UnprocessableEntityError):
            # this request (e.g. a prompt past the model's context), not the endpoint: skip it
            self.unusable += 1
            return None
        except openai.APIStatusError as exc:
            unauthorized = f" (is {self.api_key_env} set to the endpoint's key?)" if exc.status_code in (401, 403) else ""
            message = " ".join(exc.message.split())[:300]
            raise EndpointError(f"{self.url}: HTTP {exc.status_code}: {message}{unauthorized}") from None
        except openai.APIConnectionError as exc:
            raise EndpointError(f"{self.url}: cannot connect: {exc.__cause__ or exc} "
                                f"(after {self.client.max_retries} retries)") from None
        choices = getattr(reply, "choices", None) or []
        content = getattr(getattr(choices[0], "message", None), "content", None) if choices else None
        content = content if isinstance(content, str) else ""
        # unusable replies are cached too: at temperature 0 asking again gives the same reply
        self.cache[key] = content
        if self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as cache:
                cache.write(json.dumps({"key": key, "content": content}) + "\n")
        return self._usable(content)

    def _usable(self, content: str) -> str | None:
        if content.strip():
            return content
        self.unusable += 1
        return None

    def metrics(self, prefix: str) -> dict[str, float]:
        """Counts since the client was made: ``<prefix>/requests``, ``/cache_hits`` and ``/unusable``."""
        return {f"{prefix}/requests": float(self.requests), f"{prefix}/cache_hits": float(self.cache_hits),
                f"{prefix}/unusable": float(self.unusable)}


def client_metric_names(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}/{count}" for count in ("requests", "cache_hits", "unusable"))

