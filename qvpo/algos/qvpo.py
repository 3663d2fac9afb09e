"""QVPO: Q-weighted variational policy optimisation (Ding et al., NeurIPS 2024).

Faithful to the authors' code, wadx2019/qvpo@40a1974, run as their README says
(`main.py --weighted --aug --q_transform qadv`); docs/algorithms.md lists where the code
and the paper differ. One update, read top to bottom in `train_step`:
1. critic: the target actor draws Kt candidates per next state, the best by the
   target critics' min Q gives y = r + gamma (1 - done) min(Q1', Q2')(s', a');
2. policy: the actor draws Nd candidates per state, scored by the current critics;
   the best one a_max carries the Q-weight w_eq (a transform of its Q and V(s) = the
   mean score);
3. entropy: Ne uniform actions per state, each weighted omega * w_eq(s, a_max), omega
   decaying linearly with training progress to a floor;
4. one step on the weighted diffusion loss over all those rows.
Acting: the behaviour policy is the best of Kb candidates; evaluation the best of 32.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from qvpo.agent import Mode
from qvpo.diffusion import (NoisePredictor, NoisePredictorAgent, NoisePredictorSettings, best_candidate,
                            ddpm_sample, weighted_eps_loss)
from qvpo.fastpath import chunk_network
from qvpo.nets import soft_update, twin_q_step
from qvpo.settings import require_positive


@dataclass
class QVPOSettings(NoisePredictorSettings):
    """QVPO's settings; defaults are the authors' (main.py with --weighted --aug) unless said."""

    diffusion_steps: int = 20
    """T, denoising steps with the cosine schedule (authors' main.py n_timesteps)."""
    nd: int = 64
    """Nd, candidates per state in the policy step (authors' --train_sample 64)."""
    kb: int = 4
    """Kb, candidates of the behaviour policy; the best by Q acts (authors' --behavior_sample 4)."""
    kt: int = 4
    """Kt, target-actor candidates per next state for the TD target (authors' --target_sample 4)."""
    eval_candidates: int = 32
    """Candidates of the evaluation policy, best by Q, sampling noise on (authors' evaluate)."""
    ne: int = 10
    """Ne, uniform actions per state in the entropy term (authors' --aug; 10)."""
    omega_ent: float = 0.02
    """Initial entropy weight (authors' --entropy_alpha 0.02; FlowRL's reading of the paper: 0.01)."""
    omega_ent_min: float = 0.002
    """Floor of the linearly decaying entropy weight (authors' code)."""
    q_transform: Literal["qadv", "qcut", "qcut_paper"] = "qadv"
    """Q-weight transform: qadv max(Q - V, 0) (README default); qcut as the authors' code computes it;
    qcut_paper the paper's proportional form."""
    qcut_cut: float = 1.0
    """Lower cut of the authors' qcut weight, max(Q(s, a_max), cut) (authors' code)."""
    actor_lr: float = 1e-4
    """Diffusion-policy learning rate (authors' main.py diffusion_lr)."""
    sample_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the noise net while sampling candidates; bfloat16 trades precision for speed (ours). On the CPU's
    fast path only the hidden products run in it; on CUDA's plain path the whole network runs under autocast."""
    compile: bool = False
    """Run the sampler's network through torch.compile (ours): on CUDA in reduce-overhead mode (CUDA graphs;
    untested here), on the CPU in the default mode. Same arithmetic within float rounding."""

    def validate(self) -> None:
        super().validate()
        require_positive(self, "nd", "kb", "kt", "eval_candidates", "ne")


def entropy_weight(step: int, total_steps: int, omega: float, omega_min: float) -> float:
    """omega_ent decays linearly with training progress to a floor: max(min, omega (1 - step/total))."""
    return max(omega_min, omega * (1.0 - step / total_steps))


def q_weights(scores: torch.Tensor, transform: str, cut: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-candidate weights [B, K] and the best candidate's weight w_eq [B] from scores [B, K].

    qadv:       w = max(Q(s, a_max) - V(s), 0) on the argmax, V(s) = mean of the K scores;
    qcut:       w = max(Q(s, a_max), cut) on the argmax (the authors' code under that name);
    qcut_paper: w_k = max(Q_k, 0) on every candidate when max Q > 0, else 1 on the argmax.
    """
    best_q, best = scores.max(dim=1)
    onehot = F.one_hot(best, scores.shape[1]).to(scores.dtype)
    if transform == "qadv":
        w_eq = (best_q - scores.mean(dim=1)).clamp_min(0.0)
        return onehot * w_eq[:, None], w_eq
    if transform == "qcut":
        w_eq = best_q.clamp_min(cut)
        return onehot * w_eq[:, None], w_eq
    positive = (best_q > 0)[:, None]
    weights = torch.where(positive, scores.clamp_min(0.0), onehot)
    return weights, weights.gather(1, best[:, None]).squeeze(1)


def td_target(reward: torch.Tensor, done: torch.Tensor, gamma: float, next_scores: torch.Tensor) -> torch.Tensor:
    """y = r + gamma (1 - done) max_k min(Q1', Q2')(s', a'_k): the best of Kt target candidates [B, Kt]."""
    return reward + gamma * (1 - done) * next_scores.max(dim=1, keepdim=True).values


class CompiledChunkNetwork:
    """torch.compile of the sampler's per-chunk network (CUDA: reduce-overhead mode; CPU: default mode).
    Where torch.compile cannot run (inductor needs a C++ compiler on the CPU, triton on CUDA), it says so once
    on stderr and the chunks run eagerly (the same function uncompiled), so a run goes on at eager speed."""

    def __init__(self, device: torch.device):
        self.compiled = torch.compile(chunk_network, mode="reduce-overhead" if device.type == "cuda" else None)
        self.network = self.compiled

    @property
    def active(self) -> bool:
        """False once torch.compile failed here and the chunks run eagerly."""
        return self.network is self.compiled

    def __call__(self, *args):
        try:
            return self.network(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure; a real error fails again eagerly
            if not self.active:
                raise
            reason = (str(e).strip().splitlines() or [""])[0]
            print(f"qvpo: warning: compile=true but torch.compile failed here ({type(e).__name__}: {reason}); "
                  "sampling without it", file=sys.stderr)
            self.network = chunk_network
            return chunk_network(*args)


class QVPO(NoisePredictorAgent):
    Settings = QVPOSettings
    metrics = ("q_loss", "actor_loss", "w_eq", "omega_ent", "q_mean")
    extra_eval_modes = ("single",)
    def __init__(self, obs_dim, act_dim, settings: QVPOSettings, device, total_steps, seed):
        super().__init__(obs_dim, act_dim, settings, device, total_steps, seed)
        self.sample_dtype = getattr(torch, settings.sample_dtype)
        self.sample_network = CompiledChunkNetwork(device) if settings.compile else None
        if settings.compile:  # what torch.compile compiles is the factored sampler's chunk network, on CUDA too
            self.factored = True

    def sample(self, actor: NoisePredictor, states: torch.Tensor, k: int) -> torch.Tensor:
        return ddpm_sample(actor, self.schedule, states, k, dtype=self.sample_dtype, factored=self.factored,
                           network=self.sample_network)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        if mode in ("single", Mode.POLICY) or (mode == Mode.EXPLORE and self.cfg.kb == 1):
            return self.sample(self.actor, obs, 1)[:, 0]
        k = self.cfg.kb if mode == Mode.EXPLORE else self.cfg.eval_candidates
        action, _ = best_candidate(self.critic, obs, self.sample(self.actor, obs, k), self.factored)
        return action

    def train_step(self, b: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        c = self.cfg
        done = self.bootstrap_mask(b)

        # 1. critic: TD target from the best of Kt target-actor candidates
        with torch.no_grad():
            candidates = self.sample(self.actor_target, b["next_obs"], c.kt)
            _, next_scores = best_candidate(self.critic_target, b["next_obs"], candidates, self.factored)
            y = td_target(b["reward"], done, c.gamma, next_scores)
        q_loss = twin_q_step(self.critic, self.critic_optimizer, b["obs"], b["action"], y, c.grad_clip)

        # 2. policy: Q-weights of Nd candidates per state
        states = b["obs"]
        B = states.shape[0]
        with torch.no_grad():
            candidates = self.sample(self.actor, states, c.nd)
            _, scores = best_candidate(self.critic, states, candidates, self.factored)
            weights, w_eq = q_weights(scores, c.q_transform, c.qcut_cut)
        if c.q_transform == "qcut_paper":  # every candidate of positive weight is a row
            keep = weights > 0
            act_rows, s_rows, w_rows = candidates[keep], states.unsqueeze(1).expand(B, c.nd, -1)[keep], weights[keep]
        else:  # the authors' form: one row per state, its best candidate
            best = scores.argmax(dim=1)
            act_rows, s_rows, w_rows = candidates[torch.arange(B, device=states.device), best], states, w_eq

        # 3. entropy: Ne uniform actions per state, weighted omega * w_eq
        omega = entropy_weight(step, self.total_steps, c.omega_ent, c.omega_ent_min)
        uniform = torch.rand(B * c.ne, self.act_dim, device=states.device) * 2 - 1
        s_uniform = states.repeat_interleave(c.ne, dim=0)
        w_uniform = (omega * w_eq).repeat_interleave(c.ne)

        # 4. one step on the weighted diffusion loss over all rows
        actor_loss = weighted_eps_loss(self.actor, self.schedule, torch.cat([act_rows, uniform]),
                                       torch.cat([s_rows, s_uniform]), torch.cat([w_rows, w_uniform]),
                                       factored=self.factored)
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_clip)
        self.actor_optimizer.step()

        soft_update(self.critic_target, self.critic, c.tau)
        soft_update(self.actor_target, self.actor, c.tau)
        return {"q_loss": q_loss, "actor_loss": actor_loss.detach(), "w_eq": w_eq.mean(),
                "omega_ent": omega, "q_mean": scores.mean()}
