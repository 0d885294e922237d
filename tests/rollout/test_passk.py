"""pass@k (Chen et al. 2021's unbiased estimator) against hand-computed values, and its summaries."""

from __future__ import annotations

import pytest

from rollout.passk import headroom_summary, pass_at_k


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (8, 3, 1, 3 / 8),  # k = 1: the sampled success rate
    (8, 3, 8, 1.0),  # k = n: any success at all
    (8, 0, 8, 0.0),  # c = 0
    (8, 0, 1, 0.0),
    (8, 8, 1, 1.0),  # c = n
    (4, 2, 2, 1 - 1 / 6),  # 1 - C(2,2)/C(4,2)
    (5, 1, 3, 3 / 5),  # 1 - C(4,3)/C(5,3) = 1 - 4/10
])
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_refuses_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 5)


def test_summary_by_template_counts_a_task_for_every_template_it_uses():
    rows = [{"id": "a", "category": "x", "templates": ["t1", "t2"], "greedy": True, "samples": 4, "successes": 4},
            {"id": "b", "category": "x", "templates": ["t2"], "greedy": False, "samples": 4, "successes": 1}]
    summary = headroom_summary(rows, by="template")
    assert list(summary) == ["t1", "t2", "all"]
    assert summary["t1"] == {"tasks": 1, "greedy": 1.0, "sampled": 1.0, "pass@1": 1.0, "pass@2": 1.0, "pass@4": 1.0}
    assert summary["t2"]["tasks"] == 2 and summary["t2"]["sampled"] == pytest.approx((1 + 0.25) / 2)
    assert summary["t2"]["pass@2"] == pytest.approx((1 + 0.5) / 2)  # 1 - C(3,2)/C(4,2) = 0.5
    assert summary["all"]["greedy"] == 0.5 and "pass@8" not in summary["all"]


def test_eval_logs_success_per_template_for_every_template_a_task_uses():
    from rollout.config import EnvConfig
    from rollout.envs.synth import task_templates
    from rollout.evaluate import build_suite, template_metrics

    suite = build_suite("id", EnvConfig(), "hermes", limit=6)
    rows = [{"id": task.id, "success": index % 2 == 0} for index, task in enumerate(suite.tasks)]
    expected: dict[str, list[bool]] = {}
    for task, row in zip(suite.tasks, rows):
        for name in dict.fromkeys(task_templates(task, seed=0)):
            expected.setdefault(name, []).append(row["success"])
    metrics = template_metrics(suite, rows)
    assert metrics == {f"eval/template/{n}": sum(w) / len(w) for n, w in expected.items()}
    assert sum(len(w) for w in expected.values()) >= len(rows)  # multi-template tasks count for each
