#!/usr/bin/env bash
# Create rclip's own virtual environment under data/rclip-venv/ (kept apart from clipdex's .venv, so
# neither tool's pins touch the other's) and install rclip 3.3.0 from PyPI into it.
# Usage: bash bench/rclip_env.sh   (from the repository root; RCLIP_VENV overrides the folder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RCLIP_VENV:-data/rclip-venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "rclip==3.3.0"
"$VENV/bin/rclip" --help >/dev/null  # fails loudly if the install is broken
echo "rclip installed in $VENV"
