"""Scheduled care: pipeline health snapshots, data-quality runs, storage retention."""
