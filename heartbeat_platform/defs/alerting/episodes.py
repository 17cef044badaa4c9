"""The episodes table (written by the consumer, the NO_SIGNAL job and `alerts` commands)
and the checks that guard it and its outbox.

Every check is a bounded read whatever the history holds: open episodes through the
partial index `alert_episodes_one_open` (at most one per customer and kind), firing ones
through `alert_episodes_firing`, the last hour's resolutions through
`alert_episodes_resolved_at`, and undelivered notifications through `alert_outbox_pending`.
They run every five minutes with the statistics (`defs/alerting/stats.py`).

Severities: the episode state and the outbox are written in one transaction, so a failure
of `episode_states_consistent` or `transitions_in_outbox` means the rules were broken
(schema drift, a hand-written row): ERROR, and the state check blocks the statistics of
the same run. A notification stuck undelivered past the give-up time means the delivery
thread is not running: nobody is being told, ERROR.
"""

from datetime import timedelta

import dagster as dg

from heartbeat_platform.defs.asset_keys import ALERT_EPISODES, ANOMALIES
from heartbeat_platform.defs.resources import PostgresResource
from heartbeat_platform.storage.database import one_row

SAMPLE_ROWS = 5
RESOLVED_WINDOW = timedelta(hours=1)  # resolutions whose outbox row transitions_in_outbox reads
# The delivery thread gives a row up at its first failed try past the give-up time; tries
# come at most 60 s apart (alerting.delivery.BACKOFF_S), so this much later it must be done.
STUCK_GRACE = timedelta(minutes=5)

alert_episodes = dg.AssetSpec(
    ALERT_EPISODES,
    description="Episodes: one stretch of trouble per customer and kind (TACHYCARDIA, "
    "BRADYCARDIA, SENSOR_FAULT, NO_SIGNAL), pending -> firing -> resolved, acknowledged and "
    "resolved by people with `heartbeat-platform alerts`. Each transition queues one "
    "alert_outbox row that the consumer's delivery thread sends to the receivers. Written "
    "by heartbeat_consumer in each batch's transaction and by the no_signal job.",
    deps=[ANOMALIES],
    group_name="alerting",
    kinds={"postgres", "table"},
)

_STATES = """
SELECT
  (SELECT count(*) FROM (SELECT 1 FROM alert_episodes WHERE state <> 'resolved'
                         GROUP BY customer_id, kind HAVING count(*) > 1) AS doubled),
  (SELECT count(*) FROM alert_episodes WHERE state = 'resolved' AND resolved_at IS NULL),
  (SELECT count(*) FROM alert_episodes WHERE state <> 'resolved' AND resolved_at IS NOT NULL),
  (SELECT count(*) FROM alert_episodes WHERE state = 'firing' AND opened_at IS NULL),
  (SELECT count(*) FROM alert_episodes WHERE state <> 'resolved')
"""
_DOUBLED_EXAMPLES = """
SELECT customer_id, kind, count(*) FROM alert_episodes WHERE state <> 'resolved'
GROUP BY customer_id, kind HAVING count(*) > 1 ORDER BY customer_id, kind LIMIT %s
"""


@dg.asset_check(
    asset=ALERT_EPISODES,
    blocking=True,
    description="At most one open (pending or firing) episode per customer and kind; every "
    "resolved episode has its resolved_at and no open one has one; every firing episode "
    "has its opened_at. Reads the open episodes only.",
)
def episode_states_consistent(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connect() as conn:
        doubled, resolved_no_time, open_with_time, firing_no_open, open_now = one_row(
            conn.execute(_STATES)
        )
        examples = [
            f"{customer} {kind}: {n} open"
            for customer, kind, n in conn.execute(_DOUBLED_EXAMPLES, (SAMPLE_ROWS,))
        ] if doubled else []
    return dg.AssetCheckResult(
        passed=not (doubled or resolved_no_time or open_with_time or firing_no_open),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "customer_kinds_with_several_open": doubled,
            "resolved_without_resolved_at": resolved_no_time,
            "open_with_resolved_at": open_with_time,
            "firing_without_opened_at": firing_no_open,
            "open_episodes": open_now,
            "examples": examples,
        },
    )


_UNQUEUED = """
SELECT e.episode_id, e.customer_id, e.kind, e.state FROM alert_episodes e
WHERE e.state = 'firing'
  AND NOT EXISTS (SELECT 1 FROM alert_outbox o
                  WHERE o.episode_id = e.episode_id AND o.state = 'firing')
UNION ALL
SELECT e.episode_id, e.customer_id, e.kind, e.state FROM alert_episodes e
WHERE e.state = 'resolved' AND e.resolved_at > now() - %(window)s
  AND NOT EXISTS (SELECT 1 FROM alert_outbox o
                  WHERE o.episode_id = e.episode_id AND o.state = 'resolved')
ORDER BY episode_id
"""


@dg.asset_check(
    asset=ALERT_EPISODES,
    description="Every firing episode has its `firing` notification in alert_outbox, and "
    f"every episode resolved in the last {RESOLVED_WINDOW} its `resolved` one (both are "
    "written in the transaction that changes the episode).",
)
def transitions_in_outbox(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connect() as conn:
        missing = conn.execute(_UNQUEUED, {"window": RESOLVED_WINDOW}).fetchall()
    firing = [row for row in missing if row[3] == "firing"]
    return dg.AssetCheckResult(
        passed=not missing,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "firing_without_outbox_row": len(firing),
            "resolved_without_outbox_row": len(missing) - len(firing),
            "examples": [
                f"episode {episode_id} {customer} {kind} {state}"
                for episode_id, customer, kind, state in missing[:SAMPLE_ROWS]
            ],
        },
    )


_STUCK = """
SELECT count(*) FILTER (WHERE created_at < now() - %(limit)s),
       count(*),
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM alert_outbox WHERE done_at IS NULL AND gave_up_at IS NULL
"""


@dg.asset_check(
    asset=ALERT_EPISODES,
    description="No notification is still undelivered, and not given up, past "
    f"HEARTBEAT_ALERT_GIVE_UP_S (plus {STUCK_GRACE} for the delivery thread's last try): "
    "one that is means nothing delivers notifications. Reads the pending rows only.",
)
def nothing_stuck_undelivered(postgres: PostgresResource) -> dg.AssetCheckResult:
    give_up_s = postgres.settings().heartbeat_alert_give_up_s
    with postgres.connect() as conn:
        stuck, undelivered, oldest_s = one_row(conn.execute(
            _STUCK, {"limit": timedelta(seconds=give_up_s) + STUCK_GRACE}
        ))
    return dg.AssetCheckResult(
        passed=stuck == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "stuck_past_give_up": stuck,
            "undelivered": undelivered,
            "oldest_undelivered_age_s": round(oldest_s, 1),
            "give_up_s": give_up_s,
        },
    )
