from heartbeat_platform.cli import run

run()
