"""PostgreSQL side of the platform: schema migrations and the batch writer."""
