#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Install everything llmos needs, from Debian packages only, and unpack the
# Debian 6.12 kernel (image for the test VM, headers + kbuild to build the
# module, source for checkpatch/kernel-doc/kselftest) into a cache outside
# the clone. Idempotent: a second run on a ready machine takes seconds.
#
#   LLMOS_CACHE   cache folder                (default /var/cache/llmos)
#   LLMOS_KVER    kernel to use, e.g. 6.12.117+deb12 (default: newest served)
#
# The chosen kernel is recorded in $LLMOS_CACHE/kernel.env, which the
# Makefile reads.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
# Absolute: the unpacked kernel headers' Makefile names it, and is read
# from another folder (make -C).
CACHE=$(realpath -m -- "${LLMOS_CACHE:-/var/cache/llmos}")
SUDO=
# (sudo resets the environment: DEBIAN_FRONTEND goes through env.)
[ "$(id -u)" -eq 0 ] || SUDO="sudo env DEBIAN_FRONTEND=noninteractive"

log() { printf 'deps: %s\n' "$*" >&2; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

# Packages from bookworm. libelf-dev must come from bookworm (its static
# library is what the statically linked guest programs link against).
PKGS=(
	build-essential bc bison flex kmod cpio gzip xz-utils pkg-config
	cmake ninja-build ccache clang-format clang-tidy bc file
	libcli11-dev nlohmann-json3-dev libcpp-httplib-dev
	googletest libgtest-dev libgmock-dev libbenchmark-dev
	liburing-dev libnuma-dev libelf-dev zlib1g-dev libzstd-dev
	qemu-system-x86 busybox-static clang-19 llvm-19 dwarves
	python3 python3-numpy
	python3-sphinx groff-base man-db
	curl git
	# The install test checks the unit file, sysusers.d and tmpfiles.d
	# entries with systemd's own tools, and itself with shellcheck.
	systemd shellcheck
)
# Packages that must come from bookworm-backports (libbpf >= 1.4 is needed
# to attach a struct_ops type defined by a module).
BPO_PKGS=(libbpf-dev bpftool)

missing_pkgs() {
	local p
	for p in "$@"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
			grep -q '^install ok installed$' || printf '%s\n' "$p"
	done
}

# Where apt looks for its sources (a test points this elsewhere).
APT_ETC=${LLMOS_APT_ETC:-/etc/apt}

# "URI SUITE" for each binary-package source apt uses: one-line entries
# ("deb [options] uri suite components") in sources.list and *.list, and
# deb822 stanzas in *.sources (Types with deb, every URI by every suite,
# not Enabled: no). Comments, deb-src entries and files with other
# extensions are not sources.
apt_sources() {
	local f
	for f in "$APT_ETC/sources.list" "$APT_ETC"/sources.list.d/*.list; do
		[ -r "$f" ] || continue
		awk '{ sub(/#.*/, "") }
		$1 == "deb" {
			i = 2
			if ($i ~ /^\[/) {
				while (i <= NF && $i !~ /\]$/)
					i++
				i++
			}
			if (i + 1 <= NF)
				print $i, $(i + 1)
		}' "$f"
	done
	for f in "$APT_ETC"/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		awk 'function flush(  nu, ns, u, s, au, as) {
			if ((" " F["types"] " ") ~ /[ \t]deb[ \t]/ &&
			    tolower(F["enabled"]) !~ /^[ \t]*no[ \t]*$/) {
				nu = split(F["uris"], au)
				ns = split(F["suites"], as)
				for (u = 1; u <= nu; u++)
					for (s = 1; s <= ns; s++)
						print au[u], as[s]
			}
			split("", F)
			key = ""
		}
		/^#/ { next }
		/^[ \t]*$/ { flush(); next }
		/^[ \t]/ { if (key != "") F[key] = F[key] " " $0; next }
		{
			i = index($0, ":")
			if (i == 0)
				next
			key = tolower(substr($0, 1, i - 1))
			F[key] = substr($0, i + 1)
		}
		END { flush() }' "$f"
	done
}

# The mirror that serves bookworm in the sources apt uses.
debian_mirror() {
	local uri
	uri=$(apt_sources | awk '$2 == "bookworm" && $1 ~ /\/debian\/?$/ && u == "" { u = $1 }
		END { if (u != "") print u }')
	printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# Whether apt already has a bookworm-backports source.
have_backports() {
	apt_sources | awk '$2 == "bookworm-backports" { found = 1 } END { exit !found }'
}

apt_updated=0
apt_update() {
	[ "$apt_updated" -eq 1 ] && return 0
	log "apt-get update"
	# The lists' lock may be held a while (apt-daily on a fresh machine), a
	# mirror may be down for a moment: ten tries, about 10 minutes in all.
	local try
	for try in 1 2 3 4 5 6 7 8 9 10; do
		$SUDO apt-get update -qq -o DPkg::Lock::Timeout=30 >/dev/null && break
		[ "$try" -lt 10 ] || die "apt-get update failed"
		log "apt-get update failed; trying again in 30 s"
		sleep 30
	done
	apt_updated=1
}

setup_backports() {
	local f=$APT_ETC/sources.list.d/llmos-bookworm-backports.sources
	if ! have_backports; then
		log "adding bookworm-backports from $(debian_mirror)"
		$SUDO tee "$f" >/dev/null <<SRC
Types: deb
URIs: $(debian_mirror)
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
		apt_updated=0
		apt_update
	fi
}

install_packages() {
	local miss
	miss=$(missing_pkgs "${PKGS[@]}")
	if [ -n "$miss" ]; then
		apt_update
		# shellcheck disable=SC2086
		log "installing:" $miss
		# shellcheck disable=SC2086
		$SUDO apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 $miss \
			>/dev/null || die "apt-get install failed"
	fi
	setup_backports
	local ver
	ver=$(dpkg-query -W -f='${Version}' libbpf-dev 2>/dev/null || true)
	if [ -z "$ver" ] || dpkg --compare-versions "${ver#*:}" lt 1.4 ||
		[ -n "$(missing_pkgs "${BPO_PKGS[@]}")" ]; then
		apt_update
		log "installing from bookworm-backports: ${BPO_PKGS[*]}"
		$SUDO apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 \
			-t bookworm-backports "${BPO_PKGS[@]}" >/dev/null ||
			die "install of ${BPO_PKGS[*]} from bookworm-backports failed"
	fi
	ver=$(dpkg-query -W -f='${Version}' libbpf-dev)
	dpkg --compare-versions "${ver#*:}" ge 1.4 ||
		die "libbpf-dev $ver is older than 1.4 (needed for module struct_ops)"
}

# Newest 6.12 kernel for which all four packages are served.
pick_kernel() {
	local v
	if [ -n "${LLMOS_KVER:-}" ]; then
		printf '%s\n' "$LLMOS_KVER"
		return
	fi
	apt-cache search --names-only \
		'^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' |
		sed -E 's/^linux-image-(6\.12\.[0-9]+\+deb12)-amd64-unsigned .*/\1/' |
		sort -rV | while read -r v; do
			if apt-cache show "linux-headers-$v-amd64" \
				"linux-headers-$v-common" "linux-kbuild-$v" \
				>/dev/null 2>&1; then
				printf '%s\n' "$v"
				break
			fi
		done
}

# download_deb PKG DIR: PKG's .deb into DIR, whole or not at all (a download
# cut short stays in DIR/.partial, which the next one empties).
download_deb() {
	local p=$1 dir=$2 part=$2/.partial
	apt_update # lists cleaned, or older than the kernel
	log "downloading $p"
	rm -rf "$part"
	mkdir -p "$part"
	(cd "$part" && apt-get download -qq "$p" 2>/dev/null) ||
		die "apt-get download $p failed"
	mv "$part"/*.deb "$dir/" || die "apt-get download $p gave no .deb"
	rmdir "$part"
}

# unpack_deb PKG DIR ROOT: the newest of PKG's .debs in DIR, into ROOT.
unpack_deb() {
	dpkg -x "$(ls "$2/${1}"_*.deb | sort -V | tail -n1)" "$3"
}

fetch_kernel() {
	local kver=$1 kdir="$CACHE/kernel/$1" debs="$CACHE/debs" p
	local -a kpkgs=("linux-image-$kver-amd64-unsigned"
		"linux-headers-$kver-amd64" "linux-headers-$kver-common"
		"linux-kbuild-$kver" linux-source-6.12)
	if [ -f "$kdir/.ready" ]; then
		return 0
	fi
	# (Another user's cache, set up part way: a run cut short, another
	# kernel asked for.)
	if ! mkdir -p "$debs" "$kdir/root" 2>/dev/null || [ ! -w "$debs" ] || [ ! -w "$kdir/root" ]; then
		die "the kernel $kver is not set up in $CACHE, which this user cannot write:" \
			"run make deps as its owner ($(stat -c %U "$CACHE")), or set LLMOS_CACHE"
	fi
	for p in "${kpkgs[@]}"; do
		ls "$debs/${p}"_*.deb >/dev/null 2>&1 || download_deb "$p" "$debs"
		log "unpacking $p"
		if ! unpack_deb "$p" "$debs" "$kdir/root"; then
			# Damaged in the cache (a copy from elsewhere, a full disk):
			# fetched again once.
			log "$p did not unpack: downloading it again"
			rm -f "$debs/${p}"_*.deb
			download_deb "$p" "$debs"
			unpack_deb "$p" "$debs" "$kdir/root" || die "$p does not unpack"
		fi
	done
	local hdr="$kdir/root/usr/src/linux-headers-$kver-amd64"
	# The arch headers include the common tree by absolute path.
	sed -i "s|/usr/src/linux-headers-$kver-common|$kdir/root/usr/src/linux-headers-$kver-common|g" \
		"$hdr/Makefile"
	# Only the parts of the source tree that are used: checkpatch,
	# kernel-doc, the kselftest harness, and the models in STYLE.md.
	local src="$kdir/src"
	mkdir -p "$src"
	log "unpacking parts of linux-source-6.12"
	tar -xf "$kdir/root/usr/src/linux-source-6.12.tar.xz" -C "$src" \
		--strip-components=1 --wildcards \
		'linux-source-6.12/scripts/*' \
		'linux-source-6.12/tools/testing/selftests/kselftest*' \
		'linux-source-6.12/tools/sched_ext/*' \
		'linux-source-6.12/drivers/hid/bpf/*' \
		'linux-source-6.12/Documentation/sphinx/*' \
		'linux-source-6.12/Documentation/userspace-api/ioctl/*'
	rm -f "$kdir/root/usr/src/linux-source-6.12.tar.xz"
	[ -f "$src/scripts/checkpatch.pl" ] || die "checkpatch.pl missing from linux-source"
	[ -f "$src/tools/testing/selftests/kselftest_harness.h" ] ||
		die "kselftest_harness.h missing from linux-source"
	touch "$kdir/.ready"
}

main() {
	# The kernel's build system (make M=..., the headers' Makefile) and
	# kernel.env take paths as words: a blank in one breaks them far
	# from here.
	local clone
	clone=$(cd "$(dirname "$0")/.." && pwd)
	case "$CACHE$clone" in
	*[[:space:]]*)
		die "a blank in the path of the cache ($CACHE) or of this clone ($clone):" \
			"the kernel's build system cannot build the module there; use paths without" \
			"blanks (LLMOS_CACHE for the cache)"
		;;
	esac
	# A user with sudo gets a cache of their own making.
	mkdir -p "$CACHE" 2>/dev/null || { [ -n "$SUDO" ] && sudo install -d -o "$(id -u)" -g "$(id -g)" "$CACHE"; } ||
		die "cannot create cache folder $CACHE"
	# One run at a time per cache (two would unpack into one folder); a
	# user who cannot write the cache reads it, set up, without a lock.
	local lock="$CACHE/.deps.lock"
	if { [ -e "$lock" ] && [ -w "$lock" ]; } || { [ ! -e "$lock" ] && [ -w "$CACHE" ]; }; then
		exec 9>>"$lock"
		flock 9
	fi
	install_packages
	local kver
	if [ -n "${LLMOS_KVER:-}" ]; then
		kver=$LLMOS_KVER
	elif [ -f "$CACHE/kernel.env" ] && [ -z "${LLMOS_KVER_REFRESH:-}" ]; then
		# shellcheck disable=SC1091
		kver=$(. "$CACHE/kernel.env" && printf '%s' "$LLMOS_KVER")
	else
		apt_update
		kver=$(pick_kernel)
	fi
	[ -n "$kver" ] || die "no linux-image-6.12.N+deb12-amd64-unsigned with headers and kbuild is served"
	fetch_kernel "$kver"
	local kdir="$CACHE/kernel/$kver"
	local env
	env="LLMOS_KVER=$kver
LLMOS_KDIR=$kdir/root/usr/src/linux-headers-$kver-amd64
LLMOS_KSRC=$kdir/src
LLMOS_VMLINUZ=$kdir/root/boot/vmlinuz-$kver-amd64"
	# Written only when it changes: a user who cannot write the cache
	# runs this (every build does) once it is set up.
	if [ "$(cat "$CACHE/kernel.env" 2>/dev/null)" != "$env" ]; then
		local tmp
		tmp=$(mktemp "$CACHE/kernel.env.XXXXXX")
		printf '%s\n' "$env" >"$tmp"
		chmod 0644 "$tmp"
		mv "$tmp" "$CACHE/kernel.env"
	fi
	log "kernel $kver; libbpf $(dpkg-query -W -f='${Version}' libbpf-dev);" \
		"bpftool $(dpkg-query -W -f='${Version}' bpftool);" \
		"clang $(dpkg-query -W -f='${Version}' clang-19);" \
		"qemu $(dpkg-query -W -f='${Version}' qemu-system-x86)"
}

# Sourced (by its test), it only defines its functions.
[ "${BASH_SOURCE[0]}" != "$0" ] || main "$@"
