"""``PerRowSampler``: each row of a batched ``generate`` chooses its token with its own settings and generator."""

from __future__ import annotations

import torch

from am3_verl.local.generation import PerRowSampler, PreparedRequest


def request(seed, temperature=1.0, top_p=1.0, top_k=-1) -> PreparedRequest:
    return PreparedRequest("r", torch.tensor([1]), {}, 0, 0, 0, 4, temperature, top_p, top_k, seed)


LOGITS = torch.log(torch.tensor([0.05, 0.5, 0.3, 0.15]))


def chosen(requests, suppressed=(), draws=200) -> list[set[int]]:
    sampler = PerRowSampler(requests, list(suppressed))
    seen = [set() for _ in requests]
    for _ in range(draws):
        out = sampler(torch.zeros(len(requests), 1, dtype=torch.long), LOGITS.repeat(len(requests), 1))
        assert bool((out.isfinite().sum(dim=1) == 1).all())  # one token per row survives: the greedy pick is the choice
        for row, token in enumerate(out.argmax(dim=1).tolist()):
            seen[row].add(token)
    return seen


def test_top_k_top_p_greedy_and_suppressed_tokens():
    full, top_k, top_p, greedy = chosen([request(1), request(2, top_k=2), request(3, top_p=0.7), request(4, temperature=0.0)])
    assert full == {0, 1, 2, 3}
    assert top_k == {1, 2}
    assert top_p == {1, 2}  # 0.5 alone is below 0.7; the token that crosses it is kept
    assert greedy == {1}
    assert chosen([request(5), request(6, temperature=0.0)], suppressed=[1]) == [{0, 2, 3}, {2}]


def test_a_rows_draws_depend_on_its_seed_only():
    def draws(requests, row):
        sampler = PerRowSampler(requests, [])
        return [int(sampler(torch.zeros(len(requests), 1), LOGITS.repeat(len(requests), 1))[row].argmax()) for _ in range(30)]

    alone = draws([request(9)], 0)
    assert draws([request(7), request(9), request(8, temperature=0.0)], 1) == alone
    assert draws([request(10)], 0) != alone
