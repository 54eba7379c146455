"""The policy studio in headless Chromium: edit, matrix, simulate, review, save, conflict, screenshot.

One studio (`gateway policy studio --config`, a real subprocess), one gateway serving the same files
(`gateway serve`, watching them) and one browser are shared by the module; the tests run in file order
and each starts from what the previous one left. Chromium and chromedriver are Debian's (`make browser`
installs them); selenium drives them without downloading anything.

The screenshot in docs/ (README's "Policy studio" section) is taken by `test_screenshot_for_the_readme` on
every run and never compared, so pixels that differ cannot fail the suite. It is written to docs/ when
missing or with `SMSGUARD_UPDATE_GOLDEN=1` (as the golden files are), else beside the test's temporary
files: Chromium's anti-aliasing varies by a few bytes between runs, which must not leave a dirty tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatewayconfig import SENDER_PASSWORD, GatewayConfig
from processes import free_port, gateway_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "policy-studio.png"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LOGS_RULE = "{method: GET, path: /logs, scope: logs:read}"

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402


@dataclass
class Setup:
    directory: Path
    policy: Path
    studio_url: str
    gateway_url: str
    driver: WebDriver

    def wait(self, what: str, found: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = found()
            except Exception:  # the element is not there yet, or was replaced while read
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def css(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def select_in_editor(self, fragment: str) -> None:
        """Select `fragment` (its first occurrence) in the editor, as a user would before typing over it."""
        self.driver.execute_script(
            "const e = document.getElementById('editor'); const at = e.value.indexOf(arguments[0]);"
            "if (at < 0) throw new Error('not in the editor: ' + arguments[0]);"
            "e.focus(); e.setSelectionRange(at, at + arguments[0].length);",
            fragment,
        )

    def line_of(self, fragment: str) -> int:
        text = self.css("#editor").get_property("value")
        return next(n for n, line in enumerate(str(text).splitlines(), 1) if fragment in line)

    def tab(self, name: str) -> None:
        self.css(f"#tabs button[data-panel={name}]").click()

    def gateway_status(self, path: str) -> int:
        return httpx.get(self.gateway_url + path, auth=("sender", SENDER_PASSWORD), timeout=5).status_code


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(
            "Chromium and chromedriver are missing: `make browser` installs Debian's chromium and chromium-driver"
        )
    directory = tmp_path_factory.mktemp("studio")
    (directory / "policies" / "tests").mkdir(parents=True)
    policy = directory / "policies" / "smsgate.yaml"
    shutil.copy(ROOT / "policies" / "smsgate.yaml", policy)
    shutil.copy(ROOT / "policies" / "tests" / "smsgate.yaml", directory / "policies" / "tests" / "smsgate.yaml")
    # the upstream refuses connections: a request the gateway allows is 502, one it refuses is 403
    config = GatewayConfig(
        directory, f"http://127.0.0.1:{free_port()}/3rdparty/v1", policy=policy, extra="reload: {debounce_ms: 50}\n"
    )
    config_path = config.write()
    with gateway_process(config_path, config.env) as gateway, _studio(directory, config_path, config.env) as url:
        driver = _chromium()
        try:
            driver.get(url)
            found = Setup(directory, policy, url, gateway.url, driver)
            found.wait("the page to load", lambda: found.css("body").get_attribute("data-ready") == "true")
            yield found
        finally:
            driver.quit()


class _studio:
    """`gateway policy studio --config C --port 0` as a subprocess; the URL with its secret, from its output."""

    def __init__(self, directory: Path, config: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "policy", "studio", "--config", str(config), "--port", "0"],
            cwd=directory,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def __enter__(self) -> str:
        assert self.process.stdout is not None
        for _ in range(5):
            line = self.process.stdout.readline()
            if line.startswith("open http://127.0.0.1:"):
                return line.split()[1]
        self.process.kill()
        raise AssertionError(f"the studio did not print its URL: {self.process.stdout.read()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def _chromium() -> WebDriver:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,900",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_the_page_runs_under_its_csp_without_console_errors(setup: Setup) -> None:
    """The page loaded (its script ran under the strict CSP) and the browser logged no error."""
    assert setup.css("#status").text.startswith("valid")
    errors = [entry for entry in setup.driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert setup.css("#files button.active").text == "policies/smsgate.yaml"


def test_an_error_appears_at_its_line_and_the_fix_updates_the_matrix(setup: Setup) -> None:
    """Typing a misspelt scope marks its line with the loader's message and hint; fixing it updates the matrix."""
    line = setup.line_of(LOGS_RULE)
    setup.select_in_editor("scope: logs:read}")
    setup.css("#editor").send_keys("scope: logs:raed}")
    marked = setup.wait("the error at its line", lambda: setup.all(f"#gutter div.error[data-line='{line}']"))
    assert marked[0].text == str(line)
    finding = setup.css(f"#diagnostics li.error[data-line='{line}']")
    assert "scope 'logs:raed' is not in the vocabulary" in finding.text
    assert "did you mean 'logs:read'?" in finding.text
    assert setup.css("#status").text.startswith("1 error")
    assert not setup.css("#matrix-note").get_attribute("hidden")  # the matrix is marked as the last good one

    cell = "#matrix td.cell[data-path='/3rdparty/v1/logs'][data-scope='messages:read']"
    assert "no" in setup.css(cell).get_attribute("class")
    setup.select_in_editor("scope: logs:raed}")
    setup.css("#editor").send_keys("scope: messages:read}")
    setup.wait("the matrix to grant /logs to messages:read", lambda: "yes" in setup.css(cell).get_attribute("class"))
    assert not setup.all(f"#gutter div.error[data-line='{line}']")
    setup.css(cell).click()
    detail = setup.css("#cell").text
    assert "a caller holding only messages:read may call it" in detail
    assert f"policies/smsgate.yaml:{line}" in detail
    setup.css("#cell-rule a").click()  # the rule's link selects its line in the editor
    selected = setup.driver.execute_script(
        "const e = document.getElementById('editor'); return e.value.slice(e.selectionStart, e.selectionEnd);"
    )
    assert "path: /logs" in selected


def test_simulate_an_allowed_and_a_refused_request(setup: Setup) -> None:
    """Same Authorizer as the gateway: messages:read may now read the logs (exact upstream URL), logs:read not."""
    setup.tab("simulate")
    setup.css("#sim-path").clear()
    setup.css("#sim-path").send_keys("/3rdparty/v1/logs?limit=5")
    setup.css("#sim-scopes input[value='messages:read']").click()
    setup.css("#sim-run").click()
    verdict = setup.wait("the decision", lambda: setup.css("#sim-verdict"))
    assert verdict.text == "ALLOW"
    result = setup.css("#sim-result").text
    assert "forwards to" in result
    assert "/3rdparty/v1/logs?limit=5" in result
    assert "ALLOW GET /3rdparty/v1/logs?limit=5" in result  # what `gateway policy check` prints

    setup.css("#sim-scopes input[value='messages:read']").click()
    setup.css("#sim-scopes input[value='logs:read']").click()
    setup.css("#sim-run").click()
    setup.wait("the refusal", lambda: setup.css("#sim-verdict").text == "DENY 403 insufficient_scope")
    assert "insufficient scope: messages:read required" in setup.css("#sim-result").text


def test_review_then_save_and_the_running_gateway_serves_it(setup: Setup) -> None:
    """Save is enabled only after the review (diff and policy tests); the file is replaced atomically, the
    previous version kept, and the gateway watching it now lets messages:read read the logs."""
    assert setup.gateway_status("/3rdparty/v1/logs") == 403
    setup.tab("review")
    assert setup.css("#save").get_attribute("disabled") is not None
    setup.css("#review-run").click()
    diff = setup.wait("the access diff", lambda: setup.css("#diff").text)
    assert "~ GET /3rdparty/v1/logs  logs:read → messages:read" in diff
    tests = setup.css("#tests").text
    assert "policies/tests/smsgate.yaml:" in tests
    assert "3 failed" in tests
    before = setup.policy.read_text()
    inode = setup.policy.stat().st_ino
    save = setup.css("#save")
    assert save.get_attribute("disabled") is None
    save.click()
    setup.wait("the save", lambda: setup.css("#save-verdict").text == "saved")
    assert "scope: messages:read}" in setup.policy.read_text()
    assert setup.policy.stat().st_ino != inode
    assert Path(str(setup.policy) + ".prev").read_text() == before
    assert sorted(p.name for p in setup.policy.parent.iterdir()) == ["smsgate.yaml", "smsgate.yaml.prev", "tests"]
    setup.wait("the gateway to reload", lambda: setup.gateway_status("/3rdparty/v1/logs") == 502)
    assert setup.css("#save").get_attribute("disabled") is not None  # nothing left to save


def test_a_conflicting_edit_on_disk_is_reported(setup: Setup) -> None:
    """A file changed on disk after it was opened is never overwritten: the conflict is shown, the disk kept."""
    theirs = setup.policy.read_text() + "# edited by someone else\n"
    setup.policy.write_text(theirs)
    setup.select_in_editor("path: /logs, scope: messages:read}")
    setup.css("#editor").send_keys("path: /logs, scope: logs:read}")
    setup.wait("validation", lambda: setup.css("#status").text.startswith("valid"))
    setup.css("#review-run").click()
    setup.wait("the review", lambda: setup.css("#save").get_attribute("disabled") is None)
    setup.css("#save").click()
    conflict = "conflict: nothing was overwritten"
    setup.wait("the conflict", lambda: setup.css("#save-verdict").text == conflict)
    assert "changed on disk since it was opened" in setup.css("#save-result").text
    assert "# edited by someone else" in setup.css("#save-result pre").text
    assert setup.policy.read_text() == theirs


def test_screenshot_for_the_readme(setup: Setup, tmp_path: Path) -> None:
    """docs/policy-studio.png: an error at its line, the matrix filtered to one scope, a cell's rule."""
    setup.css("#conflict-reload").click()
    setup.wait("the disk version", lambda: "# edited by someone else" in setup.css("#editor").get_property("value"))
    setup.select_in_editor("scope: messages:list}")
    setup.css("#editor").send_keys("scope: mesages:list}")
    setup.wait("the error", lambda: setup.all("#gutter div.error"))
    setup.tab("matrix")
    setup.css("#filter-route").send_keys("/messages")
    cell = "#matrix td.cell[data-method='POST'][data-path='/3rdparty/v1/messages'][data-scope='messages:send']"
    setup.css(cell).click()
    setup.wait("the cell's rule", lambda: "rule" in setup.css("#cell").text)
    setup.driver.execute_script("document.activeElement.blur(); document.getElementById('editor').scrollTop = 300;")
    time.sleep(0.2)
    png = setup.driver.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG")
    target = (
        SCREENSHOT if os.environ.get("SMSGUARD_UPDATE_GOLDEN") or not SCREENSHOT.exists() else tmp_path / "shot.png"
    )
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(png)
