"""Issue 17 item 2: the console's analytics page charts the alert burden (shown, silent, suppressed)
per topic, in a real headless Chromium."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from cds_service.store import ServedCard

from .conftest import fixtures_dir_for_e2e, start_live_server, stop_live_server
from .test_console_browser import open_page


def test_analytics_page_charts_the_alert_burden(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> None:
    live = start_live_server(tmp_path_factory.mktemp("console-burden"), fixtures_dir_for_e2e())
    try:
        now = datetime.now(UTC)
        cards = [ServedCard(f"c{i}", "lbp-patient-view", "patient-view", f"hi-{i}", "axspa-referral", "info", (),
                            disposition=disposition)
                 for i, disposition in enumerate(["shown", "silent", "silent", "silent", "suppressed"])]
        live.store.record_served(cards, "p1", now)
        open_page(browser, live, "/console/analytics")
        row = browser.find_element(By.CSS_SELECTOR, '#burden-chart .burden-row[data-topic="axspa-referral"]')
        assert len(row.find_elements(By.CSS_SELECTOR, "rect.bar-shown")) == 1
        assert len(row.find_elements(By.CSS_SELECTOR, "rect.bar-silent")) == 1
        assert len(row.find_elements(By.CSS_SELECTOR, "rect.bar-suppressed")) == 1
        assert "1 shown · 3 silent · 1 suppressed" in row.text
        table_row = browser.find_element(By.CSS_SELECTOR, '#topic-table tr[data-topic="axspa-referral"]')
        assert table_row.find_element(By.CSS_SELECTOR, "td.silent").text == "3"
        assert table_row.find_element(By.CSS_SELECTOR, "td.suppressed").text == "1"
    finally:
        stop_live_server(live)
