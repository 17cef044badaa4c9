"""Every Dagster definition of the platform, one folder per concern, loaded by
`heartbeat_platform.definitions` with `dg.load_from_defs_folder` (`dg list defs`).

Modules here import each other's modules, not their objects (`from ...ingest import jobs`),
so that each definition is found in exactly one module.
"""
