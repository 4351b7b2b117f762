#!/usr/bin/env bash
# The README's test command: `bash scripts/test.sh [pytest args]`. On a fresh Debian machine it
# installs what the tests need, then runs them:
#   - uv (python3 -m pip install uv) and the locked dependencies with the dev group (uv sync);
#   - the Debian packages the tests drive: chromium (status page), wrk and nghttp2-client's
#     h2load (bench smoke), redis-server (shared quotas, fleet view) and haproxy (the balancer
#     in front of several replicas), with apt-get (through sudo when not root).
# Quiet when everything is there. A package that cannot be installed (no apt, no network) is
# named with the command that installs it, and the tests that need it are skipped with that
# reason (tests/conftest.py reads OTLP_GATEWAY_TESTS_MISSING); under CI it is an error instead.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "scripts/test.sh: $*" >&2; }

# uv: on PATH, else the module pip installed (pip may put the `uv` script off PATH)
if ! command -v uv >/dev/null 2>&1 && ! python3 -m uv --version >/dev/null 2>&1; then
  python3 -m pip install --quiet uv || {
    say "cannot install uv; install it with: python3 -m pip install uv"
    exit 1
  }
fi
if command -v uv >/dev/null 2>&1; then uv=(uv); else uv=(python3 -m uv); fi
"${uv[@]}" sync --frozen --quiet

# Debian package -> the program the tests run (Chromium where tests/support/browser.py looks)
declare -A tool=([chromium]=chromium [wrk]=wrk [nghttp2-client]=h2load [redis-server]=redis-server
  [haproxy]=haproxy)
packages=(chromium wrk nghttp2-client redis-server haproxy)
present() {
  if [[ $1 == chromium ]]; then [[ -x ${CHROMIUM:-/usr/bin/chromium} ]]; else
    command -v "${tool[$1]}" >/dev/null 2>&1; fi
}
absent() { for pkg in "${packages[@]}"; do present "$pkg" || echo "$pkg"; done; }

mapfile -t need < <(absent)
if ((${#need[@]})) && command -v apt-get >/dev/null 2>&1; then
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  log=$(mktemp)
  say "installing ${need[*]} (apt-get)"
  "${sudo[@]}" apt-get update -qq >"$log" 2>&1 || true  # an install that fails says why
  # one at a time, so that a package that cannot be had does not hold back the others
  for pkg in "${need[@]}"; do
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$pkg" >"$log" 2>&1 \
      || { say "apt-get install $pkg failed:"; tail -n 3 "$log" >&2; }
  done
  rm -f "$log"
  mapfile -t need < <(absent)
fi

if ((${#need[@]})); then
  missing=()
  for pkg in "${need[@]}"; do missing+=("${tool[$pkg]}"); done
  say "not installed: ${missing[*]}; install with: sudo apt-get install -y ${need[*]}"
  if [[ -n ${CI:-} ]]; then
    exit 1  # CI runs every test: nothing may be skipped there
  fi
  say "the tests that need ${missing[*]} are skipped"
  export OTLP_GATEWAY_TESTS_MISSING="${missing[*]}"
fi

exec "${uv[@]}" run --frozen pytest "$@"
