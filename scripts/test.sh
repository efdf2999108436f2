#!/usr/bin/env bash
# The test suite: set up (package, test extras, Chromium for the browser tests, espeak-ng for the
# speech tests), lint with ruff,
# then pytest in random order (pytest-randomly prints the seed; `-p no:randomly` turns it off),
# one test file per worker process, two workers (SELFMM_TEST_WORKERS; 0 runs in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # The HTML report is rendered in headless Chromium by one test; it skips without it.
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed; its test will skip"
fi
if ! command -v espeak-ng >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # The speech tests hear sentences spoken by espeak-ng; they skip without it.
    (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) || echo "espeak-ng not installed; the speech tests will skip"
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1
python -m ruff check src tests benchmarks examples
python -m pytest -n "${SELFMM_TEST_WORKERS:-2}" --dist loadfile "$@"
