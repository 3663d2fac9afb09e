"""PPO with the clipped surrogate objective, as CleanRL's ppo_continuous_action.py defines it.

Source of every default: vwxyzjn/cleanrl, cleanrl/ppo_continuous_action.py (Args). The whole
algorithm, read top to bottom: settings, normalisers, rollout storage, GAE, the value loss,
the Gaussian actor-critic, the on-policy agent (act / observe / update / learn) and PPO's
clipped surrogate. SPO (qvpo/algos/spo.py) is this agent with its own settings and
`policy_loss`.

Where CleanRL keeps state in gymnasium wrappers, the agent keeps it, so a checkpoint
holds it (networks, optimiser, both normalisers with the reward's running return, the
partial rollout and its position) and a run resumes exactly even mid-rollout.

One loop iteration, in order (the loop: act, pool.step, observe, update):
1. `act(o_t, "explore")` normalises o_t with the observation statistics S_t and draws
   a_t ~ N(mu(x_t), sigma). It changes nothing: the statistics move only in `observe`.
2. The pool steps; the transition carries o_t, a_t, r_t, o'_{t+1} (the true final
   observation when the episode ended), terminated, truncated.
3. `observe` normalises o_t with the same S_t, so x_t is exactly what the policy saw;
   computes log pi(a_t|x_t), V(x_t) and mu(x_t) (act drew a_t from these very numbers);
   normalises r_t (running return first, then its statistics, then the division, as
   gymnasium's NormalizeReward); stores the row; then S_{t+1} = S_t + o'_{t+1}. When the
   rollout is full it keeps normalise(o'_T; S_{T+1}) for the bootstrap value.
4. `update` learns when the rollout is full.
So, as with CleanRL's wrappers, each observation is normalised by statistics that already
include it. Two differences, both forced by the harness and both small:
- CleanRL's per-env wrapper also adds the reset observation of each new episode to the
  statistics; here the agent first meets it as the next transition's o_t, after act used
  it, so reset observations never enter them (one observation per episode).
- The statistics are shared by the num_envs envs and updated with their observations as
  one batch (gymnasium's vector NormalizeObservation/NormalizeReward); CleanRL's per-env
  wrappers keep num_envs separate ones. Identical for CleanRL PPO's one env; evaluation
  needs one set.
Actions live in [-1, 1] (the pool scales them to the env's bounds), so for envs whose
bounds are not +-1 (InvertedPendulum +-3, Humanoid +-0.4) the initial std of 1 is a
different exploration scale in env units than CleanRL's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qvpo.agent import Agent, Mode
from qvpo.envs import Transition
from qvpo.errors import UserError
from qvpo.nets import mlp
from qvpo.settings import CommonSettings, require_positive, widths

RMS_INITIAL_COUNT = 1e-4
"""The pseudo-count a running mean/std starts from (gymnasium RunningMeanStd epsilon)."""
NORM_EPSILON = 1e-8
"""Added to a variance before its square root (gymnasium NormalizeObservation/NormalizeReward epsilon)."""
HIDDEN_GAIN, ACTOR_HEAD_GAIN, CRITIC_HEAD_GAIN = math.sqrt(2), 0.01, 1.0
"""Orthogonal-init gains of hidden layers, the action-mean head and the value head (CleanRL layer_init)."""


@dataclass
class OnPolicySettings(CommonSettings):
    """Settings of the on-policy learners; defaults are CleanRL ppo_continuous_action.py's Args."""

    num_envs: int = 1
    """Parallel envs of the rollout (CleanRL num_envs)."""
    num_steps: int = 2048
    """Steps per env per rollout (CleanRL num_steps)."""
    num_minibatches: int = 32
    """Minibatches per epoch (CleanRL num_minibatches)."""
    update_epochs: int = 10
    """Passes over a rollout (CleanRL update_epochs)."""
    learning_rate: float = 3e-4
    """Adam learning rate, of actor and critic together (CleanRL learning_rate)."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over the run's rollouts (CleanRL anneal_lr)."""
    adam_eps: float = 1e-5
    """Adam epsilon (CleanRL optim.Adam(eps=1e-5))."""
    gamma: float = 0.99
    """Discount factor, also of the reward normaliser's return (CleanRL gamma)."""
    gae_lambda: float = 0.95
    """GAE lambda (CleanRL gae_lambda)."""
    norm_adv: bool = True
    """Normalise advantages per minibatch (CleanRL norm_adv)."""
    adv_eps: float = 1e-8
    """Added to the advantages' std when normalising (CleanRL 1e-8)."""
    clip_coef: float = 0.2
    """Clip range of the value loss, and PPO's ratio clip (CleanRL clip_coef, used for both)."""
    clip_vloss: bool = True
    """Clip the value loss around the rollout's values (CleanRL clip_vloss)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient (CleanRL ent_coef)."""
    vf_coef: float = 0.5
    """Value loss coefficient (CleanRL vf_coef)."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip (CleanRL max_grad_norm)."""
    target_kl: float = 0.0
    """Stop a learning phase after the epoch whose approx KL exceeds this; 0 never (CleanRL target_kl None)."""
    actor_hidden: list[int] = widths(64, 64)
    """Hidden widths of the action-mean MLP, tanh (CleanRL)."""
    critic_hidden: list[int] = widths(64, 64)
    """Hidden widths of the separate value MLP, tanh (CleanRL)."""
    log_std_init: float = 0.0
    """Initial value of the state-independent log-std (CleanRL zeros)."""
    norm_obs: bool = True
    """Normalise observations by running statistics (CleanRL NormalizeObservation)."""
    obs_clip: float = 10.0
    """Clip of normalised observations (CleanRL TransformObservation clip +-10)."""
    norm_reward: bool = True
    """Scale rewards by the std of a discounted running return (CleanRL NormalizeReward)."""
    reward_clip: float = 10.0
    """Clip of normalised rewards (CleanRL TransformReward clip +-10)."""

    def validate(self) -> None:
        require_positive(self, "num_envs", "num_steps", "num_minibatches", "update_epochs", "learning_rate",
                         "adam_eps", "clip_coef", "max_grad_norm", "obs_clip", "reward_clip")
        for key in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise UserError(f"setting '{key}' must lie in [0, 1], got {getattr(self, key)}")
        batch, k = self.num_steps * self.num_envs, self.num_minibatches
        if batch % k:
            raise UserError(f"num_steps*num_envs ({batch}) must be divisible by num_minibatches ({k})")
        if self.norm_adv and batch // k < 2:
            raise UserError(f"a minibatch of {batch // k} row cannot normalise advantages; "
                            "lower num_minibatches or set norm_adv=false")


# -- normalisers ----------------------------------------------------------------------------


class RunningMeanStd(nn.Module):
    """Mean and (population) variance of everything seen, merged batch by batch in float64.

    gymnasium's RunningMeanStd (Chan et al.'s parallel algorithm). Kept on the host as numpy float64, like the
    environments' numbers it is made of: per environment step it is a dozen operations on a few numbers, where
    torch's per-operation dispatch costs several times numpy's (measured here: one update 120 us in torch, 25 us
    in numpy). The same IEEE float64 arithmetic. A module, so checkpoints hold it (as tensors, in its extra state).
    """

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.mean = np.zeros(shape)
        self.var = np.ones(shape)
        self.count = np.float64(RMS_INITIAL_COUNT)

    def update(self, x) -> None:
        """Merge a batch x [B, *shape] (an array, or a tensor on any device)."""
        x = host_float64(x)
        n = x.shape[0]
        batch_mean = np.add.reduce(x, 0) / n  # np.mean and np.var's arithmetic, without their Python overhead
        batch_var = np.add.reduce(np.square(x - batch_mean), 0) / n
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + np.square(delta) * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.var = m2 / total
        self.count = total

    def normalize_array(self, x, clip: float) -> np.ndarray:
        """clip((x - mean) / sqrt(var + eps), +-clip) as float32 (NormalizeObservation, then CleanRL's clip)."""
        z = (host_float64(x) - self.mean) / np.sqrt(self.var + NORM_EPSILON)
        return z.astype(np.float32).clip(-clip, clip)

    def normalize(self, x: torch.Tensor, clip: float) -> torch.Tensor:
        """normalize_array of a tensor, returned on the tensor's device."""
        return torch.from_numpy(self.normalize_array(x, clip)).to(x.device)

    def get_extra_state(self) -> dict:
        return {"mean": torch.tensor(self.mean), "var": torch.tensor(self.var), "count": float(self.count)}

    def set_extra_state(self, state: dict) -> None:
        self.mean, self.var = host_float64(state["mean"]).copy(), host_float64(state["var"]).copy()
        self.count = np.float64(float(state["count"]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        adopt_buffers_as_extra_state(state_dict, prefix, ("mean", "var", "count"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def adopt_buffers_as_extra_state(state_dict: dict, prefix: str, names: tuple[str, ...]) -> None:
    """Checkpoints of qvpo before 2026-11-30 held the normalisers' numbers as buffers: read them as the extra
    state, so a run continued with --accept-code-change loads them."""
    if prefix + "_extra_state" not in state_dict and all(prefix + n in state_dict for n in names):
        state_dict[prefix + "_extra_state"] = {n: state_dict.pop(prefix + n) for n in names}


def host_float64(x) -> np.ndarray:
    """A float64 numpy array of x (a tensor on any device, or array-like)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


class RewardNormalizer(nn.Module):
    """gymnasium 1.x NormalizeReward followed by CleanRL's clip, for n envs (on the host, as RunningMeanStd).

    Each env's running return G <- gamma (1 - terminated) G + r restarts only at
    termination (gymnasium's rule: it carries on across a time-limit truncation); the
    reward is divided by the std of all returns seen, not centred (openai/baselines#538).
    """

    def __init__(self, n: int):
        super().__init__()
        self.ret = np.zeros(n)
        self.rms = RunningMeanStd(())

    def forward(self, reward, terminated, gamma: float, clip: float) -> np.ndarray:
        """The normalised rewards (float32 [n]) of one step's rewards and terminations [n] (arrays or tensors)."""
        reward = host_float64(reward)
        self.ret = self.ret * (gamma * (1.0 - host_float64(terminated))) + reward
        self.rms.update(self.ret)
        return (reward / np.sqrt(self.rms.var + NORM_EPSILON)).astype(np.float32).clip(-clip, clip)

    def get_extra_state(self) -> dict:
        return {"ret": torch.tensor(self.ret)}

    def set_extra_state(self, state: dict) -> None:
        self.ret = host_float64(state["ret"]).copy()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        adopt_buffers_as_extra_state(state_dict, prefix, ("ret",))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# -- rollout storage and GAE ---------------------------------------------------------------


class Rollout(nn.Module):
    """num_steps x num_envs rows of what a learning phase uses, preallocated; rows [0, pos) are filled.

    Besides CleanRL's columns it keeps each row's action mean (SPO's KL needs the old
    policy; its std is the state-independent one, unchanged during a rollout) and the
    normalised observation after the last step, for the bootstrap value.
    """

    def __init__(self, num_steps: int, n: int, obs_dim: int, act_dim: int, device: torch.device):
        super().__init__()
        self.num_steps = num_steps
        for name, shape in {"obs": (obs_dim,), "actions": (act_dim,), "means": (act_dim,), "logprobs": (),
                            "rewards": (), "dones": (), "values": ()}.items():
            self.register_buffer(name, torch.zeros((num_steps, n, *shape), device=device))
        self.register_buffer("next_obs", torch.zeros((n, obs_dim), device=device))
        self.pos = 0

    def add(self, **row: torch.Tensor) -> None:
        if self.full():
            raise RuntimeError("rollout is full: update() must learn from it before the next observe()")
        for name, value in row.items():
            getattr(self, name)[self.pos] = value
        self.pos += 1

    def full(self) -> bool:
        return self.pos == self.num_steps

    def get_extra_state(self) -> dict:  # the position travels with the buffers in state_dict()
        return {"pos": self.pos}

    def set_extra_state(self, state: dict) -> None:
        self.pos = int(state["pos"])


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (A + V) by CleanRL's GAE recursion over [T, n] columns.

    dones[t] = 1 when step t ended its episode, terminated OR truncated (CleanRL's and
    SPO-2024's rule, the faithful default; a truncated state is thus not bootstrapped).
    The pool autoresets in the same step, so every row is a real transition: there is no
    NEXT_STEP reset row to mask. next_value is V of the observation after the last row.
    The recursion runs on the host in numpy float32, the same float32 operations in the same order as
    torch's (bit-identical, tested), at a fraction of torch's per-operation cost over thousands of rows.
    """
    r, v, d = (x.detach().cpu().numpy() for x in (rewards, values, dones))
    advantages = np.zeros_like(r)
    last = np.zeros_like(r[0])
    for t in reversed(range(r.shape[0])):
        next_values = next_value.detach().cpu().numpy() if t == r.shape[0] - 1 else v[t + 1]
        nonterminal = 1.0 - d[t]
        delta = r[t] + gamma * next_values * nonterminal - v[t]
        last = advantages[t] = delta + gamma * lam * nonterminal * last
    advantages = torch.from_numpy(advantages).to(rewards.device)
    return advantages, advantages + values


def value_loss(new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor, clip: float,
               clipped: bool) -> torch.Tensor:
    """0.5 mean(max((V - R)^2, (V_old + clip(V - V_old, +-clip) - R)^2)); without clipping 0.5 mean((V - R)^2)."""
    unclipped = (new_value - returns) ** 2
    if not clipped:
        return 0.5 * unclipped.mean()
    v_clipped = old_value + (new_value - old_value).clamp(-clip, clip)
    return 0.5 * torch.max(unclipped, (v_clipped - returns) ** 2).mean()


# -- networks ------------------------------------------------------------------------------


def orthogonal_mlp(sizes: list[int], head_gain: float) -> nn.Sequential:
    """A tanh MLP with CleanRL's layer_init: orthogonal weights (gain sqrt 2, the last layer head_gain), zero bias."""
    net = mlp(sizes, "tanh")
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for layer in linears:
        nn.init.orthogonal_(layer.weight, HIDDEN_GAIN if layer is not linears[-1] else head_gain)
        nn.init.zeros_(layer.bias)
    return net


class GaussianActor(nn.Module):
    """N(mu(x), exp(log_std)): an MLP mean and a state-independent log-std (CleanRL's actor_mean, actor_logstd).

    `forward` gives (mean, std), both [B, A] (std = exp of the expanded log-std, as CleanRL: so are the
    gradients' reductions). The Gaussian's formulas below are torch.distributions.Normal's, term by term
    (bit-identical, tested), without building distribution objects, which cost more than the 64-wide
    network on every step and minibatch. NaNs are not validated: they reach the loop's check.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], log_std_init: float):
        super().__init__()
        self.mean = orthogonal_mlp([obs_dim, *hidden, act_dim], ACTOR_HEAD_GAIN)
        self.log_std = nn.Parameter(torch.full((1, act_dim), float(log_std_init)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(obs)
        return mean, self.log_std.expand_as(mean).exp()


LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


def gaussian_sample(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A draw of N(mean, std) (Normal.sample: one torch.normal call, the same random numbers)."""
    return torch.normal(mean, std)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std) per dimension (Normal.log_prob)."""
    return -((x - mean) ** 2) / (2 * std ** 2) - std.log() - LOG_SQRT_2PI


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Entropy per dimension (Normal.entropy)."""
    return 0.5 + 0.5 * math.log(2 * math.pi) + torch.log(std)


def gaussian_kl(mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor, std_q: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, std_p) || N(mean_q, std_q)) per dimension (torch.distributions.kl's Normal-Normal rule)."""
    var_ratio = (std_p / std_q).pow(2)
    t1 = ((mean_p - mean_q) / std_q).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())


# -- the agent -----------------------------------------------------------------------------


class OnPolicyAgent(Agent):
    """Collects num_steps x num_envs transitions, then learns from them for update_epochs epochs."""

    metrics = ("policy_loss", "value_loss", "entropy", "approx_kl", "kl", "clipfrac", "learning_rate")
    """Means over the minibatches of a learning phase; kl is the exact KL(old || new) SPO clips."""

    @classmethod
    def env_count(cls, settings: OnPolicySettings) -> int:
        return settings.num_envs

    def __init__(self, obs_dim, act_dim, settings: OnPolicySettings, device, total_steps, seed):
        super().__init__(obs_dim, act_dim, settings, device, total_steps, seed)
        c = settings
        self.batch_size = c.num_steps * c.num_envs
        # CleanRL's num_iterations; a run shorter than one rollout never learns, as in CleanRL.
        self.num_iterations = max(1, total_steps // self.batch_size)
        self.critic = orthogonal_mlp([obs_dim, *c.critic_hidden, 1], CRITIC_HEAD_GAIN).to(device)
        self.actor = GaussianActor(obs_dim, act_dim, c.actor_hidden, c.log_std_init).to(device)
        self.params = [*self.critic.parameters(), *self.actor.parameters()]
        # fused: one kernel for all parameters, 2-3x faster than the default per-tensor Adam on the CPU (same
        # update up to float rounding)
        self.optimizer = torch.optim.Adam(self.params, lr=c.learning_rate, eps=c.adam_eps, fused=True)
        self.obs_rms = RunningMeanStd((obs_dim,))
        self.reward_norm = RewardNormalizer(c.num_envs)
        self.rollout = Rollout(c.num_steps, c.num_envs, obs_dim, act_dim, device)
        self._acted: tuple[torch.Tensor, ...] | None = None  # the last exploring act()'s tensors, for observe()

    def policy_loss(self, adv: torch.Tensor, ratio: torch.Tensor, kl: torch.Tensor,
                    first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, fraction of rows the objective clips) of one minibatch.

        adv: (normalised) advantages; ratio: pi_new / pi_old of the taken actions; kl: the
        Gaussian KL(old || new) per row, differentiable; first: the phase's first minibatch.
        """
        raise NotImplementedError

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return self.obs_rms.normalize(obs, self.cfg.obs_clip) if self.cfg.norm_obs else obs

    @torch.no_grad()
    def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        """evaluate: the mean action; otherwise a draw. Pure: statistics change only in observe().

        The draw is returned unclipped: the pool clips to [-1, 1] (CleanRL's ClipAction), and
        the rollout needs the draw its log-probability belongs to. An exploring act() keeps what
        it computed for the observe() of the same step, which would compute it again.
        """
        x = self.normalize_obs(obs)
        mean, std = self.actor(x)
        if mode == Mode.EVALUATE:
            return mean
        action = gaussian_sample(mean, std)
        self._acted = (obs, action, x, mean, std) if mode == Mode.EXPLORE else None
        return action

    def _policy_at(self, tr: Transition) -> tuple[torch.Tensor, ...]:
        """(normalised o_t, a_t, mean, std) of a transition: act()'s own tensors when it acted on exactly this
        observation and action (the same statistics and parameters: nothing changes them in between), else
        computed afresh (an observe() without an exploring act() before it)."""
        dev = self.device
        raw = torch.as_tensor(tr.obs, dtype=torch.float32, device=dev)
        action = torch.as_tensor(tr.action, dtype=torch.float32, device=dev)
        acted, self._acted = self._acted, None
        if acted is not None and torch.equal(acted[0], raw) and torch.equal(acted[1], action):
            return acted[2], action, acted[3], acted[4]
        x = self.normalize_obs(raw)  # the statistics act() used
        return (x, action, *self.actor(x))

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._acted = None

    @torch.no_grad()
    def observe(self, tr: Transition) -> None:
        c, dev = self.cfg, self.device
        obs, action, mean, std = self._policy_at(tr)
        reward = self.reward_norm(tr.reward, tr.terminated, c.gamma, c.reward_clip) if c.norm_reward else tr.reward
        self.rollout.add(obs=obs, actions=action, means=mean, logprobs=gaussian_log_prob(action, mean, std).sum(-1),
                         rewards=torch.as_tensor(reward, device=dev),
                         dones=torch.as_tensor(tr.terminated | tr.truncated, device=dev),
                         values=self.critic(obs).view(-1))
        if c.norm_obs:
            self.obs_rms.update(tr.next_obs)
        if self.rollout.full():
            self.rollout.next_obs.copy_(self.normalize_obs(torch.as_tensor(tr.next_obs, dtype=torch.float32,
                                                                           device=dev)))

    def update(self, step: int) -> dict[str, float]:
        if not self.rollout.full():
            return {}
        metrics = self.learn()
        self.rollout.pos = 0
        self.n_updates += 1
        return metrics

    def learn(self) -> dict[str, float]:
        """One learning phase on the full rollout (CleanRL's loop body after the rollout)."""
        c, r = self.cfg, self.rollout
        lr = c.learning_rate * (1.0 - self.n_updates / self.num_iterations) if c.anneal_lr else c.learning_rate
        self.optimizer.param_groups[0]["lr"] = lr
        with torch.no_grad():
            advantages, returns = gae(r.rewards, r.values, r.dones, self.critic(r.next_obs).view(-1), c.gamma,
                                      c.gae_lambda)
            old_std = self.actor.log_std.exp()  # state-independent and unchanged since the rollout began
        b_obs, b_actions, b_means = (x.reshape(self.batch_size, -1) for x in (r.obs, r.actions, r.means))
        b_logprobs, b_values, b_adv, b_returns = (x.reshape(-1) for x in (r.logprobs, r.values, advantages, returns))

        minibatch = self.batch_size // c.num_minibatches
        sums = dict.fromkeys(self.metrics, 0.0)
        count = 0
        inds = np.arange(self.batch_size)
        for epoch in range(c.update_epochs):
            np.random.shuffle(inds)  # numpy's global generator, as CleanRL; the loop checkpoints it
            for start in range(0, self.batch_size, minibatch):
                idx = torch.as_tensor(inds[start:start + minibatch], device=self.device)
                mb_obs = b_obs[idx]
                mean, std = self.actor(mb_obs)
                logratio = gaussian_log_prob(b_actions[idx], mean, std).sum(-1) - b_logprobs[idx]
                ratio = logratio.exp()
                kl = gaussian_kl(b_means[idx], old_std, mean, std).sum(-1)
                adv = b_adv[idx]
                if c.norm_adv:
                    adv = (adv - adv.mean()) / (adv.std() + c.adv_eps)
                pg_loss, clipfrac = self.policy_loss(adv, ratio, kl, first=epoch == 0 and start == 0)
                v_loss = value_loss(self.critic(mb_obs).view(-1), b_values[idx], b_returns[idx], c.clip_coef,
                                    c.clip_vloss)
                entropy = gaussian_entropy(std).sum(-1).mean()
                loss = pg_loss - c.ent_coef * entropy + c.vf_coef * v_loss
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
                self.optimizer.step()

                approx_kl = float(((ratio - 1) - logratio).mean().detach())  # http://joschu.net/blog/kl-approx.html
                for k, v in (("policy_loss", pg_loss), ("value_loss", v_loss), ("entropy", entropy),
                             ("kl", kl.mean()), ("clipfrac", clipfrac)):
                    sums[k] += float(v.detach())
                sums["approx_kl"] += approx_kl
                count += 1
            if c.target_kl > 0 and approx_kl > c.target_kl:
                break
        metrics = {k: v / count for k, v in sums.items()}
        metrics["learning_rate"] = lr
        return metrics


# ---------------------------------------------------------------------- PPO
@dataclass
class PPOSettings(OnPolicySettings):
    """PPO's settings: OnPolicySettings' defaults are CleanRL's (1 env x 2048 steps, 32 minibatches, ...)."""


def clipped_surrogate(adv: torch.Tensor, ratio: torch.Tensor, clip: float) -> torch.Tensor:
    """L = mean(max(-A r, -A clip(r, 1 - clip, 1 + clip))), the negated clipped surrogate."""
    return torch.max(-adv * ratio, -adv * ratio.clamp(1.0 - clip, 1.0 + clip)).mean()


class PPO(OnPolicyAgent):
    Settings = PPOSettings

    def policy_loss(self, adv, ratio, kl, first):
        clip = self.cfg.clip_coef
        return clipped_surrogate(adv, ratio, clip), ((ratio - 1.0).abs() > clip).float().mean()
