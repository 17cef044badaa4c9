"""Every minute, a NO_SIGNAL episode for each customer that sent readings in the last 24 h
and none for HEARTBEAT_NO_SIGNAL_AFTER_S (`storage.episodes.open_no_signal`); its next
reading resolves it. The customers opened are the run's logs and output metadata, and an
observation of `alert_episodes` when there are any."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from heartbeat_platform.defs.asset_keys import ALERT_EPISODES
from heartbeat_platform.defs.resources import PostgresResource
from heartbeat_platform.domain.episodes import SEEN_WITHIN
from heartbeat_platform.storage.episodes import open_no_signal

LISTED = 100  # customers named in the metadata (the count is always exact)


@dg.op(
    description="Open NO_SIGNAL episodes (with their notifications) for silent customers.",
    out=dg.Out(list[str], description="the customers whose NO_SIGNAL episode opened"),
)
def open_no_signal_episodes(
    context: dg.OpExecutionContext, postgres: PostgresResource
) -> dg.Output[list[str]]:
    after = timedelta(seconds=postgres.settings().heartbeat_no_signal_after_s)
    now = datetime.now(UTC)
    with postgres.connect() as conn, conn.transaction():
        opened = open_no_signal(conn, now, after, SEEN_WITHIN)
    if opened:
        context.log.warning(
            f"NO_SIGNAL opened for {len(opened)} customer(s) silent for {after}: "
            + ", ".join(opened[:LISTED]) + (" ..." if len(opened) > LISTED else "")
        )
        context.log_event(dg.AssetObservation(
            asset_key=ALERT_EPISODES, metadata={"no_signal_opened": len(opened)}
        ))
    else:
        context.log.info(f"no customer silent for {after} (seen within {SEEN_WITHIN})")
    return dg.Output(opened, metadata={
        "opened": len(opened),
        "customers": opened[:LISTED],
        "silent_after_s": after.total_seconds(),
    })


@dg.job(description="Open a NO_SIGNAL episode for each customer that went silent.")
def no_signal() -> None:
    open_no_signal_episodes()


every_minute = dg.ScheduleDefinition(
    name="no_signal_every_minute",
    job=no_signal,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
