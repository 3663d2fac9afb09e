"""The Agent contract the loop relies on, for every built-in algorithm: what it asks of the class before
building an agent, and the action modes."""
from __future__ import annotations

import pytest

from qvpo import algos
from qvpo.agent import Mode
from qvpo.settings import OffPolicySettings

ON_POLICY = {"ppo", "spo"}


@pytest.mark.parametrize("name", sorted(algos.BUILT_IN))
def test_env_count_warmup_and_per_env_settings(name):
    cls = algos.get(name)
    settings = cls.Settings()
    if name in ON_POLICY:
        settings.num_envs = 3
        assert cls.env_count(settings) == 3 and cls.warmup(settings) == 0
    else:
        assert isinstance(settings, OffPolicySettings)
        settings.warmup_steps = 1234
        assert cls.env_count(settings) == 1 and cls.warmup(settings) == 1234
    per_env = cls.env_settings("Hopper-v5")
    assert set(per_env) <= set(vars(settings)), per_env  # only settings the class has
    expected = {"dipo": {"grad_clip": 1.0, "action_grad_ratio": 0.3, "action_gradient_steps": 20,
                         "actor_target_every": 1},
                "dacer": {"noise_scale": 0.1, "warmup_steps": 30_000}}
    assert per_env == expected.get(name, {})


def test_modes_are_the_strings_logs_and_extra_modes_use():
    assert [m.value for m in Mode] == ["explore", "evaluate", "policy"]
    assert Mode.EVALUATE == "evaluate" and "single" != Mode.POLICY
    assert algos.get("qvpo").extra_eval_modes == ("single",)
