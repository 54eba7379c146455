"""The built wheel works outside the checkout: `gateway --version`, `gateway init DIR` and `gateway demo`.

The wheel is built from a copy of the sources (`pip wheel --no-deps`, so the checkout gets no build/ or
egg-info), installed into an empty venv (`pip install --no-deps --no-index`). The venv reaches the
dependencies through one `.pth` line naming the project venv's site-packages: offline, in seconds, and a
plain path entry (not a site dir), so the project's editable install is not loaded: `import gateway` is
the wheel's, which the test checks.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest
from processes import free_port

ROOT = Path(__file__).resolve().parent.parent


def build_and_install(scratch: Path) -> Path:
    """The venv's bin directory, with the wheel of the current sources installed."""
    source = scratch / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "gateway", source / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    dist = scratch / "dist"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(dist), str(source)], check=True, capture_output=True)
    (wheel,) = dist.glob("smsguard-*.whl")
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "smsguard-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    return venv / "bin"


@pytest.mark.slow
def test_installed_wheel_runs_init_and_demo_outside_the_checkout(tmp_path: Path) -> None:
    """From the installed wheel, in an empty folder: --version, init (valid files, $schema resolving), demo."""
    bin_dir = build_and_install(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=elsewhere, capture_output=True, text=True, timeout=60)

    where = run(str(bin_dir / "python"), "-c", "import gateway; print(gateway.__file__)").stdout
    assert where.startswith(str(tmp_path / "venv")), where
    assert run(str(bin_dir / "gateway"), "--version").stdout.startswith("gateway (smsguard) ")

    assert run(str(bin_dir / "gateway"), "init", "starter").returncode == 0
    config = elsewhere / "starter" / "config.yaml"
    schema = config.read_text().splitlines()[0].removeprefix("# yaml-language-server: $schema=file://")
    assert Path(schema).is_file()
    assert Path(schema).is_relative_to(tmp_path / "venv")
    checked = run(str(bin_dir / "gateway"), "policy", "validate", "--strict", "--no-secrets", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    port = free_port()
    output = tmp_path / "demo.log"
    with output.open("wb") as sink:
        demo = subprocess.Popen(
            [str(bin_dir / "gateway"), "demo", "--port", str(port)],
            cwd=elsewhere,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert demo.poll() is None, output.read_text()
                assert time.monotonic() < deadline, "the demo did not start"
                time.sleep(0.2)
        assert ready.status_code == 200, ready.text
        token = httpx.post(
            f"http://127.0.0.1:{port}/3rdparty/v1/auth/token",
            auth=("ops", "smsguard-demo"),
            json={"scopes": ["messages:send"]},
        )
        assert token.status_code == 201
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=20)
    loaded = [line for line in output.read_text().splitlines() if '"policy.loaded"' in line]
    assert loaded, output.read_text()
    assert str(tmp_path / "venv") in loaded[0]  # the package's own config (/readyz shows files to admins only)
