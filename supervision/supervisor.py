"""The signals of one run behind one object: the Scheduler calls it in its sample and supervise phases.

A signal may (a) decorate sampling requests (hint), (b) transform the sampled batch before the update
(hint: strip; off_policy: replace members; erroneous/reflection: collect failures), (c) contribute SFT
samples (expert, erroneous, reflection). ``supervision.config.step_kind`` decides which update a step runs.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from learner.batch import SequenceBatch, rl_batch
from rollout.envs import Task
from rollout.formats import get_format
from rollout.worker import EpisodeRequest, Trajectory, by_group
from supervision.erroneous import FailureBuffer, erroneous_samples
from supervision.expert import ExpertData, ground_truth_trajectory
from supervision.hint import LLMHintWriter, add_hints, strip_hint, template_hint
from supervision.reflection import LLMJudge, RuleJudge, reflection_sample

JUDGE_CACHE = "judge_cache.jsonl"  # LLM answers, keyed by request: a resumed or repeated run asks nothing again
HINT_CACHE = "hint_cache.jsonl"


class Supervisor:
    def __init__(self, config, tokenizer, train_tasks: list[Task], run_dir: Path):
        self.config, self.sup = config, config.supervision
        self.signals = set(self.sup.signals)
        self.tokenizer = tokenizer
        self.fmt = get_format(config.rollout.format, config.rollout.tool_descriptions)
        self.expert = None
        if "expert" in self.signals:
            self.expert = ExpertData(train_tasks, self.fmt, tokenizer, config.trainer.seed, self.sup.expert.jsonl)
        self.failures = FailureBuffer(self.sup.erroneous.buffer_size)
        hint = self.sup.hint
        self.hint_writer = (LLMHintWriter(hint.endpoint, run_dir / HINT_CACHE) if hint.writer == "llm"
                            else partial(template_hint, detail=hint.detail))
        self.judge = None
        if "reflection" in self.signals:
            self.judge = (LLMJudge(self.sup.reflection, run_dir / JUDGE_CACHE) if self.sup.reflection.judge == "llm"
                          else RuleJudge(self.sup.reflection, self.fmt, train_tasks))

    # ---- (a) sample -------------------------------------------------------------------------------------
    def decorate(self, groups: list[list[EpisodeRequest]]) -> list[list[EpisodeRequest]]:
        if "hint" not in self.signals:
            return groups
        return add_hints(groups, self.sup.hint.members, self.sup.hint.position, self.hint_writer)

    # ---- (b) supervise ----------------------------------------------------------------------------------
    def transform(self, trajectories: list[Trajectory], tasks: list[Task],
                  train_groups: set[str] | None = None) -> tuple[SequenceBatch, dict[str, float]]:
        """The RL batch the learner trains on (the groups in ``train_groups``; None: every group), and what
        the signals did to it. Failures are collected from every group, also from those the update leaves out."""
        by_id = {t.id: t for t in tasks}
        trajectories = [strip_hint(t) for t in trajectories]
        groups = by_group(trajectories)
        collected = {"erroneous": 0, "reflection": 0}
        if self.signals & {"erroneous", "reflection"}:
            for members in groups.values():  # one failure per group: the task, not its G siblings, is the news
                failed = next((trajectories[i] for i in members if not trajectories[i].result.success), None)
                if failed is not None:
                    for sample in self._failure_samples(by_id[failed.task_id], failed):
                        collected[sample["signal"]] += 1
                        self.failures.add([sample])
        hinted = {t.group_id for t in trajectories if t.hint}
        if train_groups is not None:
            trajectories = [t for t in trajectories if t.group_id in train_groups]
        trajectories, origins, replaced = self._put_ground_truth(trajectories, by_id)
        learner = self.config.learner
        batch = rl_batch(trajectories, learner.scale_advantages_by_std, learner.skip_flat_groups, origins,
                         self.config.rollout.temperature)
        if self.sup.off_policy.loss == "shaped":
            batch.shaped_gamma = self.sup.off_policy.gamma
        batch.hint_importance_cap = self.sup.hint.importance_max
        trained = len(groups) if train_groups is None else len(train_groups)
        return batch, {
            "supervision/hinted_group_share": len(hinted) / max(len(groups), 1),
            "supervision/replaced_group_share": replaced / max(trained, 1),  # of the groups the update sees
            "supervision/collected/erroneous": float(collected["erroneous"]),
            "supervision/collected/reflection": float(collected["reflection"]),
        }

    def informative_groups(self, trajectories: list[Trajectory], tasks: list[Task]) -> list[str]:
        """Ids of the groups, in order, whose rewards differ once ``transform`` has put the ground truth in
        (dynamic sampling keeps these): a group of failures that off_policy rescues teaches GRPO too."""
        trajectories = self._put_ground_truth(trajectories, {t.id: t for t in tasks})[0]
        return [group for group, members in by_group(trajectories).items()
                if len({trajectories[i].reward for i in members}) > 1]

    def _put_ground_truth(self, trajectories: list[Trajectory],
                          by_id: dict[str, Task]) -> tuple[list[Trajectory], list[str], int]:
        """off_policy: the ground truth in place of the last k members of each group its rule picks.
        Returns the trajectories, each one's origin, and how many groups got the ground truth."""
        trajectories = list(trajectories)
        origins = ["hint" if t.hint else "policy" for t in trajectories]
        if "off_policy" not in self.signals:
            return trajectories, origins, 0
        rule, replaced = self.sup.off_policy, 0
        for members in by_group(trajectories).values():
            if rule.when == "no_success" and any(trajectories[i].result.success for i in members):
                continue
            replaced += 1
            for i in members[len(members) - min(rule.members, len(members)):]:
                like = trajectories[i]
                trajectories[i] = ground_truth_trajectory(by_id[like.task_id], like, self.fmt, self.tokenizer,
                                                          self.config.env.reward)
                origins[i] = "expert"
        return trajectories, origins, replaced

    def _failure_samples(self, task: Task, trajectory: Trajectory) -> list[dict]:
        samples = []
        if "erroneous" in self.signals:
            samples += erroneous_samples(task, trajectory, self.fmt, self.tokenizer, self.config.env.reward)
        if self.judge is not None:
            result = trajectory.result
            text = self.judge.review(task, trajectory.calls, result.first_failed_turn, result.failure)
            samples.append(reflection_sample(task, trajectory, text, self.fmt, self.tokenizer))
        return samples

    # ---- (c) SFT samples --------------------------------------------------------------------------------
    def sft_batch(self, size: int) -> tuple[SequenceBatch, dict[str, float]]:
        """``size`` SFT sequences, shared between expert data and the failure buffer when both are active."""
        from_failures = self.failures.take(size if self.expert is None else math.ceil(size / 2))
        sequences = [(s["ids"], s["mask"], s["signal"]) for s in from_failures]
        if self.expert is not None:
            sequences += [(ids, mask, "expert") for ids, mask in self.expert.take(size - len(sequences))]
        counts = {f"supervision/sft_samples/{signal}": float(sum(s[2] == signal for s in sequences))
                  for signal in ("expert", "erroneous", "reflection")}
        return SequenceBatch([s[0] for s in sequences], [s[1] for s in sequences]), counts

    # ---- checkpoint -------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"expert_position": self.expert.position if self.expert else 0, "failures": self.failures.state()}

    def restore(self, state: dict) -> None:
        if self.expert is not None:
            self.expert.position = state["expert_position"]
        self.failures.restore(state["failures"])

