"""A bounded, seeded share of ``make fuzz`` (tests/fuzz.py) in the normal suite: mutations of
valid JSON and Avro values, each of which must map or get a known dead-letter kind."""

from __future__ import annotations

import random
from collections import Counter

from tests import fuzz

#: Inputs per run: enough to reach every decoder's error paths, a second or two here.
INPUTS = 10_000


def mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(1, max(2, len(data)))  # byte 0 picks the path: keep it
        if op == 0 and len(data) > 1:
            data[at % len(data)] = rng.randrange(256)
        elif op == 1:
            del data[at : at + rng.randint(1, 8)]
        elif op == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3:
            data = data[:at]
        else:  # a chunk of another valid value: structure in the wrong place
            other = rng.choice(fuzz.seeds())
            data[at:at] = other[1:][: rng.randint(1, 16)]
    return bytes(data)


def test_every_input_maps_or_gets_a_dead_letter_kind():
    rng = random.Random(20261201)
    seeds = fuzz.seeds()
    outcomes: Counter[str] = Counter(fuzz.check(s) for s in seeds)
    assert outcomes == {"mapped": len(seeds)}
    for _ in range(INPUTS):
        outcomes[fuzz.check(mutate(rng, rng.choice(seeds)))] += 1
    # Not a vacuous run: both sides of the property were exercised, on each path.
    assert (
        outcomes["mapped"] > len(seeds)
        and outcomes["undecodable"] > 0
        and outcomes["invalid_event"] > 0
    )
