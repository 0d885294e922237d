"""docs/config.md is generated from the config's models; a field added or changed without regenerating it fails."""

from cluster.config_reference import COMMAND, OUTPUT, render


def test_config_reference_is_up_to_date():
    assert OUTPUT.read_text(encoding="utf-8") == render(), (
        f"docs/config.md is stale: regenerate it with `{COMMAND}` and commit it")


def test_config_reference_lists_nested_fields():
    text = render()
    for dotted in ("env.reward.shaping", "learner.lora.rank", "supervision.interleaved.phases[].kind",
                   "supervision.alarm.watch.<key>.threshold", "trainer.dynamic_sampling.max_draws"):
        assert f"| `{dotted}` |" in text, dotted
