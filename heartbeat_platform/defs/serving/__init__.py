"""What readers use: rollups, views and the Grafana dashboard."""
