"""The platform's one code location (workspace.yaml, [tool.dagster] and [tool.dg])."""

from heartbeat_platform.orchestration.definitions import defs

__all__ = ["defs"]
