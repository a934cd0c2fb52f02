#!/usr/bin/env bash
# Install the Debian packages hakit's demo and tests use, when we are root on Debian.
# Idempotent: packages already present are skipped without touching apt.
set -euo pipefail

packages=(python3 python3-venv python3-dev gcc procps iproute2 curl sqlite3 postgresql)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "bootstrap: not root on Debian; please install: ${missing[*]}" >&2
  exit 0
fi
echo "bootstrap: apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
