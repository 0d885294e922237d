"""RolloutWorker: one vLLM engine driving many live tool episodes at once, returning typed trajectories.

Token-in/token-out: a trajectory's ``token_ids`` are exactly what the engine was fed and produced. Only
the text *between* generations (tool responses, the next user message, the generation prompt) is ever
tokenised, as the chat template's delta after an ``<|im_end|>``; generated text is never re-tokenised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray
import torch

from rollout.chat import IM_END, load_tokenizer
from rollout.config import RewardConfig, RolloutConfig, thread_counts
from rollout.envs import EnvEpisode, EpisodeResult, Task
from rollout.formats import get_format
from rollout.types import ToolCall


@dataclass
class EpisodeRequest:
    task: Task
    group_id: str
    sample_index: int
    seed: int
    hint: str | None = None  # text added to the sampling prompt only (supervision's hint signal)
    hint_position: str = "user"  # "system": end of the system prompt; "user": start of the first user message
    format: str | None = None  # tool-call syntax of this episode (format-OOD eval); None: rollout.format


@dataclass
class Trajectory:
    task_id: str
    group_id: str
    sample_index: int
    token_ids: list[int]
    loss_mask: list[int]  # 1 exactly on tokens the policy generated (each message's <|im_end|> included)
    logprobs: list[float]  # sampling logprob of each token; 0.0 where loss_mask is 0
    messages: list[dict]  # the conversation the environment saw (assistant text decoded from its tokens)
    calls: list[list[list[ToolCall]]]  # [user turn][assistant step] -> parsed calls
    tool_results: list[list[list[str]]]  # [user turn][assistant step] -> observations
    parse_errors: int
    truncated: bool  # a message hit max_new_tokens, a turn hit max_steps_per_turn, or the episode its token limit
    reward: float
    result: EpisodeResult
    timings: dict[str, float] = field(default_factory=dict)
    hint: str | None = None  # the hint its sampling prompt carried (kept after strip_hint, as a marker)
    hint_position: str = "user"
    prompt_length: int = 0  # tokens before the first generated one (the sampled prompt, hint included)
    unhinted_prompt_ids: list[int] = field(default_factory=list)  # that prompt without the hint (hinted only)
    format: str = "hermes"  # the tool-call syntax the episode was prompted and parsed with
    message_truncated: list[bool] = field(default_factory=list)  # per assistant message: cut at max_new_tokens


def by_group(trajectories: list[Trajectory]) -> dict[str, list[int]]:
    """Group id → the indices of its members in ``trajectories``, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, trajectory in enumerate(trajectories):
        groups.setdefault(trajectory.group_id, []).append(index)
    return groups


def hinted(content: str, hint: str, position: str) -> str:
    """A system prompt (hint at its end) or user message (hint at its start) with the hint added."""
    return f"{content}\n{hint}" if position == "system" else f"{hint}\n{content}"


class TokenEpisode:
    """The token side of one episode in progress: the token stream, its masks and logprobs, and the
    EnvEpisode behind it."""

    def __init__(self, request: EpisodeRequest, tokenizer, config: RolloutConfig, reward: RewardConfig):
        self.request, self.tokenizer, self.config = request, tokenizer, config
        self.format = get_format(request.format or config.format, config.tool_descriptions)
        self.env = EnvEpisode(request.task, reward)
        self.end_id = tokenizer.convert_tokens_to_ids(IM_END)
        self.messages = [{"role": "system", "content": self.format.render_tools(request.task.tools)}]
        self.calls: list[list[list[ToolCall]]] = []
        self.results: list[list[list[str]]] = []
        self.truncated = False
        self.message_truncated: list[bool] = []
        self.done = False
        self.started = time.perf_counter()
        self._open_turn()
        self.unhinted_prompt_ids = []
        if request.hint:
            self.unhinted_prompt_ids = self._render(add_generation_prompt=True)
            where = self.messages[0 if request.hint_position == "system" else 1]
            where["content"] = hinted(where["content"], request.hint, request.hint_position)
        self.token_ids = self._render(add_generation_prompt=True)
        self.prompt_length = len(self.token_ids)
        self.loss_mask = [0] * len(self.token_ids)
        self.logprobs = [0.0] * len(self.token_ids)
        if len(self.token_ids) + config.max_new_tokens > config.max_total_tokens:
            # the task does not fit the context at all (e.g. BFCL's tool docs for a tiny model): it is
            # scored as a failure without a generation, never sent to the engine
            self.truncated = True
            self._finish_early()

    def _render(self, add_generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(self.messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _open_turn(self) -> None:
        turn = len(self.calls)
        user = "\n".join(self.env.begin_turn())
        revealed = self.request.task.revealed_tools.get(turn)
        if revealed:
            user = self.format.render_tools(revealed) + "\n" + user
        self.messages.append({"role": "user", "content": user})
        self.calls.append([])
        self.results.append([])

    def _append_template_delta(self, before: int, add_generation_prompt: bool) -> None:
        """Tokenise what the template adds after message ``before - 1`` (which ended with <|im_end|>)."""
        previous = self.tokenizer.apply_chat_template(self.messages[:before], tokenize=False)
        full = self.tokenizer.apply_chat_template(self.messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        if not previous.endswith(IM_END + "\n") or not full.startswith(previous):
            raise RuntimeError("chat template is not prefix-stable after <|im_end|>; cannot append token deltas")
        # The delta starts right after a special token, so tokenising it alone cannot change a merge.
        delta = self.tokenizer.encode(full[len(previous) - 1 :], add_special_tokens=False)
        self.token_ids += delta
        self.loss_mask += [0] * len(delta)
        self.logprobs += [0.0] * len(delta)

    def receive(self, token_ids: list[int], logprobs: list[float], finished: bool) -> None:
        """Take one generated assistant message, act on it, and append what the model sees next."""
        self.token_ids += token_ids
        self.loss_mask += [1] * len(token_ids)
        self.logprobs += logprobs
        cut = not finished or not token_ids or token_ids[-1] != self.end_id
        self.message_truncated.append(cut)
        if cut:
            # cut at max_new_tokens: close the message with a template token the policy did not choose
            self.truncated = True
            self.token_ids.append(self.end_id)
            self.loss_mask.append(0)
            self.logprobs.append(0.0)
            body = token_ids
        else:
            body = token_ids[:-1]
        text = self.tokenizer.decode(body, skip_special_tokens=False)
        before = len(self.messages) + 1
        self.messages.append({"role": "assistant", "content": text})
        step = self.env.act(text, self.format)
        if step.calls or step.format_error:
            self.calls[-1].append(step.calls)
            self.results[-1].append(step.observations)
            limit = self.config.max_observation_chars
            for observation in step.observations:
                shown = observation if len(observation) <= limit else observation[:limit] + " ...[truncated]"
                self.messages.append({"role": "tool", "content": shown})
            if len(self.calls[-1]) >= self.config.max_steps_per_turn:
                self.truncated = True
                self._close_turn()
        else:
            self._close_turn()
        if not self.done:
            self._append_template_delta(before, add_generation_prompt=True)
            if len(self.token_ids) + self.config.max_new_tokens > self.config.max_total_tokens:
                self.truncated = True
                self._finish_early()

    def _close_turn(self) -> None:
        self.env.end_turn()
        if self.env.done:
            self.done = True
        else:
            self._open_turn()

    def _finish_early(self) -> None:
        """Out of context: the open turn and all later ones end without further calls (and are scored)."""
        # user/tool messages appended after the last generation were never answered: drop their tokens
        # (a task that never reached the engine keeps its prompt)
        if 1 in self.loss_mask:
            while self.loss_mask[-1] == 0:
                self.token_ids.pop()
                self.loss_mask.pop()
                self.logprobs.pop()
        while not self.env.done:
            self.env.end_turn()
            if not self.env.done:
                self.env.begin_turn()
        self.done = True

    def trajectory(self) -> Trajectory:
        result = self.env.result()
        return Trajectory(
            task_id=self.request.task.id,
            group_id=self.request.group_id,
            sample_index=self.request.sample_index,
            token_ids=self.token_ids,
            loss_mask=self.loss_mask,
            logprobs=self.logprobs,
            messages=self.messages,
            calls=self.calls,
            tool_results=self.results,
            parse_errors=result.format_errors,
            truncated=self.truncated,
            reward=result.reward,
            result=result,
            timings={"episode_s": time.perf_counter() - self.started},
            hint=self.request.hint,
            hint_position=self.request.hint_position,
            prompt_length=self.prompt_length,
            unhinted_prompt_ids=self.unhinted_prompt_ids,
            message_truncated=self.message_truncated,
            format=self.format.name,
        )


class StaleWorker(RuntimeError):
    """A call meant for a worker holding the pool's settings and weights reached one that Ray restarted since."""


class RolloutWorker:
    """Holds one engine; ``run`` plays a batch of episodes with continuous batching across them.

    Used directly in-process, or as a Ray actor (``ray.remote(RolloutWorker)``) — the same class. As an actor
    its calls carry the pool's ``version`` (how many settings and weights the pool has sent): a worker that
    Ray restarted is back at 0, its constructor's, and refuses calls that assume more (``StaleWorker``).
    """

    def __init__(self, model_path: str, config: RolloutConfig, reward: RewardConfig, seed: int = 0):
        from rollout.engine import Engine

        self.start(config, reward)
        self.version = 0
        self.tokenizer = load_tokenizer(model_path)
        self.engine = Engine(model_path, dtype=config.dtype, max_model_len=config.max_total_tokens, seed=seed,
                             kv_cache_gib=config.kv_cache_gib, gpu_memory_utilization=config.gpu_memory_utilization,
                             sleep_mode=config.sleep_during_update)
        self.threads, self.shared_threads = thread_counts(config.threads, config.workers, config.worker_cpus)
        self.wanted_threads = self.threads  # Ray set as many as the actor's reserved CPUs; taken at each engine call

    @ray.method(concurrency_group="cores")
    def share_cores(self, shared: bool) -> None:
        """Beside a learner update (one_step_off), the worker's reserved CPUs: more OpenMP threads than free
        cores stall. A call of its own concurrency group: it lands in the middle of a ``run``, whose next
        engine call takes the new count."""
        self.wanted_threads = self.shared_threads if shared else self.threads

    def start(self, config: RolloutConfig, reward: RewardConfig, version: int | None = None) -> None:
        """The run's sampling, dialog and scoring settings; the engine keeps those ``ENGINE_FIELDS`` name."""
        self._advance(version)
        self.config, self.reward = config, reward

    def restore(self, config: RolloutConfig, reward: RewardConfig, weights, version: int) -> None:
        """A restarted worker brought to the pool's state: settings, weights (None: the model files') and version."""
        self.start(config, reward)
        if weights is not None:
            self.update_weights(weights)
        self.version = version

    def _advance(self, version: int | None) -> None:
        if version is not None:
            if version != self.version + 1:
                raise StaleWorker(f"pool at version {version - 1}, worker at {self.version}")
            self.version = version

    def run(self, requests: list[EpisodeRequest], temperature: float | None = None,
            version: int | None = None) -> list[Trajectory]:
        if version is not None and version != self.version:
            raise StaleWorker(f"pool at version {version}, worker at {self.version}")
        live = [TokenEpisode(r, self.tokenizer, self.config, self.reward) for r in requests]
        end_id = live[0].end_id if live else None
        rounds: list[int] = [0] * len(live)
        started = time.perf_counter()
        generated = 0
        while pending := [i for i, episode in enumerate(live) if not episode.done]:
            # every episode waiting for the model goes into one engine call
            torch.set_num_threads(self.wanted_threads)  # in this thread: OpenMP's count is per thread
            outputs = self.engine.generate(
                [live[i].token_ids for i in pending],
                max_tokens=self.config.max_new_tokens,
                stop_token_ids=[end_id],
                temperature=self.config.temperature if temperature is None else temperature,
                top_p=self.config.top_p,
                seeds=[live[i].request.seed * 1000 + rounds[i] for i in pending],
            )
            for i, output in zip(pending, outputs):
                rounds[i] += 1
                generated += len(output.token_ids)
                live[i].receive(output.token_ids, output.logprobs, output.finish_reason == "stop")
        trajectories = [episode.trajectory() for episode in live]
        elapsed = time.perf_counter() - started
        for trajectory in trajectories:
            trajectory.timings.update(batch_s=elapsed, batch_generated_tokens=float(generated))
        return trajectories

    def update_weights(self, state_dict, version: int | None = None) -> None:
        self._advance(version)
        self.engine.update_weights(state_dict)

    def gpu_ids(self) -> list:
        import ray

        return ray.get_gpu_ids()

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def ready(self) -> bool:
        return True


def group_requests(tasks: list[Task], group_size: int, seed: int, tag: str = "",
                   fmt: str | None = None) -> list[list[EpisodeRequest]]:
    """G episode requests per task, one group id per task, a distinct seed per episode (syntax ``fmt``:
    None is rollout.format)."""
    return [
        [EpisodeRequest(task, f"{tag}{index}:{task.id}", k, seed=seed + index * group_size + k, format=fmt)
         for k in range(group_size)]
        for index, task in enumerate(tasks)
    ]
