from heartbeat_platform.cli import app

app(prog_name="heartbeat-platform")
