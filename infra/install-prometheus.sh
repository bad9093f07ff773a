#!/bin/sh
# Prometheus for the tests of the shipped scrape config and dashboard
# (tests/integration/test_prometheus.py runs a real server; nothing is
# downloaded at test time). Installs Debian's `prometheus` (promtool included)
# when it is missing and we are root; otherwise says how, and exits 0 so
# `make test` goes on (those tests then skip, or fail where
# BRKCOIN_REQUIRE_PROMETHEUS=1). The package's own service is never started:
# the tests start their own server on a free port, and stop it.
set -u

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "install-prometheus: prometheus found at $(command -v prometheus)," \
        "promtool at $(command -v promtool)"
    exit 0
fi

how="install it with: sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-prometheus: no prometheus/promtool; the Prometheus tests will be skipped; $how"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-prometheus: no prometheus/promtool and no apt-get; install your distribution's prometheus package"
    exit 0
fi

# Debian's way to keep a package's postinst from starting its service: a
# policy-rc.d that answers 101 ("action forbidden"). Ours only if there is none.
policy=/usr/sbin/policy-rc.d
ours=""
trap 'if [ -n "$ours" ]; then rm -f "$policy"; fi' EXIT
trap 'exit 1' INT TERM HUP
if [ ! -e "$policy" ]; then
    ours=1
    printf '#!/bin/sh\n# install-prometheus.sh: no service starts during the install\nexit 101\n' >"$policy" \
        && chmod 755 "$policy"
fi
# A daemon already running (someone's own) is left alone; one the install starts is not.
before=$(pidof prometheus 2>/dev/null || true)

echo "install-prometheus: installing Debian's prometheus (apt-get)"
export DEBIAN_FRONTEND=noninteractive
# Recommends would add prometheus-node-exporter, a daemon the tests do not use.
get_prometheus() { apt-get install -y -q --no-install-recommends prometheus; }
if get_prometheus || { apt-get update -q && get_prometheus; }; then
    echo "install-prometheus: installed $(command -v prometheus) and $(command -v promtool)"
else
    echo "install-prometheus: apt-get could not install prometheus; the Prometheus tests will be skipped; $how"
fi

for pid in $(pidof prometheus 2>/dev/null || true); do
    case " $before " in
        *" $pid "*) continue ;;
    esac
    echo "install-prometheus: stopping the prometheus daemon the package started (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    tries=0
    while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 50 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
done
exit 0
