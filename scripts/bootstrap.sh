#!/usr/bin/env bash
# Shared by scripts/demo, scripts/check and the images in docker/: Debian packages (only those
# missing) and a virtual environment in .venv with visionflow installed.
#   bootstrap.sh runtime   python3 + venv, visionflow with its runtime dependencies
#   bootstrap.sh gpu       runtime + the `gpu` extra and the NVIDIA stack pinned in
#                          scripts/gpu-requirements.txt (torch, DALI, PyNvVideoCodec, TensorRT)
#   bootstrap.sh dev       + redis-server, gst-rtsp-server for /usr/bin/python3, chromium (the
#                          dashboard's browser test), test tools
# Runs as root (a container build: no sudo needed or used) or as a user with sudo.
# PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-runtime}
case "$mode" in runtime|gpu|dev) ;; *) echo "usage: $0 runtime|gpu|dev" >&2; exit 2 ;; esac
python=${PYTHON:-python3}

# An interpreter that dpkg does not own and that can make virtual environments (the official
# python images' /usr/local/bin/python3) needs no Debian python packages.
python_ready() {
  local exe
  exe=$(command -v "$python" 2>/dev/null) || return 1
  ! dpkg -S "$(readlink -f "$exe")" >/dev/null 2>&1 && "$python" -m ensurepip --version >/dev/null 2>&1
}
packages=()
python_ready || packages+=(python3 python3-venv python3-pip)
if [ "$mode" = dev ]; then
  packages+=(redis-server chromium python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
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
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
case "$mode" in
  dev) .venv/bin/python -m pip install -q -e '.[dev]' ;;
  gpu) .venv/bin/python -m pip install -q '.[gpu]' -r scripts/gpu-requirements.txt ;;
  runtime) .venv/bin/python -m pip install -q . ;;
esac
