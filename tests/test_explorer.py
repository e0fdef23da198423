"""The market explorer in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by selenium with the system chromedriver: nothing is downloaded): served by the gateway on
the shared devnet (tests/test_gateway.py), it loads without console errors, shows the devnet's
providers and a job that was just run, and shows the next job without a reload.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.test_gateway import QUESTION, shared_market

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.xdist_group("gateway"),  # beside the gateway tests: two gateway devnets never overlap
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def market(request):
    return shared_market(request.config)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="explorer-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,1800", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium skips Selenium Manager (which would try to download one)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# The page re-renders on every poll, so element handles go stale: read its state in one script turn.
PAGE_STATE = """
const rows = (sel, key) => Object.fromEntries([...document.querySelectorAll(sel)]
    .map((tr) => [tr.getAttribute(key), tr.innerText]));
return {
  models: rows('#models tbody tr[data-model]', 'data-model'),
  providers: rows('#providers tbody tr[data-address]', 'data-address'),
  jobs: rows('#jobs tbody tr[data-job-id]', 'data-job-id'),
  dots: document.querySelectorAll('#chart-latency circle.dot').length,
  bars: document.querySelectorAll('#chart-jobs rect.bar').length,
  spent: document.getElementById('stat-spent').innerText,
  status: document.getElementById('status').innerText,
};
"""


def state(driver) -> dict:
    return driver.execute_script(PAGE_STATE)


def ask(market, content: str) -> dict:
    r = market.client().chat.completions.create(model=market.model, max_tokens=8,
                                                messages=[{"role": "user", "content": content}])
    return r.model_extra["meshmarket"]


def test_explorer_shows_the_devnets_providers_and_jobs_live(market, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    first = ask(market, QUESTION[0]["content"])
    browser.get(market.gateway.url + "/")
    wait = WebDriverWait(browser, 30, poll_frequency=0.2)
    wait.until(lambda d: first["job_id"] in state(d)["jobs"])
    page = state(browser)

    assert list(page["models"]) == [market.model]
    # the devnet's four providers, each with its price, stake and build as the chain and manifests say
    addresses = {p["address"]: p for p in market.record["providers"]}
    assert set(page["providers"]) == set(addresses)
    for address, row in page["providers"].items():
        assert "0.00001 MESH" in row and "100 MESH" in row and "fp_" in row, row
    # the job just run: its agreement, outcome and payments as the receipt says (a contested job may
    # have moved on since: the cheater disputes its loss)
    job = page["jobs"][first["job_id"]]
    assert first["agreement"] in job
    later = {"agreed": ("agreed",), "contested": ("contested", "disputed", "provisional", "judged")}
    assert any(f"\t{o}\t" in job for o in later[first["outcome"]]), job
    if first["outcome"] == "agreed":
        paid = f"0.{first['paid']:06d}".rstrip("0") + " MESH"
        assert paid in job, (paid, job)
    # the charts: a dot per provider this gateway has seen answer, a bar for this minute
    assert page["dots"] >= 2 and page["bars"] >= 1
    assert page["status"].startswith("live")

    # live: a job run now appears without a reload
    second = ask(market, "Name a planet.")
    wait.until(lambda d: second["job_id"] in state(d)["jobs"])

    # amounts are exact beyond 2^53 (digit strings), and a float is refused rather than rounded
    assert browser.execute_script("return formatAmount('18446744073709551615')") == "18,446,744,073,709.551615 MESH"
    assert browser.execute_script("return formatAmount(10)") == "0.00001 MESH"
    assert browser.execute_script("return formatAmount(0.1)") == "?"

    browser.save_screenshot(str(tmp_path / "explorer.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors
