#!/usr/bin/env bash
# Install the system programs some tests drive: Debian's chromium + chromium-driver (the review page's browser
# tests) and dicom3tools (dciodvfy, the DICOM validator). Installs only what is missing; where no package manager
# is at hand it says so and the tests that need a program skip, naming it.
set -uo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get here: not installing ${missing[*]}; the tests that need them skip" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "not root and no password-less sudo: not installing ${missing[*]}; the tests that need them skip" >&2
    exit 0
  fi
fi
echo "installing ${missing[*]} with apt-get" >&2
$SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
  || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; } \
  || echo "apt-get could not install ${missing[*]}; the tests that need them skip" >&2
exit 0
