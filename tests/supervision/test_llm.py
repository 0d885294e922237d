"""The judge's and hint writer's client (the openai package) on what a real vLLM server cannot be made to
send on demand: 429s with Retry-After, 5xx, empty and malformed replies. A scripted loopback endpoint
plays them; tests/supervision/test_llm_server.py runs the same client against vLLM's own server."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from cluster.config import load_config
from rollout.chat import load_tokenizer
from rollout.envs import load_tasks
from rollout.worker import EpisodeRequest
from supervision.config import EndpointConfig, ReflectionConfig
from supervision.hint import LLMHintWriter, add_hints
from supervision.llm import ChatClient, EndpointError
from supervision.reflection import LLMJudge
from supervision.supervisor import Supervisor
from tests.scripted import scripted_episode

REVIEW = "Turn 1. Mistake: wrong_tool."


def _chat(content) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


class _ScriptedEndpoint(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, headers, body) of ``script``, then with REVIEW."""

    script: ClassVar[list[tuple[int, dict, object]]] = []
    received: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append({"body": body, "auth": self.headers.get("Authorization"), "at": time.monotonic()})
        status, headers, reply = type(self).script.pop(0) if type(self).script else (200, {}, _chat(REVIEW))
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.encode() if isinstance(reply, str) else json.dumps(reply).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    """``endpoint(*script, **config)``: an EndpointConfig of a loopback server that plays ``script``."""
    server = HTTPServer(("127.0.0.1", 0), _ScriptedEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _ScriptedEndpoint.received.clear()

    def make(*script, **config) -> EndpointConfig:
        _ScriptedEndpoint.script[:] = list(script)
        return EndpointConfig(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="judge-1", **config)

    yield make
    server.shutdown()
    server.server_close()


def _bfcl(task_id: str):
    return next(t for t in load_tasks("bfcl", "base") if t.id == task_id)


def _planted(task):
    return [[task.ground_truth[0][:-1]]]  # turn 1 stops one call short


def test_llm_judge_and_hint_writer_cache_by_request_and_never_write_the_key(endpoint, tmp_path, monkeypatch):
    key = "sk-test-7f3a9c-never-on-disk"
    monkeypatch.setenv("JUDGE_KEY", key)
    config = ReflectionConfig(judge="llm", endpoint=endpoint(api_key_env="JUDGE_KEY"))
    task = _bfcl("multi_turn_base_0")
    judge = LLMJudge(config, tmp_path / "run" / "judge_cache.jsonl")
    assert judge.review(task, _planted(task), 0, "state mismatch") == REVIEW
    assert judge.review(task, _planted(task), 0, "state mismatch") == REVIEW
    assert judge.client.metrics("j") == {"j/requests": 1.0, "j/cache_hits": 1.0, "j/unusable": 0.0}
    sent = _ScriptedEndpoint.received[0]
    assert sent["auth"] == f"Bearer {key}" and sent["body"]["model"] == "judge-1"
    assert sent["body"]["temperature"] == 0.0 and "max_tokens" not in sent["body"]
    assert "mv(" in sent["body"]["messages"][1]["content"]  # the ground truth reached the judge
    reloaded = LLMJudge(config, tmp_path / "run" / "judge_cache.jsonl")  # a resumed run reuses the cache
    assert reloaded.review(task, _planted(task), 0, "state mismatch") == REVIEW
    assert reloaded.client.requests == 0 and len(_ScriptedEndpoint.received) == 1
    writer = LLMHintWriter(config.endpoint, tmp_path / "run" / "hint_cache.jsonl")  # same client for hints
    assert writer(task) == writer(task) == REVIEW and len(_ScriptedEndpoint.received) == 2
    monkeypatch.delenv("JUDGE_KEY")  # no key: no Authorization header at all (a local endpoint)
    assert ChatClient(config.endpoint, None).complete([{"role": "user", "content": "hi"}]) == REVIEW
    assert _ScriptedEndpoint.received[-1]["auth"] is None
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(written) == 2 and not any(key in p.read_text() for p in written)


def test_a_429_and_a_503_are_retried_after_the_servers_delay_then_answered(endpoint):
    client = ChatClient(endpoint((429, {"Retry-After": "0.3"}, {"error": "slow down"}),
                                 (503, {"Retry-After": "0.2"}, {"error": "busy"}), max_retries=2), None)
    assert client.complete([{"role": "user", "content": "hi"}]) == REVIEW
    times = [r["at"] for r in _ScriptedEndpoint.received]
    assert len(times) == 3 and client.requests == 1
    assert times[1] - times[0] >= 0.3 and times[2] - times[1] >= 0.2


def test_an_endpoint_that_keeps_failing_or_is_down_gives_one_line(endpoint):
    config = endpoint(*[(500, {"Retry-After": "0.05"}, {"error": {"message": "engine\ndead"}})] * 3, max_retries=2)
    with pytest.raises(EndpointError) as failed:
        ChatClient(config, None).complete([{"role": "user", "content": "hi"}])
    assert len(_ScriptedEndpoint.received) == 3  # the request and its two retries
    assert str(failed.value).startswith(f"{config.base_url}/chat/completions: HTTP 500")
    assert "engine dead" in str(failed.value) and "\n" not in str(failed.value)
    down = EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, timeout_s=5)
    started = time.monotonic()
    with pytest.raises(EndpointError) as failed:
        ChatClient(down, None).complete([{"role": "user", "content": "hi"}])
    assert str(failed.value).startswith("http://127.0.0.1:9/v1/chat/completions: cannot connect")
    assert "after 1 retries" in str(failed.value) and "\n" not in str(failed.value)
    assert time.monotonic() - started < 5


def test_unusable_replies_are_counted_and_skipped_and_asked_once(endpoint, tmp_path):
    script = [(200, {}, _chat("")), (200, {}, _chat("  \n")), (200, {}, {"choices": []}),
              (200, {}, _chat(None)), (400, {}, {"error": {"message": "prompt too long"}})]
    client = ChatClient(endpoint(*script), tmp_path / "cache.jsonl")
    asked = [[{"role": "user", "content": f"question {i}"}] for i in range(len(script))]
    assert [client.complete(messages) for messages in asked] == [None] * 5
    assert client.metrics("c") == {"c/requests": 5.0, "c/cache_hits": 0.0, "c/unusable": 5.0}
    again = ChatClient(endpoint(), tmp_path / "cache.jsonl")  # the next server reply would be usable
    assert [again.complete(messages) for messages in asked[:4]] == [None] * 4  # cached: asked once
    assert again.metrics("c") == {"c/requests": 0.0, "c/cache_hits": 4.0, "c/unusable": 4.0}
    assert again.complete(asked[4]) == REVIEW  # a refused request was not cached


def test_unusable_judge_and_hint_replies_leave_the_step_without_them(endpoint, tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    tasks = [t for t in load_tasks("synth", "train", limit=50) if all(t.ground_truth)][:2]
    config = endpoint((200, {}, _chat("")), (200, {}, _chat(REVIEW)))
    settings = config.model_dump()
    overrides = [f"supervision.reflection.endpoint.{k}={v}" for k, v in settings.items() if v is not None]
    run = load_config(None, ["supervision.mode=interleaved", "supervision.signals=[reflection]",
                             "supervision.reflection.judge=llm", *overrides])
    supervisor = Supervisor(run, tokenizer, tasks, tmp_path)
    failed = [replace(scripted_episode(task, tokenizer, replies=["I cannot help."] * len(task.turns))[0],
                      group_id=group, sample_index=0) for task, group in zip(tasks, "ab")]
    _, metrics = supervisor.transform(failed, tasks)
    assert metrics["supervision/collected/reflection"] == 1.0  # group a's review was empty: skipped
    assert [metrics[f"supervision/reflection/judge/{k}"] for k in ("requests", "cache_hits", "unusable")] == [2, 0, 1]
    assert [s.task_id for s in supervisor.failures.items] == [tasks[1].id]

    writer = LLMHintWriter(endpoint((200, {}, _chat("   "))), None)
    groups = add_hints([[EpisodeRequest(tasks[0], "a", k, seed=k) for k in range(2)],
                        [EpisodeRequest(tasks[1], "b", k, seed=k) for k in range(2)]],
                       members=1, position="user", writer=writer)
    assert [[r.hint for r in group] for group in groups] == [[None, None], [REVIEW, None]]
    assert writer.client.unusable == 1
