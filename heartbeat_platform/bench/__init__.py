"""`heartbeat-platform bench`: what the producer and the consumer really do, as JSON.

Every stage runs against the configured (or embedded) broker and a dedicated database
`heartbeat_bench` on the same PostgreSQL server, recreated per run so table sizes are
comparable. The consumer runs as a separate `heartbeat-platform consume` process with the
exactly-once bookkeeping on, as in production; its peak RSS is that process's.

Stages, in the order `run.run_bench` runs them, each in a module of its own:
- producer (`ingest`): N events, as fast as possible, counted when delivered (acks=all);
- consume_to_postgres (`ingest`): the same N events preloaded in the topic, consumed to
  PostgreSQL by a fresh group; rows committed per second from the first message to the
  last commit;
- consume_alerting (`alerting`; `alerting_rounds` rounds, 1 by default, 0: left out): the
  same preloaded topic consumed again with alerting off (HEARTBEAT_ALERTING=off), at the
  default alarm-condition delays and with every delay off, each by a fresh group into a
  database created afresh for it, the order rotated per round; per mode the median rate,
  its ratio to off, and issue 20's targets next to them (`alerting_targets`, with the
  latency stage's reading-to-receipt p99);
- end_to_end (`ingest`): a fixed produce rate for a fixed time while a consumer runs;
  latency is the committed row's `ingested_at` minus the event's own timestamp, p50 / p99;
- baselines (`baselines`), measured in the same run for ratios: binary COPY of the same
  rows, encoded as the writer does, into the same indexed table (PostgreSQL's ceiling),
  and validate + classify without I/O;
- dashboard_states (`dashboard_states`; with `history`, before growth; alone with
  `dashboard_only`): every panel and variable on a database of its own holding the
  history, idle, with the rollups an hour behind and with them current (README "The
  dashboard when the rollups lag");
- growth (`growth`; only with `history` > 0; README "With history: does it keep its
  speed?"): N readings of history are loaded with SQL (`history`: INSERT ... SELECT over
  generate_series, Kafka would take hours), ending where this run started, and their
  rollups computed as a running platform would have (`rollups`); then the same number of
  events is consumed again into the database that now holds history (the ratio to the
  empty-table rate above is the number that matters), the rollups are brought up to date,
  every Grafana panel and template variable is timed (`dashboard`: median of 5 runs) for
  the last 6 hours and the last 7 days, the bytes each stored reading costs are measured
  and projected to a day at the design rate (`storage`), and all of it is held against the
  issue's targets (`targets`).
- cold (`cold`; only with `history` and `cold`, alone): the history loaded to end
  HEARTBEAT_HOT_DAYS ago, compacted by `storage.cold.compact_due`: hot and cold bytes per
  reading, the compaction rate, customer-day and -month reads through both readers, every
  compacted day's digest against its hot original (README "Cold tier").
The bench's own database, topics and groups are `services`; the consumer child process and
its peak RSS are `processes`.
"""

from heartbeat_platform.bench.dashboard_states import dashboard_states
from heartbeat_platform.bench.history import HistoryPlan, HistoryPlanError
from heartbeat_platform.bench.ingest import alert_latency
from heartbeat_platform.bench.rollups import catch_up_moment
from heartbeat_platform.bench.run import run_bench, write_json
from heartbeat_platform.bench.storage import storage_summary

__all__ = [
    "HistoryPlan",
    "HistoryPlanError",
    "alert_latency",
    "catch_up_moment",
    "dashboard_states",
    "run_bench",
    "storage_summary",
    "write_json",
]
