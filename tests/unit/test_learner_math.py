"""The learner's math and wire format, hand-computed: group advantages, ratio clipping, decoupled weights, the
staleness filter, and the trajectory message (round trip and malformed messages)."""

from __future__ import annotations

import math

import msgpack
import pytest
import torch

from actors.agent import Trajectory, Turn
from learner.buffer import TrainTrajectory, TrainTurn, decode_trajectory, encode_trajectory
from learner.losses import decoupled_ppo_loss, group_advantages, staleness_filter, staleness_histogram
from memory_server.records import WireError

EPS = 1e-6


# --------------------------------------------------------------------------- advantages

def test_group_advantages_normalise_within_each_task() -> None:
    adv = group_advantages([1.0, -1.0, 3.0, 1.0, 2.0, 0.5], ["a", "a", "b", "b", "b", "c"], eps=EPS)
    s = math.sqrt(2 / 3)  # population std of (3, 1, 2)
    expected = [1 / (1 + EPS), -1 / (1 + EPS), 1 / (s + EPS), -1 / (s + EPS), 0.0, 0.0]  # c: one episode -> 0
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)


def test_group_advantages_are_zero_without_signal() -> None:
    assert group_advantages([1.0, 1.0, -1.0], ["a", "a", "b"]).tolist() == [0.0, 0.0, 0.0]
    assert group_advantages([], []).tolist() == []
    with pytest.raises(ValueError):
        group_advantages([1.0, 2.0], ["a"])


# --------------------------------------------------------------------------- decoupled PPO

def _t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def test_negative_scale_weighs_only_the_worse_episodes() -> None:
    """A group of a win and two losses: A = (+1.414, -0.707, -0.707); scale 0.5 halves the negatives only, 0 keeps
    only the win's push-up (rejection-sampling fine-tuning), 1 is GRPO unchanged."""
    from learner.config import LearnerConfig
    from learner.losses import scale_negative

    adv = group_advantages([1.0, -1.0, -1.0], ["t", "t", "t"])
    assert scale_negative(adv, 1.0).tolist() == pytest.approx(adv.tolist())
    assert scale_negative(adv, 0.5).tolist() == pytest.approx([math.sqrt(2), -math.sqrt(0.5) / 2, -math.sqrt(0.5) / 2], abs=1e-5)
    assert scale_negative(adv, 0.0).tolist() == pytest.approx([math.sqrt(2), 0.0, 0.0], abs=1e-5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        scale_negative(adv, 1.5)
    for bad, field in ({"negative_scale": -0.1}, "negative_scale"), ({"update_epochs": 0}, "update_epochs"):
        with pytest.raises(ValueError) as err:
            LearnerConfig(**bad)
        assert err.value.name == field


def test_ratio_clipping_takes_the_pessimistic_side() -> None:
    # r = pi_theta / pi_prox; behaviour = proximal, so every weight is 1
    for r, a, expect_loss, expect_grad in [
        (1.5, +1.0, -1.2, 0.0),   # min(1.5, 1.2) = 1.2: clipped, no gradient
        (1.5, -1.0, +1.5, 1.5),   # min(-1.5, -1.2) = -1.5: unclipped, d(-r A)/dlog r = -A r = 1.5
        (0.5, +1.0, -0.5, -0.5),  # min(0.5, 0.8) = 0.5: unclipped
        (0.5, -1.0, +0.8, 0.0),   # min(-0.5, -0.8) = -0.8: clipped
        (1.1, +1.0, -1.1, -1.1),  # inside the band
    ]:
        logp = torch.tensor([math.log(r)], requires_grad=True)
        loss, m = decoupled_ppo_loss(logp, _t(0.0), _t(0.0), _t(a), _t(1.0), clip_eps=0.2)
        loss.backward()
        assert float(loss.detach()) == pytest.approx(expect_loss, rel=1e-5), (r, a)
        assert float(logp.grad[0]) == pytest.approx(expect_grad, abs=1e-6), (r, a)
        assert float(m["clipped"]) == (1.0 if abs(r - 1) > 0.2 else 0.0)


def test_clip_higher_widens_only_the_upper_side() -> None:
    """DAPO's clip-higher, eps 0.2 below and 1.0 above: r = 1.5 with A > 0 is inside [0.8, 2.0] (gradient flows),
    r = 2.5 is clipped at 2.0; the lower side is unchanged (r = 0.5 with A < 0 clipped at 0.8)."""
    for r, a, expect_loss, expect_grad in [(1.5, 1.0, -1.5, -1.5), (2.5, 1.0, -2.0, 0.0), (0.5, -1.0, 0.8, 0.0)]:
        logp = torch.tensor([math.log(r)], requires_grad=True)
        loss, m = decoupled_ppo_loss(logp, _t(0.0), _t(0.0), _t(a), _t(1.0), clip_eps=0.2, clip_eps_high=1.0)
        loss.backward()
        assert float(loss.detach()) == pytest.approx(expect_loss, rel=1e-5), (r, a)
        assert float(logp.grad) == pytest.approx(expect_grad, abs=1e-5), (r, a)
        assert float(m["clipped"]) == (expect_grad == 0.0)


def test_decoupled_weight_is_prox_over_behaviour_and_can_be_capped() -> None:
    prox, behav = math.log(0.5), math.log(0.25)  # w = 0.5 / 0.25 = 2
    logp = torch.tensor([prox], requires_grad=True)  # r = 1
    loss, m = decoupled_ppo_loss(logp, _t(prox), _t(behav), _t(1.0), _t(1.0), clip_eps=0.2)
    assert float(loss.detach()) == pytest.approx(-2.0, rel=1e-5)
    assert float(m["weight_sum"]) == pytest.approx(2.0, rel=1e-5)
    d = prox - behav  # KL(behav || theta), k3 estimator
    assert float(m["kl_sum"]) == pytest.approx(math.exp(d) - 1 - d, rel=1e-5)
    loss.backward()
    assert float(logp.grad[0]) == pytest.approx(-2.0, rel=1e-5)  # the weight scales the gradient, gets none itself
    capped, _ = decoupled_ppo_loss(logp, _t(prox), _t(behav), _t(1.0), _t(1.0), clip_eps=0.2, behav_weight_cap=1.5)
    assert float(capped.detach()) == pytest.approx(-1.5, rel=1e-5)


def test_mask_and_token_mean() -> None:
    # two tokens count, the third is padding; token means: (-(1*1) + -(1*2)) / 2 with r = 1, w = 1
    z = _t(0.0, 0.0, 0.0)
    loss, m = decoupled_ppo_loss(z.clone().requires_grad_(), z, z, _t(1.0, 2.0, 100.0), _t(1.0, 1.0, 0.0), 0.2)
    assert float(loss.detach()) == pytest.approx(-1.5) and float(m["tokens"]) == 2
    split, _ = decoupled_ppo_loss(z.clone(), z, z, _t(1.0, 2.0, 100.0), _t(1.0, 1.0, 0.0), 0.2, num_tokens=4)
    assert float(split) == pytest.approx(-0.75)  # micro-batches divide by the whole batch's token count


# --------------------------------------------------------------------------- staleness

def test_staleness_filter_keeps_at_most_eta_versions_behind() -> None:
    assert staleness_filter([0, 1, 2, 3, 5], current_version=5, max_staleness=2) == ([3, 4], [0, 1, 2])
    assert staleness_filter([5, 4, 5], current_version=5, max_staleness=0) == ([0, 2], [1])
    assert staleness_filter([0, 0], current_version=0, max_staleness=0) == ([0, 1], [])
    assert staleness_histogram([3, 5, 5, 0], 5) == {0: 2, 2: 1, 5: 1}


def test_trajectory_version_is_its_oldest_turn() -> None:
    t = TrainTrajectory("e", "t", 0, 0, 1.0, [TrainTurn([1], [2], [-0.1], 3), TrainTurn([1], [2], [-0.1], 2)])
    assert t.version == 2


# --------------------------------------------------------------------------- wire format

def _traj() -> TrainTrajectory:
    return TrainTrajectory("run/s0-e1-task3", "task3", 1, 0, -1.0, [
        TrainTurn([5, 6, 7], [8, 9], [-0.25, -1.5], 0), TrainTurn([5, 6, 7, 8, 9], [10], [-0.125], 1)])


def test_trajectory_message_round_trip() -> None:
    t = _traj()
    assert decode_trajectory(encode_trajectory(t)) == t


def test_from_agent_trajectory_drops_empty_turns() -> None:
    traj = Trajectory("ep", "task", 2, 1, won=True, reward=1.0, turns=[
        Turn([1, 2], [3], [-0.5], 4, "go north", "ok"), Turn([1, 2], [], [], 4, "", "nothing")])
    t = TrainTrajectory.from_trajectory(traj)
    assert (t.episode_id, t.task_id, t.epoch, t.seed, t.reward, t.version) == ("ep", "task", 2, 1, 1.0, 4)
    assert t.turns == [TrainTurn([1, 2], [3], [-0.5], 4)]


def _mutated(**changes: object) -> bytes:
    obj = msgpack.unpackb(encode_trajectory(_traj()), raw=False)
    for k, v in changes.items():
        if k.startswith("turn_"):
            obj["turns"][0][k[5:]] = v
        else:
            obj[k] = v
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize("blob, reason", [
    (b"\xc1not msgpack", "not a valid msgpack"),
    (msgpack.packb([1, 2]), "expected a msgpack map"),
    (_mutated(v=99), "format version 99"),
    (_mutated(type="reward"), "expected a 'trajectory' message"),
    (_mutated(reward="high"), "'reward' must be float"),
    (_mutated(reward=float("nan")), "reward must be finite"),
    (_mutated(turns=[]), "at least one turn"),
    (_mutated(turn_logprobs={"dtype": "<f8", "shape": [1], "data": b"\0" * 8}), "1 logprobs for 2 output tokens"),
    (_mutated(turn_logprobs={"dtype": "<f8", "shape": [2], "data": b"\0" * 8}), "data bytes"),
    (_mutated(turn_output={"dtype": "<f8", "shape": [2], "data": b"\0" * 16}), "<i4"),
    (_mutated(turn_version=-1), "adapter version -1"),
    (_mutated(episode_id=None), "'episode_id' must be str"),
])
def test_malformed_messages_are_rejected_with_the_reason(blob: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        decode_trajectory(blob)


def test_positive_logprobs_are_rejected() -> None:
    with pytest.raises(ValueError, match="<= 0"):
        TrainTrajectory("e", "t", 0, 0, 0.0, [TrainTurn([1], [2], [0.5], 0)])


def test_rollout_capacity_is_areals_admission_rule() -> None:
    from cluster.scheduler import rollout_capacity

    assert rollout_capacity(0, max_staleness=2, batch_size=8) == 24  # before any update: eta + 1 batches
    assert rollout_capacity(3, max_staleness=2, batch_size=8) == 48
    assert rollout_capacity(103, max_staleness=0, batch_size=4, initial_version=100) == 16


def test_batches_are_made_of_task_groups_and_singletons_wait() -> None:
    """Group-normalised advantages need >= 2 episodes of a task: the learner holds singletons until their
    task repeats (the next epoch), drains them when asked, and never holds more than HOLD_LIMIT batches."""
    from types import SimpleNamespace

    from learner.learner import HOLD_LIMIT, Learner

    def held(*tasks: str) -> list:
        return [(f"e{i}", SimpleNamespace(task_id=t, episode_id=f"ep{i}")) for i, t in enumerate(tasks)]

    me = SimpleNamespace(cfg=SimpleNamespace(batch_size=4), group_size=1, _held=held("a", "b", "c", "a", "d", "b"))
    batch = Learner._take_batch(me, partial=False)
    assert [t.task_id for _, t in batch] == ["a", "b", "a", "b"]  # whole groups, oldest first
    assert [t.task_id for _, t in me._held] == ["c", "d"]
    assert Learner._take_batch(me, partial=False) is None  # singletons wait for their task's next episode
    assert [t.task_id for _, t in Learner._take_batch(me, partial=True)] == ["c", "d"]  # drain
    me._held = held(*[f"t{i}" for i in range(HOLD_LIMIT * 4)])  # tasks that never repeat
    assert len(Learner._take_batch(me, partial=False)) == 4  # the oldest batch goes as it is


def test_with_groups_a_batch_takes_whole_task_epoch_groups() -> None:
    """rollout.group_size = 2: the group is a task's two episodes of one epoch; an incomplete group waits, and
    episodes of the same task from different epochs are different groups."""
    from types import SimpleNamespace

    from learner.learner import Learner, group_key

    def t(task: str, epoch: int) -> SimpleNamespace:
        return SimpleNamespace(task_id=task, epoch=epoch)

    order = [t("a", 0), t("b", 0), t("a", 1), t("a", 0), t("c", 0), t("c", 0)]
    me = SimpleNamespace(cfg=SimpleNamespace(batch_size=4), group_size=2, _held=[(f"e{i}", x) for i, x in enumerate(order)])
    batch = Learner._take_batch(me, partial=False)
    assert [(x.task_id, x.epoch) for _, x in batch] == [("a", 0), ("a", 0), ("c", 0), ("c", 0)]
    assert Learner._take_batch(me, partial=False) is None  # b@0 and a@1 are incomplete
    assert group_key(t("a", 3), 2) == "a@3" and group_key(t("a", 3), 1) == "a"
    adv = group_advantages([1.0, -1.0, 1.0, 1.0], [group_key(x, 2) for x in (t("a", 0), t("a", 0), t("a", 1), t("a", 1))])
    assert adv.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0], abs=1e-5)  # no signal in an all-win group


def test_trajectory_mean_gives_every_trajectory_the_same_weight() -> None:
    """A won episode of 2 tokens (A = +1) and a failed one of 6 tokens (A = -1), at ratio 1 and weight 1: the
    token mean is (2 - 6) / 8 = -0.5 in favour of the failure; the trajectory mean is balanced (0)."""
    from learner.losses import trajectory_scale

    assert trajectory_scale([2, 6], "token-mean") == [1.0, 1.0]
    assert trajectory_scale([2, 6], "trajectory-mean") == pytest.approx([2.0, 2 / 3])  # mean 4 / own tokens
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        trajectory_scale([1], "sum")
    logp = torch.zeros(2, 6)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    adv = torch.tensor([[1.0] * 6, [-1.0] * 6])
    token, _ = decoupled_ppo_loss(logp, logp, logp, adv, mask, clip_eps=0.2)
    assert float(token) == pytest.approx(0.5)  # loss = -mean(A): the failure dominates
    scale = torch.tensor([[2.0] * 6, [2 / 3] * 6])
    per_traj, m = decoupled_ppo_loss(logp, logp, logp, adv, mask, clip_eps=0.2, token_scale=scale)
    assert float(per_traj) == pytest.approx(0.0, abs=1e-6) and float(m["tokens"]) == 8  # metrics count tokens


def test_kl_to_reference_is_zero_at_the_reference_and_pulls_back_towards_it() -> None:
    from learner.losses import kl_to_reference

    ref = torch.log(torch.tensor([[0.5, 0.25]]))
    w = torch.ones(1, 2)
    assert float(kl_to_reference(ref.clone(), ref, w)) == pytest.approx(0.0, abs=1e-7)
    # d = ref - logp = log 2 at one token: e^d - d - 1 = 2 - 0.693147 - 1
    logp = torch.log(torch.tensor([[0.25, 0.25]])).requires_grad_()
    kl = kl_to_reference(logp, ref, w)
    assert float(kl.detach()) == pytest.approx(1 - math.log(2), abs=1e-6)
    kl.backward()
    assert logp.grad[0, 0] < 0 and logp.grad[0, 1] == 0  # descending raises the token the policy under-weights


def test_self_imitation_advantage_is_what_beat_the_baseline_never_negative() -> None:
    from learner.losses import self_imitation_advantages

    adv = self_imitation_advantages([1.0, 1.0, -1.0, 0.5], [-0.5, 1.0, -1.0, 0.75])
    assert adv.tolist() == [1.5, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        self_imitation_advantages([1.0, 1.0], [0.0])


def test_self_imitation_memory_keeps_and_replays_only_what_beat_its_task() -> None:
    from learner.learner import SelfImitationMemory

    def traj(task: str, reward: float, i: int) -> TrainTrajectory:
        return TrainTrajectory(f"{task}-{i}", task, 0, 0, reward, [TrainTurn([1], [2], [-0.5], 0)])

    memory = SelfImitationMemory(capacity=3)
    assert memory.baseline("a") == 0.0 and memory.sample(4) == []
    first = [traj("a", 1.0, 0), traj("a", -1.0, 1), traj("a", -1.0, 2), traj("b", 1.0, 3)]
    memory.observe(first)
    assert memory.baseline("a") == pytest.approx(-1 / 3) and memory.baseline("b") == 1.0
    memory.remember(first)  # a's win beats a's mean; b's win is b's mean (b is always won): nothing to imitate
    assert [t.episode_id for t in memory.sample(4)] == ["a-0"]
    later = [traj("a", 1.0, 4), traj("a", 1.0, 5), traj("a", 1.0, 6)]
    memory.observe(later)  # a now wins 4 of 6: mean 1/3, its wins still beat it
    memory.remember(later)
    picked = memory.sample(2)
    assert len(picked) == 2 and {t.episode_id for t in picked} <= {"a-4", "a-5", "a-6"}  # capacity 3: a-0 dropped
    memory.observe([traj("a", 1.0, 7)] * 10)  # a almost always won: a win barely beats the mean, still kept
    assert 0 < memory.baseline("a") < 1 and len(memory.sample(5)) == 3
    memory.observe([traj("b", -1.0, 8)])
    assert memory.sample(5) and all(t.task_id == "a" for t in memory.sample(5))


def test_memories_shown_travels_and_older_entries_read_as_none_shown() -> None:
    traj = Trajectory("ep", "task", 2, 1, won=True, reward=1.0, turns=[Turn([1, 2], [3], [-0.5], 4, "go", "ok")],
                      retrieved_ids=["m1", "m2"])
    t = TrainTrajectory.from_trajectory(traj)
    assert t.memories_shown == 2 and decode_trajectory(encode_trajectory(t)) == t
    obj = msgpack.unpackb(encode_trajectory(_traj()), raw=False)
    del obj["shown"]  # an entry put before the field existed
    assert decode_trajectory(msgpack.packb(obj, use_bin_type=True)).memories_shown == 0
    with pytest.raises(WireError, match="memories_shown must be >= 0"):
        decode_trajectory(_mutated(shown=-1))
    with pytest.raises(WireError, match="'shown' must be int"):
        decode_trajectory(_mutated(shown="two"))


def test_memory_guided_skip_trains_only_episodes_no_memory_guided() -> None:
    from learner.learner import trainable

    guided = TrainTrajectory("a", "t", 0, 0, 1.0, [TrainTurn([1], [2], [-0.1], 0)], memories_shown=1)
    alone = TrainTrajectory("b", "t", 0, 0, 0.0, [TrainTurn([1], [2], [-0.1], 0)])
    assert trainable([guided, alone], "train") == [guided, alone]
    assert trainable([guided, alone], "skip") == [alone]
    assert trainable([guided], "skip") == []
    assert trainable([guided, alone], "only") == [guided]  # 'only': the base model played `alone`
    with pytest.raises(ValueError, match="memory_guided"):
        trainable([alone], "sometimes")
