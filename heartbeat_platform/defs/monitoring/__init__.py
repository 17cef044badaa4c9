"""Scheduled care: pipeline health snapshots, data-quality runs, storage retention, the
cold tier's compaction."""
