#!/usr/bin/env bash
# The Debian packages the test suite reads or drives, installed when missing:
#   dataset-fashion-mnist  the real Fashion-MNIST IDX files (/usr/share/datasets/fashion-mnist)
#   chromium               a headless browser for the HTML report test
# As root with apt-get, they are installed; otherwise one line says what to install.
set -euo pipefail

need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing the Debian packages the tests need: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  if apt-get update -qq >"$log" 2>&1 &&
     apt-get install -y -qq "${need[@]}" >>"$log" 2>&1; then
    rm -f "$log"
    exit 0
  fi
  tail -n 20 "$log" >&2
  echo "apt-get could not install ${need[*]} (its output above)" >&2
  exit 2
fi
echo "the tests need the Debian packages ${need[*]}: run \`sudo apt-get install ${need[*]}\` (or run make as root), then make test again" >&2
exit 2
