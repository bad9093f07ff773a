#!/bin/sh
# Chromium for the web UI's browser tests (Playwright drives the system browser;
# nothing is downloaded at test time). Installs Debian's `chromium` when it is
# missing and we are root; otherwise says how, and exits 0 so `make test` goes
# on (the browser tests then skip, or fail where BRKCOIN_REQUIRE_BROWSER=1).
set -u

for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        echo "install-browser: $name found at $(command -v "$name")"
        exit 0
    fi
done

how="install it with: sudo apt-get update && sudo apt-get install -y chromium"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-browser: no Chromium; the browser tests will be skipped; $how"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no Chromium and no apt-get; install your distribution's chromium package"
    exit 0
fi

echo "install-browser: installing Debian's chromium (apt-get)"
export DEBIAN_FRONTEND=noninteractive
if apt-get update -q && apt-get install -y -q chromium; then
    echo "install-browser: installed $(command -v chromium)"
else
    echo "install-browser: apt-get could not install chromium; the browser tests will be skipped; $how"
fi
exit 0
