"""The morning review in a real browser (PRODUCT §12): headless Chromium from the system's
packages, driven by Selenium through the system's chromedriver (installed by .ci/run,
never downloaded at test time), on the ledger and files of a real sandbox run.

The walk: every result is shown (each image rendered, each video decoded), one result is
approved and another rejected with a note using the keyboard, a third approved with the
mouse and withdrawn again; a reload shows them kept; `report --by verdict` and
`retry --rejected` agree exactly; a second run generates the rejected result again, saved
beside the first, and the open page picks it up as a new result to review.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import FAST, on_sandbox, write_manifest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Flags for a machine without a network: no background connections that would hang.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]
WAIT = 60  # seconds: generous deadlines for a busy machine, never a timed assertion


def _missing() -> str | None:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return "Chromium and chromedriver (Debian: chromium chromium-driver) are not installed"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


if _missing():
    if os.environ.get("CI"):  # CI installs them (.ci/run): missing there is a failure
        raise RuntimeError(_missing())
    pytest.skip(_missing() or "", allow_module_level=True)

# With -n and --dist loadgroup (the README's command), this module's tests run in one
# worker: the finished run they share (a module fixture) is made once, not in each worker.
pytestmark = pytest.mark.xdist_group("review_browser")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def newcomer_env() -> dict[str, str]:
    """No key and no BATCHGEN_* settings: the ledger and out/ in the working directory."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OKAYPIC_", "BATCHGEN_"))}


def batchgen(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        cwd=cwd,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A folder where `batchgen run manifests/quickstart.yaml --sandbox` has finished."""
    folder = tmp_path_factory.mktemp("morning")
    result = batchgen("run", str(ROOT / "manifests" / "quickstart.yaml"), "--sandbox", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


@contextmanager
def serving(folder: Path, *options: str) -> Iterator[str]:
    """`batchgen [OPTIONS] review --port 0` in `folder`: its URL, while it serves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", *options, "review", "--port", "0"],
        cwd=folder,
        env=newcomer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.fullmatch(r"review page: (http://127\.0\.0\.1:\d+/)\n", line)
    try:
        assert match, line
        yield match[1]
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
        assert "Traceback" not in err, err


@pytest.fixture
def review(finished_run) -> Iterator[str]:
    """`batchgen review` serving the finished run's folder: its URL."""
    with serving(finished_run) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="batchgen-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver: WebDriver, what: str, check: Callable[[WebDriver], Any]) -> Any:
    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check, f"waited for {what}")


def load(driver: WebDriver, url: str) -> None:
    driver.get(url)
    wait(driver, "the page's first data", lambda d: d.find_element(By.TAG_NAME, "body")
         .get_attribute("data-ready") == "1")  # fmt: skip


def press(driver: WebDriver, keys: str) -> None:
    ActionChains(driver).send_keys(keys).perform()


def current_key(driver: WebDriver) -> str:
    return driver.execute_script(
        "const c = document.querySelector('article.card.current'); return c && c.dataset.key"
    )


MEDIA_STATE = """
const card = document.querySelector(`article.card[data-key="${arguments[0]}"]`);
const media = card.querySelector('.media img, .media video');
if (!media) return null;
if (media.tagName === 'IMG') return {tag: 'img', ok: media.complete && media.naturalWidth > 0,
  width: media.naturalWidth, local: media.dataset.local, src: media.getAttribute('src')};
return {tag: 'video', ok: media.readyState >= 2 && media.videoWidth > 0 && !media.error,
  width: media.videoWidth, local: media.dataset.local, src: media.getAttribute('src')};
"""


def media_shown(driver: WebDriver, key: str) -> dict[str, Any]:
    """Wait until the card's image is rendered or its video has a decoded frame."""
    return wait(driver, f"{key}'s media", lambda d: (d.execute_script(MEDIA_STATE, key) or {})
                .get("ok") and d.execute_script(MEDIA_STATE, key))  # fmt: skip


def go_to(driver: WebDriver, key: str) -> None:
    """Move the current card to `key` with the keyboard (g, then j)."""
    press(driver, "g")
    for _ in range(40):
        if current_key(driver) == key:
            return
        press(driver, "j")
    raise AssertionError(f"j never reached {key}")


def verdict_of(driver: WebDriver, key: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f'article.card[data-key="{key}"]').get_attribute(
        "data-verdict"
    )


def note_of(driver: WebDriver, key: str) -> str:
    card = driver.find_element(By.CSS_SELECTOR, f'article.card[data-key="{key}"]')
    return card.find_element(By.CLASS_NAME, "note").text


def severe_logs(driver: WebDriver, origin: str | None = None) -> list[str]:
    """The browser's errors; with `origin`, leaving out media that failed to load from
    elsewhere (a result shown from the service's URL for the moment before its file is
    saved, whose service may be gone by now: the page marks it, the browser logs it)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE"
        and not (
            origin is not None
            and "Failed to load resource" in e["message"]
            and not e["message"].startswith(origin)
        )
    ]


def test_a_person_reviews_the_morning_results_and_regenerates_the_rejected_one(
    finished_run, review, browser
):
    folder = finished_run
    load(browser, review)
    keys = browser.execute_script(
        "return [...document.querySelectorAll('article.card')].map(c => c.dataset.key)"
    )
    assert sorted(keys) == sorted(
        f"quickstart/{job}"
        for job in ("cat-sleepy", "cat-curious", "cat-grumpy", "lighthouse", "poster", "dance")
    )

    # Every result, walked through with the keyboard: each image rendered, each video decoded.
    press(browser, "g")
    seen = {}
    for step, _ in enumerate(keys):
        key = current_key(browser)
        seen[key] = media_shown(browser, key)
        if step < len(keys) - 1:
            press(browser, "j")
    assert set(seen) == set(keys)
    assert seen["quickstart/poster"]["tag"] == "img"
    assert {state["tag"] for key, state in seen.items() if key != "quickstart/poster"} == {"video"}
    assert all(state["local"] == "1" and state["width"] > 0 for state in seen.values())

    # Approve one with `a`; reject another with `r` and a typed note (Enter saves it).
    go_to(browser, "quickstart/cat-curious")
    press(browser, "a")
    wait(browser, "the approval", lambda d: verdict_of(d, "quickstart/cat-curious") == "approved")
    go_to(browser, "quickstart/poster")
    press(browser, "r")
    note = browser.find_element(By.ID, "note-text")
    wait(browser, "the note box", lambda d: note.is_displayed())
    note.send_keys("the bicycle should be red")
    press(browser, "\n")
    wait(browser, "the rejection", lambda d: verdict_of(d, "quickstart/poster") == "rejected")
    # With the mouse: approve a third, then withdraw it with `u`.
    grumpy = browser.find_element(By.CSS_SELECTOR, 'article.card[data-key="quickstart/cat-grumpy"]')
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", grumpy)
    grumpy.find_element(By.CLASS_NAME, "approve").click()
    wait(browser, "the click", lambda d: verdict_of(d, "quickstart/cat-grumpy") == "approved")
    go_to(browser, "quickstart/cat-grumpy")
    press(browser, "u")
    wait(
        browser, "the withdrawal", lambda d: verdict_of(d, "quickstart/cat-grumpy") == "unreviewed"
    )

    # A reload shows them kept.
    browser.refresh()
    load(browser, review)
    verdicts = {key: verdict_of(browser, key) for key in keys}
    assert verdicts == {
        key: {"quickstart/cat-curious": "approved", "quickstart/poster": "rejected"}.get(
            key, "unreviewed"
        )
        for key in keys
    }
    assert note_of(browser, "quickstart/poster").endswith("the bicycle should be red")
    summary = browser.find_element(By.ID, "summary").text
    assert "1 approved · 1 rejected · 4 to review" in summary

    # The command line agrees exactly.
    report = batchgen("report", "--by", "verdict", "--format", "json", cwd=folder)
    assert report.returncode == 0, report.stderr
    groups = {g["key"]: g for g in json.loads(report.stdout)["groups"]}
    assert {k: (g["jobs"], g["spent_usd"]) for k, g in groups.items()} == {
        "approved": (1, "0.10"),
        "rejected": (1, "0.20"),
        "unreviewed": (4, "0.62"),
    }
    retry = batchgen("retry", "--rejected", cwd=folder)
    assert retry.returncode == 0 and retry.stdout.startswith("1 job(s) queued"), retry.stderr
    jobs = {j["id"]: j for j in json.loads(batchgen("status", "--json", cwd=folder).stdout)["jobs"]}
    assert {k: j["status"] for k, j in jobs.items() if j["status"] != "completed"} == {
        "poster": "queued"
    }
    assert jobs["cat-curious"]["verdict"] == "approved"

    # Generated again while the page is open: saved beside the rejected one, which stays,
    # and the page shows the new result, to review.
    first = (folder / "out" / "quickstart" / "poster.png").read_bytes()
    again = batchgen("run", str(ROOT / "manifests" / "quickstart.yaml"), "--sandbox", cwd=folder)
    assert again.returncode == 0, again.stderr
    second = (folder / "out" / "quickstart" / "poster~2.png").read_bytes()
    assert (folder / "out" / "quickstart" / "poster.png").read_bytes() == first
    assert second.startswith(b"\x89PNG") and second != first
    wait(browser, "the new result", lambda d: verdict_of(d, "quickstart/poster") == "unreviewed")
    wait(browser, "its saved file", lambda d: (d.execute_script(MEDIA_STATE, "quickstart/poster")
         or {}).get("local") == "1")  # fmt: skip
    state = media_shown(browser, "quickstart/poster")
    assert state["tag"] == "img" and state["src"] == "/files/quickstart/poster/0"
    report = batchgen("report", "--jobs", "--format", "json", cwd=folder)
    [poster] = [j for j in json.loads(report.stdout)["jobs"] if j["id"] == "poster"]
    assert [(a["state"], a["cost_usd"], a["verdict"]) for a in poster["attempts"]] == [
        ("completed", "0.20", "rejected"),
        ("completed", "0.20", None),
    ]
    assert severe_logs(browser, origin=review) == []


def test_a_result_not_saved_locally_is_shown_from_the_services_url_and_marked(
    make_sandbox, browser, tmp_path
):
    sandbox = make_sandbox(time_scale=0.01)  # still serving its result URLs
    manifest = write_manifest(
        tmp_path / "m.yaml",
        """
        version: 1
        campaign: unsaved
        jobs:
          - {id: clip, model: grok-video-3, duration: 5, ratio: "1:1", prompt: a clip}
          - {id: still, model: jimeng-5.0, prompt: a still}
        """,
    )
    ledger = tmp_path / "l.db"
    result = on_sandbox(sandbox, "run", str(manifest), "--no-download", *FAST, ledger=ledger)
    assert result.returncode == 0, result.stderr
    with serving(tmp_path, "--ledger", str(ledger)) as url:
        load(browser, url)
        for key in ("unsaved/clip", "unsaved/still"):
            state = media_shown(browser, key)
            assert state["local"] == "0" and state["src"].startswith(sandbox.base_url)
        marks = browser.execute_script(
            "return [...document.querySelectorAll('.media .remote')].map(e => e.textContent)"
        )
        assert marks == ["not saved locally: from the service's URL"] * 2


def test_a_large_ledger_is_shown_a_page_at_a_time_and_filtered_by_the_server(browser, tmp_path):
    from tests.test_report import complete, grok, make_ledger

    ledger = make_ledger(tmp_path / "l.db", [grok(f"clip-{i:03d}") for i in range(230)])
    complete(ledger, "clip-229", urls=[])  # the last job: the only completed one
    ledger.close()
    with serving(tmp_path, "--ledger", str(tmp_path / "l.db")) as url:
        load(browser, url)

        def cards(d: WebDriver) -> int:
            return int(d.execute_script("return document.querySelectorAll('article.card').length"))

        def more_shown(d: WebDriver) -> bool:
            return not d.find_element(By.ID, "more").get_attribute("hidden")

        assert cards(browser) == 200 and more_shown(browser)
        assert "230 jobs · 200 shown (more below)" in browser.find_element(By.ID, "summary").text
        browser.find_element(By.ID, "more-button").click()
        wait(browser, "the next page", lambda d: cards(d) == 230 and not more_shown(d))
        # A filter asks the server, over the whole ledger: the one completed job is found
        # even when only the first page was shown.
        browser.refresh()
        load(browser, url)
        Select(browser.find_element(By.ID, "f-status")).select_by_value("completed")
        wait(browser, "the filtered answer", lambda d: cards(d) == 1)
        key = browser.execute_script("return document.querySelector('article.card').dataset.key")
        assert key == "c/clip-229"
        Select(browser.find_element(By.ID, "f-status")).select_by_value("")
        browser.find_element(By.ID, "f-text").send_keys("CLIP-21")  # ids clip-210..219
        wait(browser, "the search's answer", lambda d: cards(d) == 10)
