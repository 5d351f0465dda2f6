"""A world's recipients and the enqueues its sending pattern makes, generated lazily."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import NamedTuple

from scheduler.simulate.trace import Enqueue
from scheduler.simulate.world import Campaign, Segment, Wave, World, bodies

#: Recipients are numbered from here: valid San Francisco numbers, one a recipient.
FIRST_RECIPIENT = 14_152_000_000
#: Multiplier of a hash that spreads recipient indexes evenly over [0, 1).
_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


class Recipient(NamedTuple):
    number: str
    segment: Segment


class Population:
    """The world's recipients: numbered, each in a segment fixed by its index and seed.

    Nothing is kept per recipient: a recipient's segment (and so its hidden engagement)
    is worked out again from its index whenever it is needed.
    """

    def __init__(self, world: World) -> None:
        self.count = world.recipients.count
        self.segments = world.recipients.segments
        self.seed = world.world.seed
        bounds, total = [], 0.0
        for segment in self.segments:
            total += segment.share
            bounds.append(total)
        self._bounds = bounds
        self._index = {segment.name: i for i, segment in enumerate(self.segments)}

    def number(self, index: int) -> str:
        return f"+{FIRST_RECIPIENT + index}"

    def index(self, number: str) -> int:
        return int(number[1:]) - FIRST_RECIPIENT

    def segment_of(self, index: int) -> Segment:
        u = (((index + self.seed * 7919) * _GOLDEN) & _MASK) / 2**64
        for segment, bound in zip(self.segments, self._bounds, strict=True):
            if u < bound:
                return segment
        return self.segments[-1]

    def draw(self, rng: random.Random, segment: str | None) -> str:
        """A recipient at random, from ``segment`` when one is named."""
        while True:
            index = rng.randrange(self.count)
            if segment is None or self.segment_of(index).name == segment:
                return self.number(index)


def enqueues(world: World) -> Iterator[Enqueue]:
    """Every enqueue of the world's sending pattern, in time order (one-to-one replies
    are the application's answers to replies, made while the world runs)."""
    people = Population(world)
    streams = [_wave(world, people, wave, i) for i, wave in enumerate(world.traffic.waves)] + [
        _campaign(world, people, campaign, i) for i, campaign in enumerate(world.traffic.campaigns)
    ]
    merged = heapq.merge(*streams, key=lambda e: e.at)
    every = world.traffic.enqueue_every_seconds
    if not every:
        return merged
    return (_batched(e, world.world.start, timedelta(seconds=every)) for e in merged)


def _batched(message: Enqueue, start: datetime, every: timedelta) -> Enqueue:
    """``message`` enqueued with the call it waits for: at the next multiple of ``every``."""
    at = start + -(-(message.at - start) // every) * every
    return message._replace(at=at)


def _wave(world: World, people: Population, wave: Wave, n: int) -> Iterator[Enqueue]:
    rng = random.Random(f"{world.world.seed}/wave/{n}")
    texts = bodies(wave.body)
    start, end = world.world.start, world.world.end
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    spread = wave.spread_minutes * 60
    while day < end:
        if day.weekday() in wave.weekdays:
            first = day + timedelta(
                hours=wave.at.hour, minutes=wave.at.minute, seconds=wave.at.second
            )
            offsets = sorted(rng.uniform(0, spread) for _ in range(wave.messages))
            for offset in offsets:
                at = first + timedelta(seconds=offset)
                if start <= at < end:
                    yield _message(rng, people, at, texts, wave.segment, wave.expires_hours)
        day += timedelta(days=1)


def _campaign(world: World, people: Population, campaign: Campaign, n: int) -> Iterator[Enqueue]:
    rng = random.Random(f"{world.world.seed}/campaign/{n}")
    texts = bodies(campaign.body)
    step = campaign.spread_hours * 3600 / max(campaign.messages, 1)
    for k in range(campaign.messages):
        at = campaign.start + timedelta(seconds=k * step)
        if world.world.start <= at < world.world.end:
            yield _message(rng, people, at, texts, campaign.segment, campaign.expires_hours)


def _message(
    rng: random.Random,
    people: Population,
    at: datetime,
    texts: tuple[str, ...],
    segment: str | None,
    expires_hours: float | None,
) -> Enqueue:
    expires = at + timedelta(hours=expires_hours) if expires_hours else None
    return Enqueue(at, people.draw(rng, segment), rng.choice(texts), expires_at=expires)
