"""benchmarks/adapter_capacity.py: the route probability (hand-computed on a model whose logits are fixed)."""

import math

import pytest
import torch

from benchmarks.adapter_capacity import route_probability


class _FixedLogits(torch.nn.Module):
    """Next-token logits depend only on the prompt's last token: ``table[last_token]``."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)

    def forward(self, input_ids):
        logits = self.table[input_ids[:, -1]][:, None, :].expand(input_ids.shape[0], input_ids.shape[1], -1)
        return type("Out", (), {"logits": logits})()


def test_route_probability_is_the_mean_over_games_of_the_product_of_steps():
    ln2 = math.log(2.0)
    # prompt token 0: p(target 0) = 2/(2+1+1) = 1/2 at T=1; prompt token 1: uniform over 3 tokens, p = 1/3
    model = _FixedLogits([[ln2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    samples = [(0, [5, 0], 0), (0, [1], 0),   # game 0: 1/2 * 1/3 = 1/6
               (1, [0], 0)]                   # game 1: 1/2
    route, step = route_probability(model, samples, temperature=1.0)
    assert route == pytest.approx((1 / 6 + 1 / 2) / 2)
    assert step == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)


def test_route_probability_divides_logits_by_the_temperature():
    model = _FixedLogits([[2 * math.log(2.0), 0.0]])  # at T=2 the logits are (ln 2, 0): p = 2/3
    route, _ = route_probability(model, [(0, [0], 0)], temperature=2.0)
    assert route == pytest.approx(2 / 3)
