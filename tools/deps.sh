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
CACHE=${LLMOS_CACHE:-/var/cache/llmos}
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

# The mirror that serves bookworm in the default sources.
debian_mirror() {
	local uri
	uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources |
		awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
	if [ -z "$uri" ]; then
		uri=$(grep -hsE '^deb .*/debian/? bookworm( |$)' \
			/etc/apt/sources.list /etc/apt/sources.list.d/*.list |
			awk '{print $2}' | head -n1 || true)
	fi
	printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

apt_updated=0
apt_update() {
	[ "$apt_updated" -eq 1 ] && return 0
	log "apt-get update"
	$SUDO apt-get update -qq >/dev/null || die "apt-get update failed"
	apt_updated=1
}

setup_backports() {
	local f=/etc/apt/sources.list.d/llmos-bookworm-backports.sources
	if ! grep -qsr 'bookworm-backports' /etc/apt/sources.list \
		/etc/apt/sources.list.d/; then
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
		$SUDO apt-get install -y -qq --no-install-recommends $miss \
			>/dev/null || die "apt-get install failed"
	fi
	setup_backports
	local ver
	ver=$(dpkg-query -W -f='${Version}' libbpf-dev 2>/dev/null || true)
	if [ -z "$ver" ] || dpkg --compare-versions "${ver#*:}" lt 1.4 ||
		[ -n "$(missing_pkgs "${BPO_PKGS[@]}")" ]; then
		apt_update
		log "installing from bookworm-backports: ${BPO_PKGS[*]}"
		$SUDO apt-get install -y -qq --no-install-recommends \
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

fetch_kernel() {
	local kver=$1 kdir="$CACHE/kernel/$1" debs="$CACHE/debs" p
	local -a kpkgs=("linux-image-$kver-amd64-unsigned"
		"linux-headers-$kver-amd64" "linux-headers-$kver-common"
		"linux-kbuild-$kver" linux-source-6.12)
	if [ -f "$kdir/.ready" ]; then
		return 0
	fi
	mkdir -p "$debs" "$kdir/root"
	(
		cd "$debs"
		for p in "${kpkgs[@]}"; do
			if ! ls "${p}"_*.deb >/dev/null 2>&1; then
				log "downloading $p"
				apt-get download -qq "$p" 2>/dev/null ||
					die "apt-get download $p failed"
			fi
		done
	)
	for p in "${kpkgs[@]}"; do
		log "unpacking $p"
		dpkg -x "$(ls "$debs/${p}"_*.deb | sort -V | tail -n1)" "$kdir/root"
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
	mkdir -p "$CACHE" || die "cannot create cache folder $CACHE"
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

main "$@"
