"""Spark-free tests of :mod:`loganomaly.ingest.formats.loghub`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from loganomaly.ingest.formats import (
    Detection,
    FormatOptions,
    detect,
)
from loganomaly.ingest.formats.loghub import LOGHUB_PATTERNS
from tests.ingest.formats.helpers import LOGS, UTC, events, parse, reasons, write


def test_loghub_hdfs_entity_is_the_block_id() -> None:
    records = parse(LOGS / "HDFS_sample.log")
    first, second, warn, _ = events(records)
    assert first["ts"] == dt.datetime(2008, 11, 10, 10, 15, 2, tzinfo=UTC)
    assert first["entity"] == "blk_-4411589101766563890" and first["component"] == "dfs.DataNode$DataXceiver"
    assert first["attributes"] == {"Pid": "412"} and first["format"] == "loghub"
    assert first["message"].startswith("Receiving block blk_-4411589101766563890 src:")
    assert second["entity"] == "blk_902371245610485732"
    assert warn["level"] == "warning"


def test_loghub_bgl_labels_epoch_and_fraction() -> None:
    normal, tlb, app = events(parse(LOGS / "BGL_sample.log"))
    # Epoch column is UTC (the Time column is local, UTC-7); sub-seconds come from the Time column.
    assert normal["ts"] == dt.datetime(2005, 6, 14, 17, 42, 11, 384920, tzinfo=UTC)
    assert normal["label"] is None and normal["level"] == "info" and normal["entity"] == "R23-M0-NB-C:J05-U01"
    assert tlb["label"] == "KERNDTLB" and tlb["level"] == "fatal" and tlb["component"] == "KERNEL"
    assert app["label"] == "APPSEV" and app["message"].startswith("ciod: Error reading message prefix")


def test_loghub_linux_and_openssh_need_a_year() -> None:
    auth, ftp, rotate = events(parse(LOGS / "Linux_sample.log", options=FormatOptions(year=2005)))
    assert auth["ts"] == dt.datetime(2005, 7, 27, 14, 41, 57, tzinfo=UTC)
    assert (auth["entity"], auth["component"], auth["attributes"]) == (
        "combo",
        "sshd(pam_unix)",
        {"PID": "20882"},
    )
    assert rotate["component"] == "logrotate" and rotate["attributes"] == {}
    ssh = events(
        parse(LOGS / "OpenSSH_sample.log", options=FormatOptions(year=2005, timezone="Asia/Hong_Kong"))
    )
    assert ssh[0]["ts"] == dt.datetime(2005, 12, 11, 1, 12, 1, tzinfo=UTC)  # HKT is UTC+8
    assert (
        ssh[0]["entity"] == "LabSZ"
        and ssh[0]["component"] == "sshd"
        and ssh[0]["attributes"] == {"Pid": "31002"}
    )
    assert ssh[2]["message"] == "Failed password for invalid user oracle from 203.0.113.201 port 40312 ssh2"
    by_pid = events(parse(LOGS / "OpenSSH_sample.log", options=FormatOptions(year=2005, entity_field="Pid")))
    assert by_pid[0]["entity"] == "31002" and "Pid" not in by_pid[0]["attributes"]


@pytest.mark.parametrize(
    ("system", "line", "entity", "level"),
    [
        ("Android", "03-17 16:13:38.811  1702  2395 D WindowManager: freeze done", "1702", "debug"),
        ("Apache", "[Sun Dec 04 04:47:44 2005] [error] mod_jk child workerEnv in error state 6", None, "error"),
        ("HPC", "134681 node-246 unix.hw state_change.unavailable 1077804742 1 Component State Change", "node-246", "info"),
        ("Hadoop", "2015-10-18 18:01:47,978 INFO [main] org.apache.Foo: Created x", "org.apache.Foo", "info"),
        ("HealthApp", "20171223-22:15:29:606|Step_LSC|30002312|onStandStepChanged 3579", "Step_LSC", "info"),
        ("Mac", "Jul  1 09:00:55 calvisitor-10 kernel[0]: Thunderbolt packet", "calvisitor-10", "info"),
        ("OpenStack", "nova-api.log.1 2017-05-16 00:00:00.008 25746 INFO nova.api [req-1 - - -] 10.11.10.1 GET", "nova.api", "info"),
        ("Proxifier", "[10.30 16:49:06] chrome.exe *64 - proxy.example.org:5070 open through proxy", "chrome.exe *64", "info"),
        ("Spark", "17/06/09 20:10:40 INFO spark.SecurityManager: Changing view acls to: yarn", "spark.SecurityManager", "info"),
        ("Thunderbird", "- 1131566461 2005.11.09 dn228 Nov 9 12:01:01 dn228/dn228 crond[2916]: (root) CMD", "dn228", "info"),
        ("Windows", "2016-09-28 04:30:30, Info                  CBS    Loaded Servicing Stack", "CBS", "info"),
        ("Zookeeper", "2015-07-29 17:41:44,747 - WARN  [QuorumPeer[myid=1]/0:0:0:0:0:0:0:0:2181:FastLeaderElection@774] - "
         "Notification time out: 3200", "FastLeaderElection", "warning"),
    ],
)  # fmt: skip
def test_every_builtin_loghub_pattern(
    tmp_path: Path, system: str, line: str, entity: str | None, level: str
) -> None:
    path = write(tmp_path, f"{system}.log", line + "\n")
    assert tuple(detect(path)) == ("loghub", system)
    (event,) = events(parse(path, options=FormatOptions(year=2005)))
    assert event["entity"] == entity and event["level"] == level
    assert event["ts"].year in (2004, 2005, 2015, 2016, 2017)


def test_all_sixteen_loghub_systems_are_built_in() -> None:
    assert set(LOGHUB_PATTERNS) == {
        "Android", "Apache", "BGL", "HDFS", "HPC", "Hadoop", "HealthApp", "Linux", "Mac", "OpenSSH",
        "OpenStack", "Proxifier", "Spark", "Thunderbird", "Windows", "Zookeeper",
    }  # fmt: skip


def test_loghub_custom_pattern_and_bad_lines(tmp_path: Path) -> None:
    text = "2024-03-01 10:00:00 [node7] ERROR disk: sector 12 unreadable\n2024-13-01 10:00:00 [node7] INFO x: y\nnope\n"
    opts = FormatOptions(format="loghub", pattern=r"<Date> <Time> \[<Node>\] <Level> <Component>: <Content>")
    records = parse(write(tmp_path, "app.log", text), options=opts)
    (event,) = events(records)
    assert event["ts"] == dt.datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert (event["entity"], event["level"], event["component"]) == ("node7", "error", "disk")
    assert event["message"] == "sector 12 unreadable"
    assert "impossible date/time" in reasons(records)[0]
    assert reasons(records)[1] == "line does not match the custom pattern"
    # The same pattern found by detection when given without format.
    assert detect(tmp_path / "app.log", FormatOptions(pattern=opts.pattern)) == Detection(
        "loghub", opts.pattern
    )


def test_loghub_month_13_in_hdfs_is_quarantined(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "HDFS_bad.log",
        "081110 101502 412 INFO dfs.DataNode: ok\n081310 101502 412 INFO dfs.DataNode: bad\n",
    )
    records = parse(path)
    assert records[0].kind == "event" and "impossible date/time" in reasons(records)[0]
