#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# tools/deps.sh reads apt's sources as apt does: the mirror it adds
# bookworm-backports from, and whether it is there already, come from
# entries apt uses (one-line with options, deb822 stanzas over several
# lines), never from comments, deb-src lines, disabled stanzas or files apt
# ignores.
set -euo pipefail
src=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck disable=SC1091
. "$src/tools/deps.sh"
export LLMOS_APT_ETC=$tmp
APT_ETC=$tmp
mkdir -p "$tmp/sources.list.d"
fails=0 passes=0
expect() { # NAME WANT GOT
	if [ "$2" != "$3" ]; then
		printf 'not ok: %s: want "%s", got "%s"\n' "$1" "$2" "$3"
		fails=$((fails + 1))
	else
		printf 'ok: %s\n' "$1"
		passes=$((passes + 1))
	fi
}
backports() { if have_backports; then echo yes; else echo no; fi; }

# Nothing at all: the default mirror, no backports.
expect "no sources" "http://deb.debian.org/debian" "$(debian_mirror)"
expect "no sources, no backports" no "$(backports)"

# One-line entries with options; backports only in a comment, a deb-src
# line and a file apt ignores.
cat >"$tmp/sources.list" <<'SRC'
# deb http://old.example/debian bookworm-backports main
deb-src http://src.example/debian bookworm-backports main
deb [signed-by=/usr/share/keyrings/k.gpg arch=amd64] http://mirror.example/debian bookworm main # local
deb http://security.example/debian-security bookworm-security main
SRC
echo "deb http://x.example/debian bookworm-backports main" \
	>"$tmp/sources.list.d/bpo.list.disabled"
expect "one-line entry with options" "http://mirror.example/debian" "$(debian_mirror)"
expect "commented, deb-src and ignored backports" no "$(backports)"

# deb822: a disabled stanza first, then one over several lines.
rm "$tmp/sources.list"
cat >"$tmp/sources.list.d/debian.sources" <<'SRC'
Types: deb
URIs: http://off.example/debian
Suites: bookworm bookworm-backports
Components: main
Enabled: no

# The mirror.
Types: deb deb-src
URIs:
 http://deb822.example/debian
Suites: bookworm
  bookworm-updates
Components: main
SRC
expect "deb822 stanza over several lines" "http://deb822.example/debian" "$(debian_mirror)"
expect "disabled deb822 backports" no "$(backports)"
cat >>"$tmp/sources.list.d/debian.sources" <<'SRC'

Types: deb
URIs: http://deb822.example/debian
Suites: bookworm-backports
Components: main
SRC
expect "deb822 backports" yes "$(backports)"
rm "$tmp/sources.list.d/debian.sources"
echo "deb [trusted=yes] http://one.example/debian/ bookworm-backports main" \
	>"$tmp/sources.list.d/bpo.list"
expect "one-line backports with options" yes "$(backports)"
# Each case counted by make check (tools/check.sh).
if [ -n "${LLMOS_TEST_COUNTS:-}" ]; then
	mkdir -p "$(dirname "$LLMOS_TEST_COUNTS")"
	echo "$passes $fails 0" >"$LLMOS_TEST_COUNTS"
fi
[ "$fails" -eq 0 ]
