"""Low-level ablations, fast: train a relay low level in memory and measure its oracle ceiling.

A research script (docs/results.md, "Why the low level fails"), not part of the toolkit's API:
it trains the same networks as `relay train-il` (relay_agents/gcbc/networks.py) on the relay
low-level relabeling of a play dataset, sampled on the fly (goal = the demo's goal-space state
j ~ U{1..W} steps later, every j, not K per step), without Reverb, so one variant takes minutes;
then it reports the open-loop fit (R^2 of the arm action on (s_t, g_{t+j}), j = 1, 15, 30) on 12
training and 12 held-out demos, and the oracle-subgoal ceiling on both, time-indexed ("mode":
the likeliest mode, "sample": sampled actions) and progress-indexed ("track").

usage: python scripts/low_ablation.py PLAY HELDOUT NAME [key=value ...]
  label=action|executed   the training target (the expert's clean action, or what was sent)
  head=mixture|mse|gaussian   hidden=256,256   steps=30000   lr=1e-3   seed=0   episodes=400   W=30
  obs=full|novel          novel: the paper's observation without velocities (30-d)
  chunk=k,m               predict k actions, execute m, then re-predict (action chunking)
  hist=0|1                1: the previous executed action is an input
  ee=0|1                  1: the end-effector position (forward kinematics of the observed
                          joints) is appended to the observation and to the goal
  rel=0|1                 1: the vector from the hand to each element's contact point (handle,
                          knob, switch, ...; `relay_agents.failures.ElementGeometry`) is appended
                          to the observation (21 values)
  noise=0.1               the kitchen's robot observation noise in the oracle rollouts
  sched=const|cosine      the learning-rate schedule (cosine: warm-up 1,000 steps, decay to 0)
  modes=mode,sample       oracle modes to run (mode, sample, track)   eval=12   out=low_ablation.jsonl
One JSON line per run is appended to `out`.
"""
import sys, os, json, time, dataclasses
import numpy as np, jax, jax.numpy as jnp, optax
import relay  # noqa
from relay_agents import diagnostics
from relay_agents.gcbc import networks as gn
from relay_agents.gcbc.config import GoalBCConfig
from relay_data import rlds_io

play, held, name = sys.argv[1:4]
kw = dict(a.split("=", 1) for a in sys.argv[4:])
label = kw.get("label", "action"); head = kw.get("head", "mixture"); obsmode = kw.get("obs", "full")
hidden = tuple(int(h) for h in kw.get("hidden", "256,256").split(","))
steps = int(kw.get("steps", 30000)); neps = int(kw.get("episodes", 400)); W = int(kw.get("W", 30))
chunk_k, chunk_m = (int(v) for v in kw.get("chunk", "1,1").split(","))
NOISE = float(kw.get("noise", 0.1))
lr = float(kw.get("lr", 1e-3)); seed = int(kw.get("seed", 0)); n_eval = int(kw.get("eval", 12))
NOVEL = np.r_[0:9, 18:39]
sel = (lambda o: o[..., NOVEL]) if obsmode == "novel" else (lambda o: o)

eps = []
for i, ep in enumerate(rlds_io.iter_episodes(play)):
  if i >= neps: break
  eps.append(ep)
HIST = int(kw.get("hist", 0))
def with_prev(o, ex):
  """[obs_t, executed a_{t-1}] (zeros at t = 0): a short history of what was sent."""
  prev = np.concatenate([np.zeros((1, ex.shape[1]), np.float32), ex[:-1]], 0)
  return np.concatenate([o, prev], -1) if HIST else o
EE = int(kw.get("ee", 0))
_fk = {}
def ee_of(q):
  """[N, >=9] robot joint positions -> [N, 3] end-effector site positions (forward kinematics)."""
  import mujoco
  from relay_data import kitchen as _k
  if not _fk:
    env = _k.make_env(); m = env.unwrapped.model
    _fk.update(m=m, d=mujoco.MjData(m), site=mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "end_effector"))
  m, d = _fk["m"], _fk["d"]
  out = np.zeros((len(q), 3), np.float32)
  for i, qi in enumerate(np.asarray(q)):
    d.qpos[:9] = qi[:9]; mujoco.mj_kinematics(m, d); out[i] = d.site_xpos[_fk["site"]]
  return out
def add_ee(x):  # observation or goal-space rows -> rows ++ EE position
  return np.concatenate([x, ee_of(x[:, :9])], -1) if EE else x
REL = int(kw.get("rel", 0))
_geo = []
def add_rel(o, full):  # observation rows ++ (contact point - hand) per element, from the 59-d observation
  if not REL:
    return o
  if not _geo:
    from relay_agents import failures
    _geo.append(failures.ElementGeometry())
  hand, contacts = _geo[0](np.concatenate([full[:, 0:9], full[:, 18:39]], -1))
  return np.concatenate([o] + [(contacts[e] - hand).astype(np.float32) for e in sorted(contacts)], -1)
obs = [add_rel(add_ee(with_prev(sel(e["observation"]).astype(np.float32), e["executed_action"].astype(np.float32))),
               e["observation"]) for e in eps]
goal = [add_ee(e["goal_state"].astype(np.float32)) for e in eps]
act = [(e["executed_action"] if label == "executed" else e["action"]).astype(np.float32) for e in eps]
lens = np.array([len(a) for a in act]); off = np.r_[0, np.cumsum(lens)[:-1]]
O, G, A = np.concatenate(obs), np.concatenate(goal), np.concatenate(act)
# valid (t) indices: t with t+1 <= T-1
ep_of = np.concatenate([np.full(l, i) for i, l in enumerate(lens)]); t_of = np.concatenate([np.arange(l) for l in lens])
valid = np.where(t_of < lens[ep_of] - 1)[0]
rng = np.random.default_rng(seed)

def batch(n):
  idx = valid[rng.integers(0, len(valid), n)]
  e, t = ep_of[idx], t_of[idx]
  j = rng.integers(1, W + 1, n)
  tg = np.minimum(t + j, lens[e] - 1)
  ys = [A[off[e] + np.minimum(t + i, lens[e] - 1)] for i in range(chunk_k)]
  return np.concatenate([O[idx], G[off[e] + tg]], -1), np.concatenate(ys, -1)

X, Y = batch(200_000)
norm = gn.Normalization.from_arrays(X, Y)
config = GoalBCConfig(head=head, hidden_sizes=hidden, learning_rate=lr)
nets = gn.make_networks(X.shape[1], Y.shape[1], config, norm)
params = nets.policy.init(jax.random.PRNGKey(seed))
SCHED = kw.get("sched", "const")  # const | cosine (decay to 0 over `steps`, 1,000 warm-up steps)
opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, 1000, steps) if SCHED == "cosine" else lr)
state = opt.init(params)
if head == "mse":
  loss_fn = lambda p, x, y: jnp.mean(((nets.policy.apply(p, x)[0] - y) / norm.output_std) ** 2)
else:
  loss_fn = lambda p, x, y: -jnp.mean(nets.log_prob(nets.policy.apply(p, x), y))
@jax.jit
def step(p, s, x, y):
  l, g = jax.value_and_grad(loss_fn)(p, x, y)
  u, s = opt.update(g, s, p)
  return optax.apply_updates(p, u), s, l
t0 = time.time()
for k in range(steps):
  x, y = batch(256)
  params, state, l = step(params, state, x, y)
  if k % 5000 == 0: print(f"step {k} loss {float(l):.3f} {time.time()-t0:.0f}s", flush=True)
mean_fn = jax.jit(lambda p, x: nets.mean(nets.policy.apply(p, x)))

def r2(path, n):
  es = []; ys = []
  for i, ep in enumerate(rlds_io.iter_episodes(path)):
    if i >= n: break
    o, g, a = add_rel(add_ee(with_prev(sel(ep["observation"]), ep["executed_action"])), ep["observation"]), add_ee(ep["goal_state"]), ep["action"]
    for j in (1, 15, 30):
      t = np.arange(0, len(a) - j)
      es.append(np.asarray(mean_fn(params, np.concatenate([o[t], g[t + j]], -1).astype(np.float32)))[:, :9] - a[t]); ys.append(a[t])
  e, y = np.concatenate(es), np.concatenate(ys)
  return float(np.mean(1 - (e ** 2).mean(0)[:7] / y.var(0)[:7]))

sample_fn = jax.jit(lambda p, x, k: nets.sample(nets.policy.apply(p, x), k))
class Pol:
  def __init__(self, sample=False): self.sample = sample; self.key = jax.random.PRNGKey(seed); self.queue = []; self.goal = None; self.prev = np.zeros(9, np.float32)
  def __call__(self, observation, goal, key, deterministic=None):
    if self.goal is None or not np.array_equal(goal, self.goal):
      self.queue, self.goal = [], np.array(goal)
    if not self.queue:
      o = sel(np.asarray(observation))
      if HIST: o = np.concatenate([o, self.prev])
      x = np.concatenate([add_rel(add_ee(o[None]), np.asarray(observation)[None])[0],
                          add_ee(np.asarray(goal, np.float32)[None])[0]])[None].astype(np.float32)
      if self.sample:
        self.key, k = jax.random.split(self.key)
        out = np.asarray(sample_fn(params, x, k))[0]
      else:
        out = np.asarray(mean_fn(params, x))[0]
      self.queue = list(out.reshape(chunk_k, 9)[:chunk_m])
    self.prev = np.clip(self.queue.pop(0), -1, 1).astype(np.float32)
    return self.prev

res = dict(name=name, **kw, train_r2=r2(play, 12), held_r2=r2(held, 12))
from relay_data import kitchen
def track_rollout(pol, ep, W, seed):
  """Progress-indexed oracle: every W steps, find the demo step nearest (goal space) to the current
  state within [p, p + 3W] and command the demo state W steps after it."""
  gs = ep["goal_state"]; T = len(gs)
  order = [s for s in str(ep.get("subtask_order", "")).split(",") if s]
  env = kitchen.make_env(tasks_to_complete=order, max_episode_steps=T + 300, terminate_on_tasks_completed=True, settings=kitchen.EnvSettings(robot_noise_ratio=NOISE))
  obs, _ = env.reset(seed=int(ep["seed"]) % 2 ** 31)
  p = 0; info = {"episode_task_completions": []}
  for t in range(T + 300):
    if t % W == 0:
      g_now = kitchen.goal_state_from_observation(obs["observation"])
      lo, hi = p, min(T, p + 3 * W)
      p = lo + int(np.argmin(np.linalg.norm(gs[lo:hi] - g_now, axis=1)))
      goal = gs[min(p + W, T - 1)]
    obs, _, term, trunc, info = env.step(np.clip(pol(obs["observation"].astype(np.float32), goal, None), -1, 1))
    if term or trunc: break
  env.close()
  return list(info["episode_task_completions"])
modes = kw.get("modes", "mode,sample").split(",")
for which, path, m in [(w, p, m) for m in modes for w, p in (("train", play), ("held", held))]:
  done = []
  for i, ep in enumerate(rlds_io.iter_episodes(path)):
    if i >= n_eval: break
    order = [s for s in str(ep.get("subtask_order", "")).split(",") if s]
    if m == "track":
      completed = track_rollout(Pol(False), ep, W, i)
    else:
      completed = diagnostics.oracle_subgoal_rollout(Pol(m == 'sample'), ep, W, seed=i, settings=kitchen.EnvSettings(robot_noise_ratio=NOISE)).completed
    done.append(len(set(completed) & set(order)))
  res[f"oracle_{which}_{m}"] = float(np.mean(done)); res[f"oracle_{which}_{m}_counts"] = np.bincount(done, minlength=5).tolist()
res["secs"] = round(time.time() - t0)
print(json.dumps(res), flush=True)
with open(kw.get("out", "low_ablation.jsonl"), "a") as f: f.write(json.dumps(res) + "\n")
