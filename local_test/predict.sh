#!/usr/bin/env bash
# One prediction from the local server: POST FILE to /invocations.
# Usage: local_test/predict.sh FILE [content-type]
#   content-type defaults from the extension: .jpg/.jpeg image/jpeg, .png image/png,
#   .json application/json, .npy application/x-npy, else application/octet-stream.
# Env: URL (default http://localhost:8080/invocations), ACCEPT (default application/json).
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  exit 1
fi
file="$1"
[ -f "$file" ] || { echo "error: $file is not a file" >&2; exit 1; }
case "${file,,}" in
  *.jpg|*.jpeg) guess=image/jpeg ;;
  *.png) guess=image/png ;;
  *.json) guess=application/json ;;
  *.npy) guess=application/x-npy ;;
  *) guess=application/octet-stream ;;
esac
curl --fail-with-body -sS -H "Content-Type: ${2:-$guess}" -H "Accept: ${ACCEPT:-application/json}" \
  --data-binary @"$file" "${URL:-http://localhost:8080/invocations}"
echo
