# SPDX-License-Identifier: MIT
#
# TAP helpers for the scripts in this folder, which source it (the VM runs
# only the folder's executable files). A script sets `out`, the file that
# keeps a case's output to show when it fails, before sourcing this.
n=0
# ok DESCRIPTION / not_ok DESCRIPTION: one result (not_ok shows $out)
ok() { n=$((n + 1)); echo "ok $n $1"; }
not_ok() {
	n=$((n + 1))
	echo "not ok $n $1"
	sed 's/^/# /' "$out"
	# (an output without a last newline would run into the next line)
	[ -z "$(tail -c 1 "$out")" ] || echo
}
# expect DESCRIPTION CMD...: CMD succeeds
expect() { d=$1; shift; if "$@" >"$out" 2>&1; then ok "$d"; else not_ok "$d"; fi; }
# skip DESCRIPTION REASON
skip() { n=$((n + 1)); echo "ok $n $1 # SKIP $2"; }
