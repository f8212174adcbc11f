"""Deployment definitions stay in step with the code: the Databricks bundle and the Airflow DAGs.

Every task must call a real entry point with arguments the CLI accepts, on a valid schedule, in
the intended order. No Spark, no network. The Airflow DAG file is imported for real when Airflow
and its Spark provider are installed; it is always also imported against a small stand-in for the
few Airflow names it uses, whose operator takes exactly SparkSubmitOperator's keyword arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from loganomaly.cli import STAGES, build_parser

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "conf" / "airflow" / "loganomaly_dag.py"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _parses(args: list[str]) -> argparse.Namespace:
    """Parse with the real CLI parser; argparse's exit becomes a test failure that shows the args."""
    try:
        return build_parser().parse_args(args)
    except SystemExit as exc:  # argparse has already printed why
        pytest.fail(f"the CLI refuses {args}: exit {exc.code}")


# --- quartz cron (Databricks schedules) ---------------------------------------------------------

_MONTHS = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
_DAYS = "SUN MON TUE WED THU FRI SAT".split()
_QUARTZ_FIELDS = (  # name, low, high, names, extra characters allowed
    ("second", 0, 59, [], ""),
    ("minute", 0, 59, [], ""),
    ("hour", 0, 23, [], ""),
    ("day-of-month", 1, 31, [], "?LW"),
    ("month", 1, 12, _MONTHS, ""),
    ("day-of-week", 1, 7, _DAYS, "?L#"),
    ("year", 1970, 2199, [], ""),
)


def _quartz_value(text: str, low: int, high: int, names: list[str]) -> bool:
    if text.isdigit():
        return low <= int(text) <= high
    return text.upper() in names


def quartz_errors(expression: str) -> list[str]:
    """Why ``expression`` is not a Quartz cron expression (empty when it is one)."""
    fields = expression.split()
    if len(fields) not in (6, 7):
        return [f"{len(fields)} fields; Quartz wants 6 or 7 (seconds first, optional year last)"]
    errors = []
    for text, (name, low, high, names, extra) in zip(fields, _QUARTZ_FIELDS, strict=False):
        if text == "?" and "?" in extra or text == "*":
            continue
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                errors.append(f"{name}: bad step in {part!r}")
            if base in ("*", "?") and step:
                continue
            if "L" in extra and re.fullmatch(r"(\d*)L|LW|\d+W", base):
                continue
            if "#" in extra and re.fullmatch(r"[1-7]#[1-5]|[A-Z]{3}#[1-5]", base.upper()):
                continue
            ends = base.split("-")
            if len(ends) > 2 or not all(_quartz_value(e, low, high, names) for e in ends):
                errors.append(f"{name}: {part!r} is not in {low}-{high}{' or a name' if names else ''}")
    dom, dow = fields[3], fields[5]
    if (dom == "?") == (dow == "?"):
        errors.append("exactly one of day-of-month and day-of-week must be '?'")
    return errors


@pytest.mark.parametrize(
    ("expression", "ok"),
    [
        ("0 30 1 * * ?", True),
        ("0 0 3 ? * SUN", True),
        ("0 0/15 8-18 ? * MON-FRI", True),
        ("0 0 12 L * ? 2030", True),
        ("0 0 12 ? * 6#3", True),
        ("30 1 * * *", False),  # five-field Unix cron
        ("0 0 3 * * SUN", False),  # neither day field is '?'
        ("0 61 1 * * ?", False),
        ("0 0 25 * * ?", False),
        ("0 0 3 ? * FUNDAY", False),
    ],
)
def test_quartz_checker(expression: str, ok: bool) -> None:
    assert (quartz_errors(expression) == []) is ok, quartz_errors(expression)


# --- Databricks Asset Bundle --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "databricks.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def job_files(bundle: dict[str, Any]) -> dict[Path, dict[str, Any]]:
    files: dict[Path, dict[str, Any]] = {}
    for pattern in bundle["include"]:
        matched = sorted(ROOT.glob(pattern))
        assert matched, f"include {pattern!r} matches no file"
        for path in matched:
            files[path] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return files


@pytest.fixture(scope="module")
def jobs(job_files: dict[Path, dict[str, Any]]) -> dict[str, tuple[Path, dict[str, Any]]]:
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path, doc in job_files.items():
        for key, job in doc["resources"]["jobs"].items():
            assert key not in found, f"job {key} defined twice"
            found[key] = (path, job)
    return found


def _tasks(jobs: dict[str, tuple[Path, dict[str, Any]]]) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    for key, (path, job) in jobs.items():
        for task in job["tasks"]:
            yield key, path, task


def _resolve(text: str, variables: dict[str, Any]) -> str:
    """Substitute ``${var.x}`` with the variable's default and other ``${...}`` with a plausible value."""

    def value(match: re.Match[str]) -> str:
        ref = match.group(1)
        if ref.startswith("var."):
            assert ref[4:] in variables, f"${{{ref}}} is not declared under variables"
            return str(variables[ref[4:]]["default"])
        assert ref in ("workspace.file_path", "bundle.target", "bundle.name"), f"unexpected ${{{ref}}}"
        return {"workspace.file_path": "/Workspace/bundle/files", "bundle.target": "dev"}.get(
            ref, "loganomaly"
        )

    return re.sub(r"\$\{([^}]+)\}", value, text)


def test_bundle_basics(bundle: dict[str, Any]) -> None:
    assert bundle["bundle"]["name"] == PYPROJECT["project"]["name"]
    assert {"dev", "prod"} <= set(bundle["targets"])
    assert bundle["targets"]["dev"]["mode"] == "development" and bundle["targets"]["dev"].get("default")
    assert bundle["targets"]["prod"]["mode"] == "production"
    for target in bundle["targets"].values():
        for name in target.get("variables", {}):
            assert name in bundle["variables"], f"target sets undeclared variable {name}"
    (artifact,) = bundle["artifacts"].values()
    assert artifact["type"] == "whl"
    assert (ROOT / artifact["path"] / "pyproject.toml").is_file()
    assert "-w dist" in artifact["build"]


def test_every_task_runs_a_real_cli_command(bundle, jobs) -> None:  # type: ignore[no-untyped-def]
    scripts = PYPROJECT["project"]["scripts"]
    subcommands = _subcommands()
    seen = 0
    for key, path, task in _tasks(jobs):
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == PYPROJECT["project"]["name"], key
        assert wheel["entry_point"] in scripts, f"{key}.{task['task_key']}: no such [project.scripts] entry"
        params = [_resolve(str(p), bundle["variables"]) for p in wheel["parameters"]]
        assert params[0] in subcommands, f"{key}.{task['task_key']}: {params[0]!r} is not a subcommand"
        assert params[0] == task["task_key"], "task keys are named after their stage"
        args = _parses(params)
        assert args.command == params[0]
        assert args.lake, f"{key}.{task['task_key']} must name its lake"
        # the wheel the artifact builds, relative to the file the task is defined in
        (library,) = task["libraries"]
        assert (path.parent / library["whl"]).resolve().parent == ROOT / "dist", library
        seen += 1
    assert seen >= 4


def test_schedules_are_quartz_in_utc(jobs) -> None:  # type: ignore[no-untyped-def]
    for key, (_, job) in jobs.items():
        schedule = job["schedule"]
        assert quartz_errors(schedule["quartz_cron_expression"]) == [], key
        assert schedule["timezone_id"] == "UTC", key


def test_dependencies_and_clusters_exist(jobs) -> None:  # type: ignore[no-untyped-def]
    for key, (_, job) in jobs.items():
        task_keys = [t["task_key"] for t in job["tasks"]]
        assert len(set(task_keys)) == len(task_keys), f"{key}: duplicate task_key"
        clusters = {c["job_cluster_key"] for c in job.get("job_clusters", [])}
        for task in job["tasks"]:
            for dep in task.get("depends_on", []):
                assert dep["task_key"] in task_keys, f"{key}.{task['task_key']} depends on {dep}"
            assert task["job_cluster_key"] in clusters, f"{key}.{task['task_key']}"


def test_nightly_and_weekly_jobs(jobs) -> None:  # type: ignore[no-untyped-def]
    nightly = jobs["loganomaly_nightly"][1]
    after = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in nightly["tasks"]}
    assert after == {"ingest": [], "featurize": ["ingest"], "score": ["featurize"]}
    assert nightly["schedule"]["quartz_cron_expression"].split()[3:6] == ["*", "*", "?"]  # every day
    weekly = jobs["loganomaly_weekly_train"][1]
    assert [t["task_key"] for t in weekly["tasks"]] == ["featurize", "train", "maintain"]
    assert [d["task_key"] for d in weekly["tasks"][2]["depends_on"]] == ["train"]
    maintain = _parses(weekly["tasks"][2]["python_wheel_task"]["parameters"])
    assert maintain.command == "maintain" and maintain.retain_hours == 168
    assert "--since" in next(t for t in nightly["tasks"] if t["task_key"] == "featurize")[
        "python_wheel_task"]["parameters"]
    assert weekly["schedule"]["quartz_cron_expression"].split()[3] == "?"


# --- Airflow -------------------------------------------------------------------------------------

# SparkSubmitOperator's own keyword arguments (apache-airflow-providers-apache-spark), and those of
# BaseOperator the DAG may pass; the stand-in refuses anything else.
SPARK_SUBMIT_ARGS = frozenset(
    "application conf conn_id files py_files archives driver_class_path jars java_class packages "
    "exclude_packages repositories total_executor_cores executor_cores executor_memory driver_memory "
    "keytab principal proxy_user name num_executors status_poll_interval application_args env_vars "
    "verbose spark_binary properties_file yarn_queue deploy_mode use_krb5ccache".split()
)
# the operator's templated fields the DAG puts Jinja in
TEMPLATED = frozenset({"application", "conf", "py_files", "name", "application_args"})
BASE_OPERATOR_ARGS = frozenset(
    "task_id owner retries retry_delay retry_exponential_backoff execution_timeout pool queue "
    "trigger_rule sla doc_md email email_on_failure".split()
)


def _stand_in_airflow() -> dict[str, types.ModuleType]:
    current: list[Any] = []

    class DAG:
        def __init__(self, dag_id: str, *, schedule: Any, start_date: dt.datetime, catchup: bool, **kw: Any):
            self.dag_id, self.timetable, self.start_date, self.catchup = dag_id, schedule, start_date, catchup
            self.default_args = kw.pop("default_args", {})
            self.params = kw.pop("params", {})
            self.tasks: list[Any] = []

        def __enter__(self) -> DAG:
            current.append(self)
            return self

        def __exit__(self, *exc: object) -> None:
            current.pop()

        def get_task(self, task_id: str) -> Any:
            return next(t for t in self.tasks if t.task_id == task_id)

    class SparkSubmitOperator:
        def __init__(self, **kwargs: Any) -> None:
            unknown = set(kwargs) - SPARK_SUBMIT_ARGS - BASE_OPERATOR_ARGS
            if unknown:
                raise TypeError(f"SparkSubmitOperator got unexpected keyword arguments {sorted(unknown)}")
            self.dag = current[-1]
            merged = {**self.dag.default_args, **kwargs}
            for key, value in merged.items():
                setattr(self, key, value)
            self.downstream_task_ids: set[str] = set()
            self.dag.tasks.append(self)

        def __rshift__(self, other: Any) -> Any:
            self.downstream_task_ids.add(other.task_id)
            return other

    class CronDataIntervalTimetable:
        def __init__(self, cron: str, timezone: str) -> None:
            self.summary, self.timezone = cron, timezone

    modules = {
        name: types.ModuleType(name)
        for name in (
            "airflow",
            "airflow.providers",
            "airflow.providers.apache",
            "airflow.providers.apache.spark",
            "airflow.providers.apache.spark.operators",
            "airflow.providers.apache.spark.operators.spark_submit",
            "airflow.timetables",
            "airflow.timetables.interval",
        )
    }
    modules["airflow"].DAG = DAG  # type: ignore[attr-defined]
    spark_submit = modules["airflow.providers.apache.spark.operators.spark_submit"]
    spark_submit.SparkSubmitOperator = SparkSubmitOperator  # type: ignore[attr-defined]
    interval = modules["airflow.timetables.interval"]
    interval.CronDataIntervalTimetable = CronDataIntervalTimetable  # type: ignore[attr-defined]
    return modules


def _import_dag_file(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, DAG_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _render(value: Any, dag: Any, ds: str) -> Any:
    """Render a templated field the way a task run would, with no Airflow Variable set."""
    import jinja2

    if isinstance(value, list):
        return [_render(v, dag, ds) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, dag, ds) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    context = {
        "ds": ds,
        "params": dict(dag.params),
        "var": {"value": types.SimpleNamespace(get=lambda key, default=None: default)},
    }
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(value).render(**context)


def check_dags(module: types.ModuleType) -> None:
    """What both the real and the stand-in import must show."""
    nightly, weekly = module.nightly, module.weekly_train
    assert nightly.dag_id == "loganomaly_nightly" and weekly.dag_id == "loganomaly_weekly_train"
    assert sorted(t.task_id for t in nightly.tasks) == ["featurize", "ingest", "score"]
    assert nightly.get_task("ingest").downstream_task_ids == {"featurize"}
    assert nightly.get_task("featurize").downstream_task_ids == {"score"}
    assert nightly.get_task("score").downstream_task_ids == set()
    assert sorted(t.task_id for t in weekly.tasks) == ["featurize", "maintain", "train"]
    assert weekly.get_task("featurize").downstream_task_ids == {"train"}
    assert weekly.get_task("train").downstream_task_ids == {"maintain"}
    assert nightly.timetable.summary == "30 1 * * *"
    assert weekly.timetable.summary == "0 3 * * 0"
    assert nightly.catchup is False and weekly.catchup is False

    ds = "2024-03-05"
    for dag in (nightly, weekly):
        for task in dag.tasks:
            assert task.retries >= 1, task.task_id
            application = Path(_render(task.application, dag, ds))
            assert application == ROOT / "jobs" / f"{task.task_id}.py"
            assert application.is_file(), application
            assert _render(task.py_files, dag, ds) == str(ROOT / "dist" / "loganomaly.zip")
            conf = _render(dict(task.conf), dag, ds)
            assert conf["spark.pyspark.python"] == conf["spark.pyspark.driver.python"] == dag.params["python"]
            assert _render(task.name, dag, ds) == f"loganomaly-{task.task_id}-{ds}"
            args = _render(list(task.application_args), dag, ds)
            parsed = _parses([task.task_id, *args])
            assert parsed.command == task.task_id and parsed.lake == dag.params["lake"]
            assert Path(parsed.conf_dir) == ROOT / "conf"
            if task.task_id == "score":
                assert parsed.date == ds and parsed.model_dir == dag.params["model_dir"]
            if task.task_id == "ingest":
                assert parsed.input == [dag.params["input"]]
            if task.task_id == "maintain":
                assert parsed.retain_hours == 168 and parsed.tables == []
    assert {t.task_id for d in (nightly, weekly) for t in d.tasks} <= set(STAGES)


def test_dag_file_against_stand_in_airflow(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("jinja2")
    monkeypatch.delenv("LOGANOMALY_HOME", raising=False)
    for name, module in _stand_in_airflow().items():
        monkeypatch.setitem(sys.modules, name, module)
    check_dags(_import_dag_file("loganomaly_dag_stand_in"))


def test_dag_file_with_real_airflow(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import airflow  # noqa: F401
        from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    except ImportError as exc:
        pytest.skip(
            f"Airflow with apache-airflow-providers-apache-spark is not installed ({exc}); "
            "the stand-in test covers the DAG file's structure"
        )
    monkeypatch.delenv("LOGANOMALY_HOME", raising=False)
    assert set(SparkSubmitOperator.template_fields) >= TEMPLATED
    check_dags(_import_dag_file("loganomaly_dag_real"))
