"""Airflow DAGs for loganomaly: nightly ingest -> featurize -> score, weekly train -> maintain.

Every task is a ``SparkSubmitOperator`` running a ``jobs/<stage>.py`` shim, with the package
shipped as ``dist/loganomaly.zip`` (``scripts/package.sh``) through ``--py-files``. Copy (or link)
this file into the DAGs folder; it needs ``apache-airflow-providers-apache-spark`` and
``spark-submit`` on the worker. No Airflow Variable is read at parse time: each setting is a
Jinja template resolved when a task runs, from an Airflow Variable when it is set, otherwise from
the DAG's ``params`` (editable when triggering a run by hand).

Settings (Variable name -> param, default):

* ``loganomaly_home`` -> ``home``: the checkout on the worker holding ``jobs/``, ``conf/`` and
  ``dist/`` (default: ``$LOGANOMALY_HOME``, else two levels above this file).
* ``loganomaly_lake`` -> ``lake``: the lake root, e.g. ``s3a://bucket/lake``.
* ``loganomaly_model_dir`` -> ``model_dir``: where ``train`` writes and ``score`` reads the bundle.
* ``loganomaly_input`` -> ``input``: the raw log landing directory read by ``ingest``.
* ``loganomaly_profile`` -> ``profile``: ``conf/profiles/<name>.yaml``; empty for none.
* ``loganomaly_python`` -> ``python``: the interpreter with the dependencies on every node
  (``spark.pyspark.python``); the package itself comes from the zip.
* ``$LOGANOMALY_SPARK_CONN_ID`` (environment, read at parse time: ``conn_id`` is not templated):
  the Spark connection (master, deploy mode, spark-submit binary); default ``spark_default``.

``score`` gets ``--date {{ ds }}``: the nightly DAG uses an interval timetable, so a run at 01:30
UTC covers the previous day and ``ds`` is that day (on Airflow 2 and 3 alike; a plain cron
string on Airflow 3 would make ``ds`` the run's own day).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.timetables.interval import CronDataIntervalTimetable

HOME = os.environ.get("LOGANOMALY_HOME", str(Path(__file__).resolve().parents[2]))
CONN_ID = os.environ.get("LOGANOMALY_SPARK_CONN_ID", "spark_default")

NIGHTLY_CRON = "30 1 * * *"  # 01:30 UTC, for the day that just ended
WEEKLY_CRON = "0 3 * * 0"  # Sundays 03:00 UTC, after that night's ingest and featurize
START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)

PARAMS = {
    "home": HOME,
    "lake": "/data/loganomaly/lake",
    "model_dir": "/data/loganomaly/model",
    "input": "/data/loganomaly/raw",
    "profile": "",
    "python": "python3",
}

DEFAULT_ARGS = {
    "owner": "loganomaly",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=10),
    "retry_exponential_backoff": True,
    "execution_timeout": dt.timedelta(hours=4),
}


#: What both DAGs share: no catch-up of missed intervals, one run at a time, retries, the settings.
DAG_ARGS = {
    "start_date": START,
    "catchup": False,
    "max_active_runs": 1,
    "default_args": DEFAULT_ARGS,
    "params": PARAMS,
    "tags": ["loganomaly"],
}


def setting(name: str) -> str:
    """Jinja for one setting: the Variable ``loganomaly_<name>`` when set, else ``params.<name>``."""
    return f"{{{{ var.value.get('loganomaly_{name}', params.{name}) }}}}"


def stage_task(stage: str, *args: str) -> SparkSubmitOperator:
    """One spark-submit of ``jobs/<stage>.py`` with the common arguments of every stage."""
    home = setting("home")
    python = setting("python")
    return SparkSubmitOperator(
        task_id=stage,
        application=f"{home}/jobs/{stage}.py",
        conn_id=CONN_ID,
        py_files=f"{home}/dist/loganomaly.zip",
        name=f"loganomaly-{stage}-{{{{ ds }}}}",
        conf={"spark.pyspark.python": python, "spark.pyspark.driver.python": python},
        application_args=[
            "--conf-dir",
            f"{home}/conf",
            "--profile",
            setting("profile"),
            "--lake",
            setting("lake"),
            *args,
        ],
    )


with DAG(
    dag_id="loganomaly_nightly",
    description="ingest -> featurize -> score the previous day",
    schedule=CronDataIntervalTimetable(NIGHTLY_CRON, timezone="UTC"),
    **DAG_ARGS,
) as nightly:
    ingest = stage_task("ingest", "--input", setting("input"))
    # Only the windows that can hold the new day's events are rebuilt (a full build on a new lake).
    featurize = stage_task("featurize", "--since", "{{ ds }}")
    score = stage_task("score", "--model-dir", setting("model_dir"), "--date", "{{ ds }}")
    ingest >> featurize >> score

with DAG(
    dag_id="loganomaly_weekly_train",
    description="rebuild the sequences table in full, retrain the model bundle on it, then compact and vacuum the lake",
    schedule=CronDataIntervalTimetable(WEEKLY_CRON, timezone="UTC"),
    **DAG_ARGS,
) as weekly_train:
    # A full featurize first: it also windows late data for dates the nightly --since skips.
    rebuild = stage_task("featurize")
    train = stage_task("train", "--model-dir", setting("model_dir"))
    # Last, once a week: OPTIMIZE every table (one new version, same rows), then VACUUM files older
    # than a week, which also removes the orphans a killed run leaves. A week keeps time travel over
    # the nights since the last maintenance; set it to what your audits need.
    maintain = stage_task("maintain", "--retain-hours", "168")
    rebuild >> train >> maintain
