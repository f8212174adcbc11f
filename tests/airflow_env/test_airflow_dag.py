"""``conf/airflow/loganomaly_dag.py`` loaded by Airflow itself (``make test-airflow``, in .venv-airflow).

``tests/test_deploy.py`` checks the DAG file in the main environment against a stand-in for the
few Airflow names it uses. Here the real Airflow (3.3, pinned with its Spark provider in
``conf/airflow-constraints.txt``) parses the file the way its DAG processor does, through a
``DagBag``; ``test_deploy.check_dags`` then runs on the DAGs Airflow built, and these tests add
what only Airflow can tell: import errors and warnings, the defaults the operators really got,
serialization for the scheduler, when runs start and which day they cover, and the spark-submit
command line the Spark provider builds for each task, which must be a valid ``loganomaly`` call.
In the main environment (no Airflow) the module is skipped.
"""

from __future__ import annotations

import ast
import copy
import datetime as dt
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "airflow.providers.apache.spark",
    reason="Airflow and its Spark provider are not installed here; `make test-airflow` runs these in .venv-airflow",
)

from airflow.models import DagBag  # noqa: E402
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator  # noqa: E402
from airflow.timetables.base import DataInterval, TimeRestriction  # noqa: E402

from tests.test_deploy import DAG_FILE, ROOT, _parses, check_dags  # noqa: E402

NIGHTLY, WEEKLY = "loganomaly_nightly", "loganomaly_weekly_train"
UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def bag() -> Iterator[DagBag]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LOGANOMALY_HOME", raising=False)  # the DAG's home: two levels above the file
        yield DagBag(dag_folder=str(DAG_FILE))


@pytest.fixture(scope="module")
def dag_module() -> types.ModuleType:
    """The DAG file's own constants (DEFAULT_ARGS, START, ...) as Airflow imported them."""
    import sys

    (name,) = [n for n, m in sys.modules.items() if getattr(m, "__file__", None) == str(DAG_FILE)]
    return sys.modules[name]


def test_dagbag_loads_both_dags_without_import_errors_or_warnings(bag: DagBag) -> None:
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == [NIGHTLY, WEEKLY]
    assert not bag.captured_warnings, bag.captured_warnings  # e.g. deprecated arguments
    for dag in bag.dags.values():
        assert dag.fileloc == str(DAG_FILE)


def test_the_deploy_checks_hold_for_the_dags_airflow_built(bag: DagBag) -> None:
    check_dags(types.SimpleNamespace(nightly=bag.dags[NIGHTLY], weekly_train=bag.dags[WEEKLY]))


def test_task_order_catchup_and_the_operators_defaults(bag: DagBag, dag_module: types.ModuleType) -> None:
    order = {NIGHTLY: ["ingest", "featurize", "score"], WEEKLY: ["featurize", "train", "maintain"]}
    for dag_id, expected in order.items():
        dag = bag.dags[dag_id]
        assert [t.task_id for t in dag.topological_sort()] == expected
        for upstream, downstream in zip(expected, expected[1:], strict=False):
            assert dag.get_task(downstream).upstream_task_ids == {upstream}
        assert dag.catchup is False and dag.max_active_runs == 1
        assert set(dag.tags) == {"loganomaly"}
        assert dag.start_date == dag_module.START
        for task in dag.tasks:
            assert isinstance(task, SparkSubmitOperator), task
            # default_args reached every operator through Airflow
            defaults = dag_module.DEFAULT_ARGS
            assert task.retries == defaults["retries"] >= 1
            assert task.retry_delay == defaults["retry_delay"] > dt.timedelta(0)
            assert task.retry_exponential_backoff
            assert task.execution_timeout == defaults["execution_timeout"]
            assert task.owner == defaults["owner"]


def test_dags_survive_serialization_for_the_scheduler(bag: DagBag) -> None:
    """Airflow's scheduler and UI see the serialized DAG, not the file: it must round-trip."""
    try:
        from airflow.serialization.serialized_objects import DagSerialization as Serializer
    except ImportError:  # Airflow 2
        from airflow.serialization.serialized_objects import SerializedDAG as Serializer
    for dag in bag.dags.values():
        data = json.loads(json.dumps(Serializer.to_dict(dag)))  # what is stored is JSON
        back = Serializer.from_dict(data)
        assert back.dag_id == dag.dag_id and back.catchup is False
        assert back.timetable.summary == dag.timetable.summary
        assert [t.task_id for t in back.tasks] == [t.task_id for t in dag.tasks]
        for task in dag.tasks:
            restored = back.get_task(task.task_id)
            assert restored.task_type == "SparkSubmitOperator"
            assert restored.downstream_task_ids == task.downstream_task_ids
            assert restored.retries == task.retries
            for field in ("application", "application_args", "conf", "py_files", "name"):
                assert getattr(restored, field) == getattr(task, field), (task.task_id, field)


def _next_run(dag: Any, after_interval: DataInterval | None, catchup: bool) -> Any:
    restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=catchup)
    return dag.timetable.next_dagrun_info(last_automated_data_interval=after_interval, restriction=restriction)


def test_nightly_runs_at_0130_utc_for_the_day_that_ended(bag: DagBag) -> None:
    nightly = bag.dags[NIGHTLY]
    last = DataInterval(dt.datetime(2024, 3, 4, 1, 30, tzinfo=UTC), dt.datetime(2024, 3, 5, 1, 30, tzinfo=UTC))
    info = _next_run(nightly, last, catchup=True)  # the night after the last run (catchup=False would skip to now)
    assert info.run_after == dt.datetime(2024, 3, 6, 1, 30, tzinfo=UTC)
    # ds (the logical date) is the start of the interval: the run on the 6th scores the 5th
    assert info.data_interval.start.date().isoformat() == "2024-03-05"


def test_weekly_train_runs_sundays_at_0300_utc(bag: DagBag) -> None:
    weekly = bag.dags[WEEKLY]
    last = DataInterval(dt.datetime(2024, 3, 3, 3, 0, tzinfo=UTC), dt.datetime(2024, 3, 10, 3, 0, tzinfo=UTC))
    info = _next_run(weekly, last, catchup=True)
    assert info.run_after == dt.datetime(2024, 3, 17, 3, 0, tzinfo=UTC)
    assert info.run_after.isoweekday() == 7  # Sunday


def test_no_catch_up_the_first_run_is_recent_not_the_start_date(bag: DagBag) -> None:
    for dag in bag.dags.values():
        # the latest whole interval before now: at most two weekly intervals back, whatever the hour
        first = _next_run(dag, None, catchup=False)
        assert first.data_interval.start > dt.datetime.now(UTC) - dt.timedelta(days=15), dag.dag_id
        # what catchup=True would have started with: the first interval after the start date, in 2024
        backfill = _next_run(dag, None, catchup=True)
        assert dag.start_date <= backfill.data_interval.start < dag.start_date + dt.timedelta(days=8), dag.dag_id


def _variables() -> dict[str, Any]:
    """Airflow's own ``var`` template accessors (Variables come from env vars or the metastore)."""
    try:
        from airflow.sdk.execution_time.context import VariableAccessor
    except ImportError:  # Airflow 2
        from airflow.utils.context import VariableAccessor  # type: ignore[no-redef]
    return {"value": VariableAccessor(deserialize_json=False), "json": VariableAccessor(deserialize_json=True)}


def _spark_submit_command(dag: Any, task_id: str, ds: str) -> list[str]:
    """The command line the Spark provider's hook would run for ``task_id`` on ``ds``."""
    task = copy.deepcopy(dag.get_task(task_id))  # rendering changes the operator in place
    context = {"ds": ds, "params": dag.params, "var": _variables(), "dag": dag, "task": task}
    task.render_template_fields(context, jinja_env=dag.get_template_env())
    return list(task._get_hook()._build_spark_submit_command(task.application))


def _job_stage(path: Path) -> str:
    """The stage a ``jobs/<stage>.py`` shim runs: the literal in its ``run_stage("<stage>", ...)``."""
    calls = [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run_stage"]
    assert len(calls) == 1, path
    stage = calls[0].args[0]
    assert isinstance(stage, ast.Constant) and isinstance(stage.value, str), path
    return stage.value


def test_spark_submit_command_lines_are_valid_cli_calls(bag: DagBag, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "yarn"}))
    ds = "2024-03-05"
    seen = []
    for dag in bag.dags.values():
        for task in dag.tasks:
            cmd = _spark_submit_command(dag, task.task_id, ds)
            application = ROOT / "jobs" / f"{task.task_id}.py"
            at = cmd.index(str(application))
            options, args = cmd[1:at], cmd[at + 1 :]
            assert cmd[0] == "spark-submit"
            pairs = dict(zip(options[::2], options[1::2], strict=True))  # every option takes a value
            assert pairs["--master"] == "yarn"
            assert pairs["--py-files"] == str(ROOT / "dist" / "loganomaly.zip")
            assert pairs["--name"] == f"loganomaly-{task.task_id}-{ds}"
            confs = {options[i + 1] for i, o in enumerate(options) if o == "--conf"}
            assert confs == {"spark.pyspark.python=python3", "spark.pyspark.driver.python=python3"}
            # the job file runs the stage named like the task, with these arguments
            assert _job_stage(application) == task.task_id
            parsed = _parses([task.task_id, *args])
            assert parsed.lake == dag.params["lake"] and Path(parsed.conf_dir) == ROOT / "conf"
            if task.task_id == "score":
                assert parsed.date == ds and parsed.model_dir == dag.params["model_dir"]
            if task.task_id == "featurize" and dag.dag_id == NIGHTLY:
                assert parsed.since == ds
            if task.task_id == "maintain":
                assert parsed.retain_hours == 168
            seen.append((dag.dag_id, task.task_id))
    assert len(seen) == 6


def test_airflow_variables_override_the_params(bag: DagBag, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.setenv("AIRFLOW_VAR_LOGANOMALY_LAKE", "s3a://bucket/lake")
    monkeypatch.setenv("AIRFLOW_VAR_LOGANOMALY_PYTHON", "/opt/py/bin/python")
    monkeypatch.setenv("AIRFLOW_VAR_LOGANOMALY_MODEL_DIR", "s3a://bucket/model")
    cmd = _spark_submit_command(bag.dags[NIGHTLY], "score", "2024-03-05")
    assert "spark.pyspark.python=/opt/py/bin/python" in cmd
    parsed = _parses(["score", *cmd[cmd.index(str(ROOT / "jobs" / "score.py")) + 1 :]])
    assert parsed.lake == "s3a://bucket/lake" and parsed.model_dir == "s3a://bucket/model"
