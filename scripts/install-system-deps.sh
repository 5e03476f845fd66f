#!/bin/sh
# Installs Debian packages the browser and PostgreSQL tests use, where apt-get and root exist.
# Elsewhere it says so in one line and the tests that need the package skip with a reason.
set -u
case "${1:-}" in
  chromium)   need=/usr/bin/chromedriver; pkgs="chromium chromium-driver" ;;
  postgresql) need=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | head -n 1)
              [ -n "$need" ] || need=$(command -v initdb || true); pkgs="postgresql" ;;  # Debian's path, else PATH
  *) echo "usage: $0 chromium|postgresql" >&2; exit 2 ;;
esac
[ -n "$need" ] && [ -x "$need" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: apt-get not found; install $pkgs yourself or the tests that need them will skip"; exit 0
fi
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
  echo "note: not root and no passwordless sudo; install $pkgs yourself or the tests that need them will skip"; exit 0
fi
echo "installing Debian packages: $pkgs"
$sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $pkgs >/dev/null \
  || echo "note: apt-get could not install $pkgs; the tests that need them will skip"
exit 0
