"""DIPO: diffusion policy with action-gradient improvement (Yang et al. 2023).

Faithful to the authors' code, BellmanTimeHut/DIPO@bb3d85b (main.py, agent/DiPo.py,
agent/replay_memory.py); docs/algorithms.md summarises. One update, read top to bottom in
`train_step`:
1. critic: y = r + gamma (1 - done) min(Q1', Q2')(s', a'), a' one draw of the target
   actor's full DDPM sampler; loss = sum of the two MSEs;
2. action gradient: a batch of (s, a) from the diffusion memory (a replay column
   whose actions start as the executed ones); a fresh Adam over the actions ascends
   min(Q1, Q2)(s, a) for a few steps, each gradient clipped in norm over the whole
   B x A tensor, each step clamped to [-1, 1];
3. actor: the plain DDPM noise-prediction loss on (s, improved a);
4. soft target updates (the actor's every `actor_target_every` updates).
Acting is one sample of the current actor; evaluation the same with the sampling
noise switched off.

The authors' write-back of improved actions is a no-op: `np.copyto(self.best_actions[idxs],
...)` copies into the temporary array that fancy indexing returns, so their memory keeps
the executed actions and each update improves those afresh. `memory_write_back=False`
(the default, what their code does) reproduces that; True writes the improved actions
back as the paper's algorithm means.

Other quirks of their main.py not reproduced, as they are loop artefacts: an evaluation
ends the running training episode; updates start at step 10,000 inclusive.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qvpo.agent import Mode
from qvpo.diffusion import NoisePredictor, NoisePredictorAgent, NoisePredictorSettings, ddpm_sample, weighted_eps_loss
from qvpo.errors import UserError
from qvpo.nets import gradient_step, soft_update, twin_q_step
from qvpo.settings import require_positive

DIPO_ENV_SETTINGS: dict[str, dict[str, object]] = {
    "Hopper": {"grad_clip": 1.0, "action_grad_ratio": 0.3, "action_gradient_steps": 20, "actor_target_every": 1},
    "Walker2d": {"grad_clip": 2.0, "action_grad_ratio": 0.08, "action_gradient_steps": 20, "actor_target_every": 1},
    "Ant": {"grad_clip": 0.8, "action_grad_ratio": 0.1, "action_gradient_steps": 20, "actor_target_every": 1},
    "HalfCheetah": {"grad_clip": 2.0, "action_grad_ratio": 0.08, "action_gradient_steps": 40, "actor_target_every": 2},
    "Humanoid": {"grad_clip": 2.0, "action_grad_ratio": 0.1, "action_gradient_steps": 20, "actor_target_every": 1},
}
"""Per-environment settings, the authors' README table "Hyper-parameters for MuJoCo (DIPO)"
(their v3 envs; action lr 0.03, T = 100 and the cosine schedule are the same for all five).
The agent never sees the env id: the pipeline passes these with --set (see `DIPO.env_settings`)."""


@dataclass
class DIPOSettings(NoisePredictorSettings):
    """DIPO's settings; defaults are the authors' main.py defaults (per env: DIPO_ENV_SETTINGS)."""

    diffusion_steps: int = 100
    """T, denoising steps with the cosine schedule (authors' main.py n_timesteps; README: 100 for every env)."""
    actor_lr: float = 3e-4
    """Diffusion-policy learning rate (authors' main.py diffusion_lr)."""
    action_lr: float = 0.03
    """Learning rate of the Adam over the memory's actions (authors' main.py action_lr; README: all envs)."""
    action_gradient_steps: int = 20
    """Adam steps on the actions per update (authors' main.py; README: 40 on HalfCheetah)."""
    action_grad_ratio: float = 0.1
    """The action gradient's norm is clipped to act_dim * this, 0 for none (authors' main.py ratio; per env)."""
    memory_write_back: bool = False
    """True writes improved actions back to the memory (the paper); the authors' write is a no-op (see above)."""
    noise_ratio: float = 1.0
    """Scale of the sampler's noise when acting and in the TD target (authors' main.py noise_ratio)."""
    actor_target_every: int = 1
    """Updates between target-actor updates (authors' main.py update_actor_target_every; HalfCheetah 2)."""

    def validate(self) -> None:
        super().validate()
        require_positive(self, "actor_target_every")
        if self.action_gradient_steps < 0:
            raise UserError(f"setting 'action_gradient_steps' must be >= 0, got {self.action_gradient_steps}")


def improve_actions(critic, states: torch.Tensor, actions: torch.Tensor, steps: int, lr: float, eps: float,
                    max_norm: float) -> torch.Tensor:
    """DIPO's action gradient: `steps` steps of a fresh Adam on loss = -sum min(Q1, Q2)(s, a).

    Each step clips the gradient's norm over the whole [B, A] tensor to max_norm (0: no clip)
    and clamps the actions to [-1, 1] (authors' DiPo.action_gradient). Only the actions get
    gradients; the critic's are left untouched.
    """
    a = actions.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([a], lr=lr, eps=eps)
    for _ in range(steps):
        (a.grad,) = torch.autograd.grad(-critic.min_q(states, a).sum(), a)
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_([a], max_norm)
        optimizer.step()
        with torch.no_grad():
            a.clamp_(-1.0, 1.0)
    return a.detach()


class DIPO(NoisePredictorAgent):
    Settings = DIPOSettings
    metrics = ("q_loss", "actor_loss", "q_mean", "action_shift")
    replay_columns = {"memory_action": "action"}

    @staticmethod
    def env_settings(env_id: str) -> dict[str, object]:
        """The README's settings for an env id such as "Hopper-v5"; {} for an env the table lacks."""
        return dict(DIPO_ENV_SETTINGS.get(env_id.split("-v")[0], {}))

    def sample(self, actor: NoisePredictor, states: torch.Tensor, noise_ratio: float) -> torch.Tensor:
        return ddpm_sample(actor, self.schedule, states, 1, noise_ratio=noise_ratio, factored=self.factored)[:, 0]

    @torch.no_grad()
    def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        return self.sample(self.actor, obs, 0.0 if mode == Mode.EVALUATE else self.cfg.noise_ratio)

    def train_step(self, b: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        c = self.cfg
        done = self.bootstrap_mask(b)

        # 1. critic: one draw of the target actor's sampler at s'
        with torch.no_grad():
            next_action = self.sample(self.actor_target, b["next_obs"], c.noise_ratio)
            y = b["reward"] + c.gamma * (1 - done) * self.critic_target.min_q(b["next_obs"], next_action)
        q_loss = twin_q_step(self.critic, self.critic_optimizer, b["obs"], b["action"], y, c.grad_clip)

        # 2. action gradient on a batch of the diffusion memory (its own draw of rows, as the authors')
        idx = self.replay.sample_indices(c.batch_size)
        memory = self.replay.get(idx, ("obs", "memory_action"))
        states = memory["obs"]
        improved = improve_actions(self.critic, states, memory["memory_action"], c.action_gradient_steps,
                                   c.action_lr, c.adam_eps, self.act_dim * c.action_grad_ratio)
        if c.memory_write_back:
            self.replay.write("memory_action", idx, improved)

        # 3. actor: plain DDPM loss on the improved actions
        actor_loss = weighted_eps_loss(self.actor, self.schedule, improved, states, factored=self.factored)
        gradient_step(self.actor_optimizer, actor_loss, self.actor.parameters(), c.grad_clip)

        # 4. targets; the authors count updates from 0, so the first one moves the actor target too
        soft_update(self.critic_target, self.critic, c.tau)
        if (self.n_updates - 1) % c.actor_target_every == 0:
            soft_update(self.actor_target, self.actor, c.tau)
        return {"q_loss": q_loss, "actor_loss": actor_loss.detach(), "q_mean": y.mean(),
                "action_shift": (improved - memory["memory_action"]).abs().mean()}
