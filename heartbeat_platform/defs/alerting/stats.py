"""Every five minutes, `alert_episode_stats` records what alerting did as asset metadata the
UI plots (Metadata -> Plots), and the checks of `alert_episodes` run in the same job.

Bounded reads only: episodes opened or resolved in a window are found through the partial
indexes on firing episodes (opened_at) and resolved ones (resolved_at), since an episode
opened in a window and already resolved was resolved in it too; acknowledgements likewise
(only a firing episode is acknowledged, so one acknowledged in the window is firing now or
was resolved after it). Notifications given up are counted among the outbox rows created
recently enough to have been given up in the last day, found by the primary key.
"""

from datetime import timedelta

import dagster as dg
import psycopg

from heartbeat_platform.defs.asset_keys import ALERT_EPISODES
from heartbeat_platform.defs.resources import PostgresResource
from heartbeat_platform.domain.episodes import EpisodeKind
from heartbeat_platform.storage.database import one_row

HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)

_OPENED = """
SELECT kind, count(*) FROM (
    SELECT kind FROM alert_episodes WHERE state = 'firing' AND opened_at > now() - %(w)s
    UNION ALL
    SELECT kind FROM alert_episodes
    WHERE state = 'resolved' AND resolved_at > now() - %(w)s AND opened_at > now() - %(w)s
) AS opened GROUP BY kind
"""
_RESOLVED = """
SELECT kind, count(*) FROM alert_episodes
WHERE state = 'resolved' AND resolved_at > now() - %(w)s GROUP BY kind
"""
_OPEN_NOW = "SELECT kind, count(*) FROM alert_episodes WHERE state <> 'resolved' GROUP BY kind"
_TIME_TO_ACK = """
SELECT count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY s),
       percentile_cont(0.9) WITHIN GROUP (ORDER BY s)
FROM (
    SELECT extract(epoch FROM acknowledged_at - opened_at)::float8 AS s FROM alert_episodes
    WHERE state = 'firing' AND acknowledged_at > now() - %(w)s
    UNION ALL
    SELECT extract(epoch FROM acknowledged_at - opened_at)::float8 FROM alert_episodes
    WHERE state = 'resolved' AND resolved_at > now() - %(w)s AND acknowledged_at > now() - %(w)s
) AS acknowledged
"""
_UNDELIVERED = "SELECT count(*) FROM alert_outbox WHERE done_at IS NULL AND gave_up_at IS NULL"
_GIVEN_UP = """
SELECT count(*) FROM alert_outbox
WHERE outbox_id >= %(first)s AND gave_up_at > now() - %(w)s
"""


def first_outbox_id_since(conn: psycopg.Connection, since_ago: timedelta) -> int | None:
    """The first outbox_id created less than `since_ago` ago (None: no such row), by a
    binary search on the primary key: ids are handed out in creation order."""
    low, high = one_row(conn.execute("SELECT min(outbox_id), max(outbox_id) FROM alert_outbox"))
    if low is None:
        return None
    found: int | None = None
    high += 1
    while low < high:
        middle = (low + high) // 2
        row = conn.execute(
            "SELECT outbox_id, created_at > now() - %s FROM alert_outbox "
            "WHERE outbox_id >= %s ORDER BY outbox_id LIMIT 1",
            (since_ago, middle),
        ).fetchone()
        if row is None:
            high = middle
        elif row[1]:
            found, high = row[0], middle
        else:
            low = row[0] + 1
    return found


def episode_stats(conn: psycopg.Connection, give_up_s: float) -> dict[str, float]:
    """The statistics, one number per name (kinds in lower case)."""
    kinds = [kind.value for kind in EpisodeKind]
    stats: dict[str, float] = {}
    for name, query in (("opened_last_hour", _OPENED), ("resolved_last_hour", _RESOLVED),
                        ("open_now", _OPEN_NOW)):
        counts: dict[str, int] = dict(conn.execute(query, {"w": HOUR}).fetchall())
        for kind in kinds:
            stats[f"{name}_{kind.lower()}"] = counts.get(kind, 0)
        stats[f"{name}_total"] = sum(counts.values())
    acknowledged, median, p90 = one_row(conn.execute(_TIME_TO_ACK, {"w": DAY}))
    stats["acknowledged_last_24h"] = acknowledged
    # no acknowledgement in the window: 0, so that the plot keeps a point (see the count)
    stats["ack_seconds_median_24h"] = round(median or 0.0, 1)
    stats["ack_seconds_p90_24h"] = round(p90 or 0.0, 1)
    stats["undelivered"] = one_row(conn.execute(_UNDELIVERED))[0]
    # given up in the last day: created at most give-up time (and the grace) before that
    first = first_outbox_id_since(conn, DAY + timedelta(seconds=give_up_s) + HOUR)
    stats["given_up_last_24h"] = (
        0 if first is None else one_row(conn.execute(_GIVEN_UP, {"first": first, "w": DAY}))[0]
    )
    return stats


@dg.asset(
    description="Every five minutes: episodes opened and resolved per kind in the last hour, "
    "open now per kind, median and p90 seconds from firing to acknowledgement of the "
    "episodes acknowledged in the last 24 h, notifications undelivered now and given up in "
    "the last 24 h; plotted under Metadata -> Plots.",
    deps=[ALERT_EPISODES],
    group_name="alerting",
    kinds={"postgres"},
)
def alert_episode_stats(postgres: PostgresResource) -> dg.MaterializeResult:
    give_up_s = postgres.settings().heartbeat_alert_give_up_s
    with postgres.connect() as conn, conn.transaction():  # one snapshot for every number
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        stats = episode_stats(conn, give_up_s)
    return dg.MaterializeResult(metadata=stats)


alert_stats_job = dg.define_asset_job(
    "alert_stats",
    selection=(
        dg.AssetSelection.assets(alert_episode_stats)
        | dg.AssetSelection.checks_for_assets(ALERT_EPISODES)
    ),
    description="Check the episodes table and its outbox, then record the episode statistics.",
)

every_five_minutes = dg.ScheduleDefinition(
    name="alert_stats_every_5_minutes",
    job=alert_stats_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
