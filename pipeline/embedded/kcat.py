"""Run Debian's kcat against the embedded broker.

Debian 12's kcat links librdkafka 2.0.2, which cannot parse the Tansu broker's
ApiVersions v3 reply ("Protocol read buffer underflow for ApiVersion v3 at 274/279").
librdkafka keeps its ABI within ``librdkafka.so.1``, and the ``confluent-kafka`` wheel
bundles a current build (2.16) of it, so `llmpipe kcat ARGS` runs the same kcat binary
with that library first on LD_LIBRARY_PATH. Against Apache Kafka plain kcat is fine.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path


def bundled_librdkafka() -> Path | None:
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is None or not spec.origin:
        return None
    libs = Path(spec.origin).resolve().parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka-*.so.1"))
    return found[0] if found else None


def kcat_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes kcat load the bundled librdkafka (unchanged if none)."""
    env = dict(os.environ if env is None else env)
    lib = bundled_librdkafka()
    if lib is None:
        return env
    link_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmpipe" / lib.stem
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "librdkafka.so.1"
    if not link.exists():
        tmp = link_dir / f".{os.getpid()}.so.1"
        tmp.symlink_to(lib)
        os.replace(tmp, link)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(link_dir), env.get("LD_LIBRARY_PATH")]))
    return env


def main(argv: list[str]) -> int:
    binary = shutil.which("kcat")
    if binary is None:
        print("kcat is not installed (Debian: apt-get install kcat)", file=sys.stderr)
        return 127
    return subprocess.run([binary, *argv], env=kcat_env()).returncode
