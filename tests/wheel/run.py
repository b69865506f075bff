"""Installs the wheel from ``make wheel`` into a fresh virtual environment in a temporary
directory (``pip --no-index``: the wheel has no dependencies, so no network) and runs
``smoke.py`` there, from outside the source tree. Run by ``make test-wheel``.

Usage: run.py WHEEL_DIR [PYTHON...]: one fresh environment per interpreter given (default:
the one running this), e.g. the oldest and newest CPython the abi3 wheel claims.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

#: Seconds any one step may take before the test fails instead of hanging.
STEP_TIMEOUT = 300


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, timeout=STEP_TIMEOUT)


def main() -> None:
    wheels = sorted(Path(sys.argv[1]).glob("background_dispatcher-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected exactly one wheel in {sys.argv[1]}, found {[w.name for w in wheels]}")
    wheel = wheels[0].resolve()
    tags = wheel.stem.split("-")[-3:]
    print(f"wheel {wheel.name} ({wheel.stat().st_size // 1024} KiB), tags {'-'.join(tags)}")
    if tags[1] != "abi3":
        sys.exit(f"not an abi3 wheel: {wheel.name}")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        "background_dispatcher/__init__.py",
        "background_dispatcher/logging.py",
        "background_dispatcher/py.typed",
        "background_dispatcher/_background_dispatcher.pyi",
        "background_dispatcher/_background_dispatcher.abi3.so",
    }
    if missing := wanted - names:
        sys.exit(f"the wheel lacks {sorted(missing)}")
    print(f"wheel holds {len(names)} files, including {', '.join(sorted(wanted))}")

    interpreters = sys.argv[2:] or [sys.executable]
    for interpreter in interpreters:
        smoke(wheel, interpreter)
    print(f"wheel smoke passed under {len(interpreters)} interpreter(s): {' '.join(interpreters)}")


def smoke(wheel: Path, interpreter: str) -> None:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bd-wheel-") as tmp:
        root = Path(tmp)
        run([interpreter, "-m", "venv", str(root / "venv")], root)
        python = root / "venv" / "bin" / "python"
        run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--disable-pip-version-check", str(wheel)],
            root,
        )
        version = subprocess.run(
            [str(python), "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            check=True,
            timeout=STEP_TIMEOUT,
        ).stdout.strip()
        took = time.monotonic() - start
        print(f"installed into a fresh Python {version} virtual environment in {took:.1f} s; smoke test:", flush=True)
        # Run from the temporary directory: nothing of the source tree is on sys.path.
        run([str(python), "-I", str(Path(__file__).with_name("smoke.py").resolve())], root)


if __name__ == "__main__":
    main()
