#!/usr/bin/env bash
# Shared by scripts/demo and scripts/check: Debian packages (only those missing) and a
# virtual environment in .venv with visionflow installed.
#   bootstrap.sh runtime   python3 + venv, visionflow with its runtime dependencies
#   bootstrap.sh dev       + redis-server, gst-rtsp-server for /usr/bin/python3, test tools
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-runtime}
packages=(python3 python3-venv python3-pip)
if [ "$mode" = dev ]; then
  packages+=(redis-server python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
             gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad)
fi
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
if [ "$mode" = dev ]; then
  .venv/bin/python -m pip install -q -e '.[dev]'
else
  .venv/bin/python -m pip install -q .
fi
