# Sourced by scripts/test: installs (when missing) Debian's chromium, the real
# browser the HTML report's test opens headless (crates/bluegreen-cli/tests/html_report.rs).
# Exports:
#   BLUEGREEN_TEST_CHROMIUM   the chromium binary
# Nothing keeps running: each test starts chromium --headless and it exits.
# Measured on a Debian 12 runner: about 24 s to install (25 packages with
# --no-install-recommends) and about 350 MB of disk.

if ! command -v chromium >/dev/null 2>&1; then
  echo "scripts/test: installing Debian's chromium package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
BLUEGREEN_TEST_CHROMIUM=$(command -v chromium)
export BLUEGREEN_TEST_CHROMIUM
echo "scripts/test: chromium at $BLUEGREEN_TEST_CHROMIUM"
