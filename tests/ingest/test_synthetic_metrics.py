"""Metric series of the synthetic generator: the default stays put; drift has the stated shape."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pytest

from loganomaly.ingest import synthetic
from loganomaly.ingest.synthetic import MetricDrift


def _read(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per host: its columns as arrays (minutes in time order), labels as strings."""
    rows: dict[str, list[dict[str, str]]] = {}
    with path.open() as fh:
        for r in csv.DictReader(fh):
            rows.setdefault(r["host"], []).append(r)
    return {
        h: {
            **{c: np.array([float(r[c]) for r in rs]) for c in ("cpu", "mem_used", "disk_io")},
            "label": np.array([r["label"] for r in rs]),
            "timestamp": np.array([r["timestamp"] for r in rs]),
        }
        for h, rs in rows.items()
    }


def test_the_default_series_are_the_bytes_they_were(tmp_path: Path) -> None:
    # Tests and the demo rely on these series; drift is opt-in and must not move them.
    d = synthetic.generate_metrics(tmp_path, hosts=2, days=1, anomalies=2, seed=7)
    assert hashlib.sha256(d.files[0].read_bytes()).hexdigest() == (
        "3207602fa57808c4d36513a7365b6981a0586afed49e92b3e58321b6773cdd40")
    assert d.level_shifts == []


def test_drift_keeps_the_noise_and_the_incidents(tmp_path: Path) -> None:
    plain = synthetic.generate_metrics(tmp_path / "a", hosts=2, days=2, anomalies=3, seed=4)
    drifted = synthetic.generate_metrics(tmp_path / "b", hosts=2, days=2, anomalies=3, seed=4, drift=MetricDrift())
    assert plain.anomalies == drifted.anomalies
    assert plain.labels_path.read_text() == drifted.labels_path.read_text()
    a, b = _read(plain.files[0]), _read(drifted.files[0])
    # Before any drift has accumulated (minute 0) the values agree.
    assert b[synthetic._host(0)]["disk_io"][0] == pytest.approx(a[synthetic._host(0)]["disk_io"][0], abs=0.1)


def test_level_shift_at_the_stated_place(tmp_path: Path) -> None:
    drift = MetricDrift(shift_at=(0.5,), shift_size=0.4, drift_per_day=0.0, season_amplitude=0.0)
    d = synthetic.generate_metrics(tmp_path, hosts=2, days=3, seed=1, drift=drift)
    t0 = dt.datetime(2024, 3, 4, tzinfo=dt.timezone.utc)
    # Host h shifts h hours after host 0, which shifts half way through the 4 320 minutes.
    assert d.level_shifts == [(synthetic._host(0), t0 + dt.timedelta(minutes=2160)),
                              (synthetic._host(1), t0 + dt.timedelta(minutes=2220))]
    series = _read(d.files[0])
    for host, at in ((synthetic._host(0), 2160), (synthetic._host(1), 2220)):
        disk = series[host]["disk_io"]
        # The same hour of the day, one day apart: only the shift differs (no drift, same cycle).
        before, after = disk[at - 1440 + 1: at - 1440 + 61].mean(), disk[at + 1: at + 61].mean()
        assert after / before == pytest.approx(1.4, rel=0.05)
        # The hour before the shift is still at the old level (against the same hour a day earlier).
        assert disk[at - 60:at].mean() / disk[at - 1500:at - 1440].mean() == pytest.approx(1.0, rel=0.05)


def test_memory_carries_a_daily_cycle_and_slow_drift(tmp_path: Path) -> None:
    drift = MetricDrift(shift_at=(0.99,), shift_size=0.0, drift_per_day=0.05, season_amplitude=0.1)
    d = synthetic.generate_metrics(tmp_path, hosts=1, days=4, seed=2, drift=drift)
    s = _read(d.files[0])[synthetic._host(0)]
    mem = s["mem_used"].reshape(4, 1440)
    hour = np.arange(1440) / 60
    afternoon, night = (hour >= 14) & (hour < 16), (hour >= 2) & (hour < 4)
    # _diurnal peaks at 15:00 (1.75) and bottoms at 03:00 (0.25): memory follows by +-7.5 %, so
    # about 1.075 / 0.925 = 1.16, times half a day of 5 %/day drift (1.025), give or take the
    # random walk memory already had (a few %). Without the cycle the ratio would be near 1.03.
    ratio = mem[:, afternoon].mean(axis=1) / mem[:, night].mean(axis=1)
    assert np.all(ratio > 1.12) and np.all(ratio < 1.26)
    # Slow drift: disk I/O's daily mean grows about 5 % a day (its cycle repeats exactly).
    disk = s["disk_io"].reshape(4, 1440).mean(axis=1)
    assert disk[3] / disk[0] == pytest.approx(1.15, rel=0.03)


def test_incidents_are_labelled_on_their_rows_and_in_the_interval_file(tmp_path: Path) -> None:
    d = synthetic.generate_metrics(tmp_path, hosts=3, days=2, anomalies=4, seed=3, drift=MetricDrift())
    series = _read(d.files[0])
    for a in d.anomalies:
        s = series[a.entity]
        inside = (s["timestamp"] >= a.start.isoformat().replace("+00:00", "Z")[:19]) & (
            s["timestamp"] < a.end.isoformat().replace("+00:00", "Z")[:19])
        assert inside.sum() == 20 and set(s["label"][inside]) == {"incident"}
        assert np.all(s["cpu"][inside] == 1.0) and np.all(s["disk_io"][inside] == 5.0)
    assert sum(int((s["label"] == "incident").sum()) for s in series.values()) == 20 * len(d.anomalies)
    with d.labels_path.open() as fh:
        assert len(list(csv.DictReader(fh))) == len(d.anomalies)


def test_bad_drift_is_refused() -> None:
    with pytest.raises(ValueError, match="shift_at"):
        MetricDrift(shift_at=(1.5,))
    with pytest.raises(ValueError, match="shift_size"):
        MetricDrift(shift_size=-1.0)
