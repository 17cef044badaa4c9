"""The `heartbeat-platform` command: thin over the platform's classes, one module per
command group (`main` puts them together)."""

from heartbeat_platform.cli.main import app, run

__all__ = ["app", "run"]
