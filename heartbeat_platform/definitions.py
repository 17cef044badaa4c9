"""The platform's one code location (workspace.yaml, [tool.dagster] and [tool.dg]): every
definition in `heartbeat_platform/defs/`.

`load_from_defs_folder` reads the project's [tool.dg] table: from pyproject.toml in a
checkout, from the copy packaged under `_dagster/` in a wheel (the container image).
"""

from pathlib import Path

import dagster as dg


def _project_path() -> Path:
    packaged = Path(__file__).resolve().parent / "_dagster"
    return packaged if (packaged / "pyproject.toml").exists() else Path(__file__).resolve().parent


defs = dg.load_from_defs_folder(path_within_project=_project_path())
