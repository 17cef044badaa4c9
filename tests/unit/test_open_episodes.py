"""OpenEpisodes.take: what a batch wrote replaces what the writer keeps (no database)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from heartbeat_platform.domain.episodes import Episode, EpisodeKind, EpisodeState
from heartbeat_platform.storage.episodes import OpenEpisodes

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def episode(episode_id: int, state: EpisodeState, first: int, customer: str = "CUST_00001",
            kind: EpisodeKind = EpisodeKind.TACHYCARDIA) -> Episode:
    at = T0 + timedelta(seconds=first)
    return Episode(episode_id, customer, kind, state, at, None, 190, 190, 1, at, at, 0, at)


def kept_with(*episodes: Episode) -> OpenEpisodes:
    kept = OpenEpisodes()
    kept.take(list(episodes), [])
    return kept


def test_a_resolved_episode_leaves_and_a_new_one_of_its_kind_in_the_same_batch_stays() -> None:
    old = episode(1, EpisodeState.FIRING, 0)
    kept = kept_with(old)
    new = episode(2, EpisodeState.FIRING, 30)
    kept.take([new, replace(old, state=EpisodeState.RESOLVED)], [])  # any order
    assert kept.of({"CUST_00001"})[0] == [new]


def test_a_dropped_pending_episode_leaves_and_the_run_that_broke_it_stays() -> None:
    pending = episode(1, EpisodeState.PENDING, 0)
    kept = kept_with(pending)
    again = episode(2, EpisodeState.PENDING, 60)
    kept.take([again], [pending])
    assert kept.of({"CUST_00001"})[0] == [again]


def test_a_customer_with_nothing_open_left_is_walked_no_more() -> None:
    firing = episode(1, EpisodeState.FIRING, 0)
    kept = kept_with(firing, episode(3, EpisodeState.FIRING, 0, customer="CUST_00002"))
    kept.take([replace(firing, state=EpisodeState.RESOLVED)], [])
    assert set(kept.open) == {"CUST_00002"}
    assert kept.of({"CUST_00001"}) == ([], {})


def test_forget_empties_everything() -> None:
    kept = kept_with(episode(1, EpisodeState.FIRING, 0))
    kept.known.add("CUST_00001")
    kept.forget()
    assert (kept.epoch, kept.known, kept.open, kept.bounds) == (None, set(), {}, {})
