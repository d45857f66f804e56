#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# shellcheck disable=SC2317 # the checks are functions that check() runs
#
# `make install` for other programs: installs the build in BUILD into a
# staging DESTDIR, then builds and runs a program against it twice, found
# through pkg-config and through find_package(llmos). Then the system files
# (`make install-packaging install-dkms install-kmod`, packaging/): where they
# land, that they parse (systemd-analyze, systemd-sysusers, systemd-tmpfiles
# where installed, built-in checks otherwise), and that the DKMS source tree
# builds the module against the cached kernel headers as dkms would. Prints
# TAP; a check whose tool is missing is reported as `ok N - ... # SKIP why`.
set -euo pipefail
build=$1
src=$2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
n=0
passes=0 fails=0 skips=() # skips for LLMOS_TEST_COUNTS
ok() { n=$((n + 1)) passes=$((passes + 1)); echo "ok $n - $1"; }
notok() {
	n=$((n + 1)) fails=$((fails + 1))
	echo "not ok $n - $1"
	sed 's/^/# /' "$stage/log"
}
skip() { n=$((n + 1)); skips+=("$1: $2"); echo "ok $n - $1 # SKIP $2"; }
# check DESCRIPTION COMMAND...: one case, COMMAND's output shown on failure.
check() {
	local what=$1
	shift
	if "$@" >"$stage/log" 2>&1; then ok "$what"; else notok "$what"; fi
}
echo "1..40"

if DESTDIR=$stage/root cmake --install "$build" --prefix /usr/local >"$stage/log" 2>&1 &&
	[ -f "$stage/root/usr/local/include/llmos/worker_pool.hh" ] &&
	[ -f "$stage/root/usr/local/include/linux/llmos.h" ] &&
	[ -f "$stage/root/usr/local/lib/libllmos.a" ] &&
	[ -x "$stage/root/usr/local/bin/llmosctl" ]; then
	ok "install puts headers, libraries and llmosctl under DESTDIR"
else
	notok "install puts headers, libraries and llmosctl under DESTDIR"
fi

mkdir -p "$stage/app"
cat >"$stage/app/main.cc" <<'CC'
#include <cstdio>
#include <linux/llmos.h>
#include <llmos/channel.hh>
#include <llmos/device.hh>
#include <llmos/engine/types.hh>
#include <memory>

int main() {
    auto ring = std::make_unique<llmos::channel_ring<8>>();
    llmos::channel_sender<8> tx(*ring);
    llmos::channel_receiver<8> rx(*ring);
    tx.send({42, 0, 0, 0});
    llmos::descriptor d[1];
    bool ok = rx.try_receive(d) == 1 && d[0].request == 42;
    ok = ok && llmos::engine::row_bytes(llmos::engine::ggml_type::q8_0, 64) == 68u;
    std::printf("abi %d, %s\n", LLMOS_ABI_MAJOR, ok ? "ok" : "bad");
    return ok ? 0 : 1;
}
CC

export PKG_CONFIG_SYSROOT_DIR=$stage/root
export PKG_CONFIG_PATH=$stage/root/usr/local/lib/pkgconfig
# shellcheck disable=SC2086 # $flags is a list of words
if flags=$(pkg-config --cflags --libs llmos 2>"$stage/log") &&
	g++ -std=c++20 -o "$stage/app/pc" "$stage/app/main.cc" $flags >"$stage/log" 2>&1 &&
	"$stage/app/pc" >"$stage/log" 2>&1; then
	ok "a program builds with pkg-config llmos and runs"
else
	notok "a program builds with pkg-config llmos and runs"
fi

cat >"$stage/app/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.25)
project(app CXX)
find_package(llmos 0.1 REQUIRED)
add_executable(app main.cc)
target_link_libraries(app PRIVATE llmos::llmos llmos::llmos_engine)
CM
if cmake -S "$stage/app" -B "$stage/app/build" -DCMAKE_PREFIX_PATH="$stage/root/usr/local" \
	>"$stage/log" 2>&1 && cmake --build "$stage/app/build" >"$stage/log" 2>&1 &&
	"$stage/app/build/app" >"$stage/log" 2>&1; then
	ok "a program builds with find_package(llmos) and runs"
else
	notok "a program builds with find_package(llmos) and runs"
fi

# Nothing of the source or build tree leaks into what was installed.
if ! grep -rl -e "$src" -e "$build" "$stage/root/usr/local/lib/pkgconfig" \
	"$stage/root/usr/local/lib/cmake" >"$stage/log" 2>&1; then
	ok "installed package files do not point into the build or source tree"
else
	notok "installed package files do not point into the build or source tree"
fi

# --- System files: make install-packaging, install-dkms, install-kmod ---
root=$stage/root
version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
dkms=$root/usr/src/llmos-$version
unit=$root/usr/lib/systemd/system/llmosd.service
rules=$root/usr/lib/udev/rules.d/60-llmos.rules
sysusers=$root/usr/lib/sysusers.d/llmos.conf
tmpfiles=$root/usr/lib/tmpfiles.d/llmos.conf
kenv=${LLMOS_CACHE:-/var/cache/llmos}/kernel.env
PATH=$PATH:/usr/sbin:/sbin # modinfo
# make, without the jobserver of a make that may have started ctest.
mk() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -C "$src" "$@"; }
# What a dkms.conf sets, read as dkms reads it (a bash script).
dkms_conf() {
	kernel_source_dir=${kernel_source_dir:-/lib/modules/6.12.0/build}
	dkms_tree=${dkms_tree:-/var/lib/dkms}
	# shellcheck disable=SC1090,SC1091
	. "$1"
}

check "make install-packaging install-dkms stages the system files in DESTDIR" \
	mk install-packaging install-dkms DESTDIR="$root" PREFIX=/usr/local

# installed FILE [SOURCE]: FILE is a regular file, mode 0644, a copy of SOURCE.
installed() {
	[ -f "$1" ] || { echo "missing: $1"; return 1; }
	[ "$(stat -c %a "$1")" = 644 ] || { echo "mode $(stat -c %a "$1"): $1"; return 1; }
	[ -z "${2:-}" ] || cmp "$2" "$1"
}
check "udev rule in /usr/lib/udev/rules.d/60-llmos.rules" \
	installed "$rules" "$src/packaging/60-llmos.rules"
check "sysusers.d entry in /usr/lib/sysusers.d/llmos.conf" \
	installed "$sysusers" "$src/packaging/llmos.sysusers.conf"
check "tmpfiles.d entry in /usr/lib/tmpfiles.d/llmos.conf" \
	installed "$tmpfiles" "$src/packaging/llmos.tmpfiles.conf"
check "llmosd unit in /usr/lib/systemd/system/llmosd.service" installed "$unit"
check "llmosd options in /etc/default/llmosd" \
	installed "$root/etc/default/llmosd" "$src/packaging/llmosd.default"
# DKMS builds the module for each kernel; nothing would load it at boot.
check "install-dkms: the module is loaded at boot (modules-load.d)" \
	installed "$root/usr/lib/modules-load.d/llmos.conf" "$src/packaging/modules-load.conf"
# ... and llmosd waits for udev to set its node up (a drop-in of the unit).
dropin=$root/usr/lib/systemd/system/llmosd.service.d/llmos-device.conf
device_dropin() {
	installed "$dropin" "$src/packaging/llmosd-device.conf" &&
		grep -qx 'After=dev-llmos.device' "$dropin" &&
		grep -qx 'Wants=dev-llmos.device' "$dropin" &&
		grep -v '^[[:space:]]*#' "$rules" | grep 'KERNEL=="llmos"' | grep -q 'TAG+="systemd"'
}
check "install-dkms: llmosd starts after udev made dev-llmos.device" device_dropin

# dkms.conf, the module's sources and the UAPI header at their repository
# paths, and nothing else (no build products of the source tree).
dkms_tree_complete() {
	local want have
	installed "$dkms/dkms.conf" || return 1
	want=$(cd "$src" && {
		printf '%s\n' dkms.conf include/uapi/linux/llmos.h kmod/Kbuild
		find kmod -name '*.[ch]' ! -name '*.mod.c'
	} | sort)
	have=$(cd "$dkms" && find . -type f | sed 's|^\./||' | sort)
	diff <(echo "$want") <(echo "$have")
}
check "DKMS tree in /usr/src/llmos-$version: dkms.conf, kmod/ sources, UAPI header" \
	dkms_tree_complete

no_leftovers() {
	! grep -rn -e '@[A-Z_]*@' -e "$src" "$unit" "$dkms/dkms.conf" "$rules" "$sysusers" \
		"$tmpfiles" "$root/etc/default/llmosd"
}
check "generated files have no @PLACEHOLDER@ left and no source-tree path" no_leftovers

# A second install gives the same tree, and drops the sources that an
# earlier install of the same version had and this one has not.
snapshot() {
	cd "$root" && find . -printf '%p %y %m\n' | sort &&
		find . -type f -print0 | sort -z | xargs -0 sha256sum
}
install_again() {
	(snapshot) >"$stage/before" || return 1
	touch "$dkms/kmod/stale.c"
	mk install-packaging install-dkms DESTDIR="$root" PREFIX=/usr/local || return 1
	(snapshot) >"$stage/after" && diff "$stage/before" "$stage/after"
}
check "installing again gives the same files (a stale DKMS source is removed)" install_again

# shellcheck disable=SC2016 # $LLMOSD_ARGS is for systemd to expand
check "the unit runs PREFIX/bin/llmosd \$LLMOSD_ARGS (PREFIX=/usr/local)" \
	grep -qx 'ExecStart=/usr/local/bin/llmosd $LLMOSD_ARGS' "$unit"
# shellcheck disable=SC2016 # $LLMOSD_TENANTS is for systemd to expand
check "the unit grants user llmosd LLMOSD_TENANTS (all by default) and workers first, as root, not fatally" \
	sh -c 'grep -qx "ExecStartPre=-+/usr/local/bin/llmosctl --backend kernel sched grant llmosd \$LLMOSD_TENANTS --worker" "$0" &&
		grep -qx "Environment=LLMOSD_TENANTS=all" "$0" &&
		[ "$(grep -n "^Environment=LLMOSD_TENANTS" "$0" | cut -d: -f1)" -lt \
			"$(grep -n "^EnvironmentFile=" "$0" | cut -d: -f1)" ]' "$unit"

other_prefix() {
	mk install-packaging DESTDIR="$stage/opt" PREFIX=/opt/llmos || return 1
	# shellcheck disable=SC2016
	grep -x 'ExecStart=/opt/llmos/bin/llmosd $LLMOSD_ARGS' \
		"$stage/opt/usr/lib/systemd/system/llmosd.service" &&
		[ -f "$stage/opt/usr/lib/udev/rules.d/60-llmos.rules" ] &&
		[ -f "$stage/opt/etc/default/llmosd" ]
}
check "PREFIX=/opt/llmos: ExecStart follows it, system files stay in place" other_prefix

# pkg-config's file names the prefix installed to, not the one configured.
pc_prefix() {
	DESTDIR="$stage/optpc" cmake --install "$build" --prefix /opt/llmos >"$stage/optpc.log" 2>&1 ||
		{ cat "$stage/optpc.log"; return 1; }
	grep -x 'prefix=/opt/llmos' "$stage/optpc/opt/llmos/lib/pkgconfig/llmos.pc" &&
		grep -x 'prefix=/usr/local' "$stage/root/usr/local/lib/pkgconfig/llmos.pc"
}
check "llmos.pc follows the install prefix (/opt/llmos, /usr/local)" pc_prefix

# A real install (no DESTDIR; folders moved into the stage, the tools it runs
# replaced by stubs that log their arguments): it keeps an existing
# /etc/default/llmosd and does what a package's postinst would.
stubs() {
	mkdir -p "$stage/stubs" && local tool
	for tool in systemd-sysusers systemd-tmpfiles udevadm systemctl depmod; do
		printf '#!/bin/sh\necho "%s $*" >>"%s"\n' "$tool" "$stage/calls" >"$stage/stubs/$tool"
		chmod 755 "$stage/stubs/$tool"
	done
}
real_install() {
	local t=$stage/real
	stubs && mkdir -p "$t/etc/default" && echo 'LLMOSD_ARGS="--mine"' >"$t/etc/default/llmosd" &&
		PATH=$stage/stubs:$PATH mk install-packaging DESTDIR= SYSCONFDIR="$t/etc" \
			UDEVRULESDIR="$t/rules.d" SYSUSERSDIR="$t/sysusers.d" TMPFILESDIR="$t/tmpfiles.d" \
			UNITDIR="$t/system" || return 1
	cat "$stage/calls"
	grep -qx 'LLMOSD_ARGS="--mine"' "$t/etc/default/llmosd" &&
		grep -qx "systemd-sysusers $t/sysusers.d/llmos.conf" "$stage/calls" &&
		grep -qx "systemd-tmpfiles --create $t/tmpfiles.d/llmos.conf" "$stage/calls" &&
		grep -qx "udevadm control --reload" "$stage/calls" &&
		grep -qx "udevadm trigger --action=change --subsystem-match=misc --sysname-match=llmos" \
			"$stage/calls" &&
		{ [ ! -d /run/systemd/system ] || grep -qx "systemctl daemon-reload" "$stage/calls"; } &&
		[ -f "$t/system/llmosd.service" ] && [ -f "$t/rules.d/60-llmos.rules" ]
}
check "a real install keeps /etc/default/llmosd, runs sysusers, tmpfiles, udev reload, trigger" \
	real_install

# The unit read the way systemd reads it: sections, Key=Value lines, and the
# settings the daemon and the other files rely on.
unit_settings() {
	awk '
		/^[ \t]*([#;]|$)/ { next }
		/^\[[A-Za-z]+\]$/ { sections = sections $0; next }
		sections == "" || !/^[A-Za-z][A-Za-z0-9]*=/ {
			print FILENAME ":" FNR ": not Key=Value in a section: " $0; bad = 1
		}
		END {
			if (sections != "[Unit][Service][Install]") { print "sections: " sections; bad = 1 }
			exit bad
		}' "$unit" || return 1
	local kv
	for kv in Type=exec EnvironmentFile=-/etc/default/llmosd User=llmosd Group=llmos \
		KillSignal=SIGTERM KillMode=mixed Restart=on-failure StateDirectory=llmosd \
		'DeviceAllow=/dev/llmos rw' NoNewPrivileges=yes ProtectSystem=strict \
		ProtectHome=read-only PrivateTmp=yes \
		'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6' WantedBy=multi-user.target; do
		grep -qxF "$kv" "$unit" || { echo "no line $kv"; return 1; }
	done
	# RemoveIPC= would delete the local backend's mindspaces at each stop.
	! grep -q '^RemoveIPC=' "$unit" || { echo "RemoveIPC= is set"; return 1; }
}
check "the unit's sections, keys and settings (built-in check)" unit_settings

# systemd-analyze reads units under --root: a root with this machine's
# units, ours, and a stand-in for the llmosd program (not built here).
units=
for d in /usr/lib/systemd/system /lib/systemd/system; do
	[ -f "$d/sysinit.target" ] && units=$d && break
done
sa_root() {
	local r=$stage/sa exe
	mkdir -p "$r/usr/lib/systemd/system" &&
		cp -a "$units/." "$r/usr/lib/systemd/system/" && cp "$unit" "$r/usr/lib/systemd/system/" &&
		cp -a "$(dirname "$dropin")" "$r/usr/lib/systemd/system/" || return 1
	# Every program an Exec line runs (after its prefixes: - + ! @ :).
	sed -n 's/^Exec[A-Za-z]*=[-+!@:]*\([^ ]*\).*/\1/p' "$unit" >"$stage/exes" || return 1
	while read -r exe; do
		mkdir -p "$r$(dirname "$exe")" && printf '#!/bin/sh\n' >"$r$exe" &&
			chmod 755 "$r$exe" || return 1
	done <"$stage/exes"
}
verify_unit() {
	local out rc=0
	sa_root || return 1
	out=$(systemd-analyze verify --root="$stage/sa" llmosd.service 2>&1) || rc=$?
	printf '%s\n' "$out"
	[ "$rc" = 0 ] && [ -z "$out" ]
}
exposure() {
	sa_root && systemd-analyze security --offline=true --threshold=25 --root="$stage/sa" \
		llmosd.service
}
if ! command -v systemd-analyze >/dev/null; then
	skip "systemd-analyze verify: the unit loads with no warning" "systemd-analyze is not installed"
	skip "systemd-analyze security: exposure at most 2.5" "systemd-analyze is not installed"
elif [ -z "$units" ]; then
	skip "systemd-analyze verify: the unit loads with no warning" "no systemd units on this machine"
	skip "systemd-analyze security: exposure at most 2.5" "no systemd units on this machine"
else
	check "systemd-analyze verify: the unit loads with no warning" verify_unit
	if systemd-analyze --help 2>&1 | grep -q -- --offline; then
		check "systemd-analyze security: exposure at most 2.5" exposure
	else
		skip "systemd-analyze security: exposure at most 2.5" "systemd-analyze has no --offline"
	fi
fi

# The unit's user and group, and the udev rule's group, are the ones that
# sysusers.d makes; the user's home is the unit's state folder.
names_agree() {
	local user group rgroup state
	user=$(sed -n 's/^User=//p' "$unit")
	group=$(sed -n 's/^Group=//p' "$unit")
	state=$(sed -n 's/^StateDirectory=//p' "$unit")
	rgroup=$(sed -n 's/.*GROUP="\([^"]*\)".*/\1/p' "$rules")
	echo "unit $user:$group state $state, udev group $rgroup"
	grep -Eq "^g[[:space:]]+${group}[[:space:]]" "$sysusers" &&
		grep -Eq "^g[[:space:]]+${rgroup}[[:space:]]" "$sysusers" &&
		grep -Eq "^u[[:space:]]+${user}[[:space:]]+-:${group}[[:space:]].*[[:space:]]/var/lib/$state\$" \
			"$sysusers"
}
check "unit User/Group and udev GROUP are made by sysusers.d" names_agree

# User llmosd's primary group is llmos: what it makes is the group's.
sysusers_creates() {
	local r=$stage/su gid
	install -D -m 0644 "$sysusers" "$r/usr/lib/sysusers.d/llmos.conf" && mkdir -p "$r/etc" &&
		systemd-sysusers --root="$r" llmos.conf || return 1
	gid=$(sed -n 's/^llmos:x:\([0-9]*\):.*/\1/p' "$r/etc/group")
	[ -n "$gid" ] && grep -E "^llmosd:x:[0-9]+:$gid:llmos daemon:/var/lib/llmosd:" "$r/etc/passwd"
}
tmpfiles_creates() {
	local r=$stage/tf d
	install -D -m 0644 "$tmpfiles" "$r/usr/lib/tmpfiles.d/llmos.conf" &&
		systemd-tmpfiles --root="$r" --create llmos.conf || return 1
	for d in "" /ms /by-name; do
		[ "$(stat -c '%F %a %U' "$r/dev/shm/llmos$d")" = "directory 1777 root" ] ||
			{ stat "$r/dev/shm/llmos$d"; return 1; }
	done
	[ "$(stat -c '%F %a %U' "$r/dev/shm/llmos/next-id")" = "regular empty file 666 root" ]
}
if ! command -v systemd-sysusers >/dev/null; then
	skip "systemd-sysusers makes group llmos and user llmosd of it" "systemd-sysusers is not installed"
else
	check "systemd-sysusers makes group llmos and user llmosd of it" sysusers_creates
fi
if ! command -v systemd-tmpfiles >/dev/null; then
	skip "systemd-tmpfiles makes /dev/shm/llmos as libllmos does" "systemd-tmpfiles is not installed"
elif [ "$(id -u)" != 0 ]; then
	skip "systemd-tmpfiles makes /dev/shm/llmos as libllmos does" "needs root (it chowns to root)"
else
	check "systemd-tmpfiles makes /dev/shm/llmos as libllmos does" tmpfiles_creates
fi

# udev rule syntax: udevadm verify (systemd >= 253) where there is one, else
# this reading of udev(7): comma-separated KEY[{attr}]OP"value" items, match
# keys with == or !=, assignment keys with =, +=, -= or :=.
udev_parses() {
	local line rest key op nr=0
	local re='^([A-Z_]+)(\{[^}]*\})?(==|!=|\+=|-=|:=|=)"([^"]*)"(,[[:space:]]*|[[:space:]]*$)'
	while IFS= read -r line; do
		nr=$((nr + 1))
		rest=${line#"${line%%[![:space:]]*}"}
		[[ -z $rest || $rest == \#* ]] && continue
		while [ -n "$rest" ]; do
			[[ $rest =~ $re ]] || { echo "line $nr: cannot parse: $rest"; return 1; }
			key=${BASH_REMATCH[1]} op=${BASH_REMATCH[3]}
			case $key in
			ACTION | DEVPATH | KERNEL | KERNELS | SUBSYSTEM | SUBSYSTEMS | DRIVER | DRIVERS | \
				ATTRS | TAGS | CONST | TEST | PROGRAM | RESULT)
				[[ $op == "==" || $op == "!=" ]] || { echo "line $nr: $key$op"; return 1; } ;;
			OWNER | GROUP | MODE | RUN | LABEL | GOTO | IMPORT | OPTIONS | SECLABEL)
				[[ $op != "==" && $op != "!=" ]] || { echo "line $nr: $key$op"; return 1; } ;;
			NAME | SYMLINK | ATTR | SYSCTL | ENV | TAG) ;;
			*) echo "line $nr: unknown key $key"; return 1 ;;
			esac
			rest=${rest:${#BASH_REMATCH[0]}}
		done
	done <"$rules"
}
if command -v udevadm >/dev/null && udevadm verify --help >/dev/null 2>&1; then
	check "udev rule passes udevadm verify" udevadm verify --resolve-names=never "$rules"
else
	check "udev rule parses (built-in check: no udevadm verify on this machine)" udev_parses
fi
udev_rule_content() {
	local rule
	rule=$(grep -v '^[[:space:]]*#' "$rules" | grep 'KERNEL=="llmos"') &&
		[[ $rule == *'SUBSYSTEM=="misc"'* && $rule == *'GROUP="llmos"'* && $rule == *'MODE="0660"'* ]]
}
check "udev rule: misc device llmos, group llmos, mode 0660" udev_rule_content

dkms_vars() {
	(
		kernel_source_dir=/k
		dkms_conf "$dkms/dkms.conf"
		for v in PACKAGE_NAME PACKAGE_VERSION BUILT_MODULE_NAME BUILT_MODULE_LOCATION \
			DEST_MODULE_LOCATION MAKE CLEAN AUTOINSTALL BUILD_EXCLUSIVE_KERNEL; do
			[ -n "${!v:-}" ] || { echo "$v is not set"; exit 1; }
		done
		if ! { [ "$PACKAGE_NAME" = llmos ] && [ "${BUILT_MODULE_NAME[0]}" = llmos ] &&
			[ "$AUTOINSTALL" = yes ] &&
			[[ ${DEST_MODULE_LOCATION[0]} =~ ^/(kernel|updates|extra)(/|$) ]] &&
			[ -f "$dkms/${BUILT_MODULE_LOCATION[0]}/Kbuild" ] &&
			[[ ${MAKE[0]} == "make -C /k M=/var/lib/dkms/llmos/$PACKAGE_VERSION/build/"*" modules" ]]; }; then
			declare -p PACKAGE_NAME BUILT_MODULE_NAME BUILT_MODULE_LOCATION DEST_MODULE_LOCATION \
				AUTOINSTALL MAKE
			exit 1
		fi
	)
}
check "dkms.conf sets the module, its locations, MAKE against \${kernel_source_dir}, CLEAN" \
	dkms_vars

versions_agree() {
	local cm pv mv dirs
	cm=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
	pv=$(dkms_conf "$dkms/dkms.conf" && echo "$PACKAGE_VERSION")
	mv=$(sed -n 's/^#define LLMOS_MODULE_VERSION "\(.*\)"$/\1/p' "$src/kmod/llmos.h")
	dirs=$(cd "$root/usr/src" && echo llmos-*)
	echo "CMake $cm, dkms.conf $pv, LLMOS_MODULE_VERSION $mv, /usr/src/$dirs"
	[ -n "$cm" ] && [ "$pv" = "$cm" ] && [ "$mv" = "$cm" ] && [ "$dirs" = "llmos-$cm" ]
}
check "PACKAGE_VERSION, the DKMS folder and the module's version are the CMake project's" \
	versions_agree

kernel_range() {
	(
		dkms_conf "$dkms/dkms.conf"
		for k in 6.9.0 6.9.12-amd64 6.12.117+deb12-amd64 6.15.0-rc1 7.0.0 10.2.3; do
			[[ $k =~ $BUILD_EXCLUSIVE_KERNEL ]] || { echo "refuses $k"; exit 1; }
		done
		for k in 6.8.12-amd64 6.1.0-28-amd64 6.0.0 5.15.0-100-generic 4.19.0; do
			if [[ $k =~ $BUILD_EXCLUSIVE_KERNEL ]]; then echo "accepts $k"; exit 1; fi
		done
	)
}
check "BUILD_EXCLUSIVE_KERNEL: 6.9 and later only" kernel_range

# What `dkms build` does: copy the tree to $dkms_tree/llmos/VERSION/build,
# run MAKE[0] there against the kernel's headers, take
# BUILT_MODULE_LOCATION/BUILT_MODULE_NAME.ko.
ko=
dkms_build() {
	local t=$stage/dkms
	mkdir -p "$t/llmos/$version" && cp -a "$dkms" "$t/llmos/$version/build" || return 1
	ko=$(
		# shellcheck disable=SC1090
		. "$kenv"
		kernelver=$(cat "$LLMOS_KDIR/include/config/kernel.release")
		kernel_source_dir=$LLMOS_KDIR dkms_tree=$t dkms_conf "$t/llmos/$version/build/dkms.conf"
		[[ $kernelver =~ $BUILD_EXCLUSIVE_KERNEL ]] || { echo "refuses $kernelver" >&2; exit 1; }
		cd "$t/llmos/$version/build" && eval "${MAKE[0]}" >&2 || exit 1
		f=$PWD/${BUILT_MODULE_LOCATION[0]}/${BUILT_MODULE_NAME[0]}.ko
		[ -f "$f" ] || { echo "no $f" >&2; exit 1; }
		got=$(modinfo -F vermagic "$f" | cut -d' ' -f1)
		[ "$got" = "$kernelver" ] || { echo "vermagic $got, headers $kernelver" >&2; exit 1; }
		echo "$f"
	) || { ko=; return 1; }
}
built_version() {
	local got
	got=$(modinfo -F version "$ko") && echo "modinfo version $got" && [ "$got" = "$version" ]
}
if [ ! -f "$kenv" ]; then
	skip "the DKMS tree builds llmos.ko against the cached kernel headers" "no $kenv (make deps)"
	skip "the module built from it is version $version" "no $kenv (make deps)"
else
	check "the DKMS tree builds llmos.ko against the cached kernel headers" dkms_build
	if [ -n "$ko" ]; then
		check "the module built from it is version $version" built_version
	else
		skip "the module built from it is version $version" "it did not build"
	fi
fi

# install-kmod (it builds nothing; -o kmod is left from when it did): into the release of
# its vermagic (a KVER naming another is refused), with modules-load.d, and
# no depmod in a staged tree.
install_kmod() {
	local kver t=$stage/km
	kver=$(modinfo -F vermagic "$src/kmod/llmos.ko" | cut -d' ' -f1)
	mk -o kmod install-kmod DESTDIR="$t" &&
		cmp "$src/kmod/llmos.ko" "$t/lib/modules/$kver/extra/llmos.ko" &&
		grep -qx llmos "$t/usr/lib/modules-load.d/llmos.conf" &&
		cmp "$src/packaging/llmosd-device.conf" \
			"$t/usr/lib/systemd/system/llmosd.service.d/llmos-device.conf" &&
		! mk -o kmod install-kmod DESTDIR="$t" KVER=6.9.0-test 2>"$stage/kver.err" &&
		grep -q "built for $kver, not 6.9.0-test" "$stage/kver.err" &&
		[ ! -e "$t/lib/modules/6.9.0-test" ] &&
		mk -o kmod install-kmod DESTDIR="$t" KVER="$kver" &&
		! find "$t" -name 'modules.dep*' | grep . &&
		stubs && rm -f "$stage/calls" &&
		PATH=$stage/stubs:$PATH mk -o kmod install-kmod DESTDIR= MODULEDIR="$t/real" \
			MODULESLOADDIR="$t/real" UNITDIR="$t/real/system" 2>"$stage/nokernel.err" &&
		[ -f "$t/real/$kver/extra/llmos.ko" ] && grep -qx "depmod -a $kver" "$stage/calls" &&
		# Its kernel is not installed there: not set to load at boot.
		grep -q "is not installed on this machine: the module is not set to load at boot" \
			"$stage/nokernel.err" &&
		[ ! -e "$t/real/llmos.conf" ] &&
		[ ! -e "$t/real/system/llmosd.service.d/llmos-device.conf" ] &&
		mkdir -p "$t/real/$kver/kernel" &&
		PATH=$stage/stubs:$PATH mk -o kmod install-kmod DESTDIR= MODULEDIR="$t/real" \
			MODULESLOADDIR="$t/real" UNITDIR="$t/real/system" &&
		grep -qx llmos "$t/real/llmos.conf" &&
		[ -f "$t/real/system/llmosd.service.d/llmos-device.conf" ]
}
if [ -f "$src/kmod/llmos.ko" ]; then
	check "install-kmod: llmos.ko in lib/modules/RELEASE/extra, loaded at boot, depmod" install_kmod
else
	skip "install-kmod: llmos.ko in lib/modules/RELEASE/extra, loaded at boot, depmod" \
		"kmod/llmos.ko is not built (make kmod)"
fi

# cmake --install puts the program the unit starts where ExecStart says.
if [ -x "$build/tools/llmosd/llmosd" ]; then
	check "the unit's ExecStart program is installed (cmake --install)" \
		test -x "$root$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")"
else
	skip "the unit's ExecStart program is installed (cmake --install)" "llmosd is not built"
fi

# make install checks that something was built before it installs anything.
nothing_built() {
	! mk install DESTDIR="$stage/nb" BUILD="$stage/none" && [ ! -e "$stage/nb" ]
}
check "make install with nothing built installs nothing" nothing_built

# make uninstall takes away what install, install-dkms and install-kmod put
# in place, but the settings in /etc/default/llmosd.
uninstall_all() {
	local t=$stage/un left
	mkdir -p "$stage/b" && ln -sfn "$build" "$stage/b/default" &&
		mk install install-dkms DESTDIR="$t" BUILD="$stage/b" &&
		{ [ ! -f "$src/kmod/llmos.ko" ] || mk install-kmod DESTDIR="$t"; } &&
		[ -x "$t/usr/local/bin/llmosd" ] && [ -f "$t/usr/src/llmos-$version/dkms.conf" ] &&
		mk uninstall DESTDIR="$t" BUILD="$stage/b" || return 1
	left=$(cd "$t" && find . ! -type d)
	echo "left: $left"
	[ "$left" = ./etc/default/llmosd ] && [ ! -e "$t/usr/local/include/llmos" ] &&
		[ ! -e "$t/usr/lib/systemd/system/llmosd.service.d" ]
}
if [ -x "$build/tools/llmosd/llmosd" ]; then
	check "make uninstall removes what the install targets put in place, but the settings" \
		uninstall_all
else
	skip "make uninstall removes what the install targets put in place, but the settings" \
		"llmosd is not built"
fi

# The daemon as built: the options the example mentions exist, and systemd
# waits longer than the daemon's default drain before it kills.
llmosd=$build/tools/llmosd/llmosd
options_exist() {
	local help opt
	help=$("$llmosd" --help) || return 1
	while read -r opt; do
		grep -q -- "$opt\b" <<<"$help" || { echo "llmosd --help has no $opt"; return 1; }
	done < <(grep -o -- '--[a-z][a-z-]*' "$root/etc/default/llmosd" | sort -u)
}
stop_timeout() {
	local drain stop
	drain=$("$llmosd" --help | sed -n 's/.*--drain-timeout [A-Z]*=\([0-9]*\).*/\1/p')
	stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' "$unit")
	echo "default --drain-timeout ${drain:-?} s, TimeoutStopSec ${stop:-?} s"
	[ -n "$drain" ] && [ -n "$stop" ] && [ "$stop" -gt "$drain" ]
}
if [ -x "$llmosd" ]; then
	check "every llmosd option /etc/default/llmosd mentions is in llmosd --help" options_exist
	check "TimeoutStopSec is longer than llmosd's default --drain-timeout" stop_timeout
else
	skip "every llmosd option /etc/default/llmosd mentions is in llmosd --help" "llmosd is not built"
	skip "TimeoutStopSec is longer than llmosd's default --drain-timeout" "llmosd is not built"
fi

if command -v shellcheck >/dev/null; then
	check "shellcheck: this test" shellcheck "$src/tests/install/install_test.sh"
else
	skip "shellcheck: this test" "shellcheck is not installed"
fi
# Each case counted by make check (tools/check.sh): "PASSED FAILED
# SKIPPED", then each skip with its reason.
if [ -n "${LLMOS_TEST_COUNTS:-}" ]; then
	mkdir -p "$(dirname "$LLMOS_TEST_COUNTS")"
	{
		echo "$passes $fails ${#skips[@]}"
		[ ${#skips[@]} -eq 0 ] || printf '%s\n' "${skips[@]}"
	} >"$LLMOS_TEST_COUNTS"
fi
[ "$fails" -eq 0 ]
