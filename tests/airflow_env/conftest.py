"""Settings for tests/airflow_env, which run in .venv-airflow (``make test-airflow``).

Airflow reads its configuration when it is first imported, so it is set here, before any test
module imports it: a home of its own under ``build/`` (never a developer's real ``AIRFLOW_HOME``
and its database) and no example DAGs.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

os.environ["AIRFLOW_HOME"] = str(ROOT / "build" / "airflow-home")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
