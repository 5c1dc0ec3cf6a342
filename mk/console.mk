# Informaticist console (docs/console.md). Included by the Makefile; uses its VENV, STAMP and system-deps.
#   make screenshots     regenerate docs/screenshots/console-*.png with the browser tests' tooling
#                        (real headless Chromium, a live server, synthetic feedback history)
#   make console-test    only the console's tests (Flask-level, analytics on SQLite + PostgreSQL, browser)

SCREENSHOTS_DIR ?= docs/screenshots
# Fonts so the screenshots show the cards' ✅ ❌ ❔ glyphs as a clinician's browser does.
CONSOLE_SCREENSHOT_PACKAGES ?= fonts-noto-color-emoji fonts-dejavu-core

.PHONY: screenshots screenshot-deps console-test

screenshot-deps:
	$(call apt-install,$(CONSOLE_SCREENSHOT_PACKAGES))

## screenshots: regenerate docs/screenshots/*.png with real headless Chromium
screenshots: $(STAMP) system-deps screenshot-deps
	CONSOLE_SCREENSHOTS_DIR=$(abspath $(SCREENSHOTS_DIR)) $(VENV)/bin/pytest -q -p no:cacheprovider \
	  tests/console/test_console_browser.py -k test_screenshots
	@ls -l $(SCREENSHOTS_DIR)/console-*.png

## console-test: only the console tests (Flask-level, SQLite + PostgreSQL, browser)
console-test: $(STAMP) system-deps
	$(VENV)/bin/pytest -q tests/console
