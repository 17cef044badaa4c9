"""Dagster control room: supervised producer/consumer jobs, assets, checks, schedules, `up`."""
