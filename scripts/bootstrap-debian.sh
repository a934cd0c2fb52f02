#!/usr/bin/env bash
# Install the Debian packages listed in scripts/debian-packages.txt, when we are root on Debian.
# Idempotent: when everything is present, apt is not touched.
set -euo pipefail
cd "$(dirname "$0")"

mapfile -t packages < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/[[:space:]]//g' debian-packages.txt)

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
# Packages such as nginx, haproxy, slapd and postgresql start a system service on
# install; the tests start their own instances on free ports, so forbid that.
policy=/usr/sbin/policy-rc.d
added_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && added_policy=1
fi
trap '[ -n "$added_policy" ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
