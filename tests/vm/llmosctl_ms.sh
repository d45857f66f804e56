#!/bin/sh
# SPDX-License-Identifier: MIT
#
# llmosctl ms end to end, in the VM with the module loaded: create, write,
# read, list, info, save, rm, load (bytes round-trip exactly), sparse files,
# and the errors a user sees for bad input. Prints TAP.
set -u
out=/tmp/llmosctl_ms.out
. "$(dirname "$0")/tap.sh"

# refuse DESCRIPTION STATUS PATTERN CMD...: CMD exits STATUS and says PATTERN
refuse() {
	d=$1 want=$2 pat=$3
	shift 3
	"$@" >"$out" 2>&1
	rc=$?
	if [ "$rc" -eq "$want" ] && grep -q -- "$pat" "$out"; then
		ok "$d"
	else
		echo "exit $rc, wanted $want and '$pat'" >>"$out"
		not_ok "$d"
	fi
}

echo "TAP version 13"
cd /tmp || exit 1

expect "create a 1M mindspace" llmosctl ms create conv --size 1M --mode 0640
expect "write text from an argument" llmosctl ms write conv "hello, mindspace"
expect "write at an offset" llmosctl ms write conv --offset 8192 "page three"
expect "read it back" sh -c '[ "$(llmosctl ms read conv --length 16)" = "hello, mindspace" ]'
expect "read at an offset" sh -c '[ "$(llmosctl ms read conv --offset 8192 --length 10)" = "page three" ]'
expect "list shows it" sh -c 'llmosctl ms list | grep -q " conv "'
expect "info --json has its size and mode" sh -c \
	'llmosctl --json ms info conv | grep -q "\"length\": 1048576" &&
	 llmosctl --json ms info conv | grep -q "\"mode\": \"0640\""'

dd if=/dev/urandom of=rand bs=4096 count=16 2>/dev/null
expect "write 64K of random bytes from stdin" sh -c 'llmosctl ms write conv --offset 65536 - <rand'
expect "read all of it" sh -c 'llmosctl ms read conv >before && [ "$(wc -c <before)" -eq 1048576 ]'
expect "save to a file" llmosctl ms save conv conv.llmosms
expect "remove it" llmosctl ms rm conv
refuse "it is gone" 1 "no such mindspace" llmosctl ms info conv
expect "load the file" llmosctl ms load conv.llmosms
expect "read all of the loaded one" sh -c \
	'llmosctl ms read conv >after && [ "$(wc -c <after)" -eq 1048576 ]'
expect "the bytes round-trip exactly" cmp before after
expect "the random part too" sh -c 'llmosctl ms read conv --offset 65536 --length 65536 | cmp - rand'
expect "the mode round-trips" sh -c 'llmosctl --json ms info conv | grep -q "\"mode\": \"0640\""'
refuse "loading onto a taken name fails" 1 "File exists" llmosctl ms load conv.llmosms
expect "load under another name" llmosctl ms load conv.llmosms --name conv-copy
expect "the copy matches" sh -c 'llmosctl ms read conv-copy | cmp - before'
expect "remove the copy" llmosctl ms rm 'conv-copy'

cp conv.llmosms bad.llmosms
# One byte of the random part changed (to a value it cannot already have).
at=$((4096 + 65536 + 100))
byte=$(dd if=bad.llmosms bs=1 skip=$at count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
printf "\\$(printf %o $(((byte + 1) % 256)))" | dd of=bad.llmosms bs=1 seek=$at conv=notrunc 2>/dev/null
refuse "a damaged file is refused" 1 "corrupt" llmosctl ms load bad.llmosms --name damaged
refuse "and leaves nothing behind" 1 "no such mindspace" llmosctl ms info damaged
head -c 8192 conv.llmosms >short.llmosms
refuse "a truncated file is refused" 1 "corrupt" llmosctl ms load short.llmosms --name short
refuse "a file that is no mindspace is refused" 1 "not a saved llmos mindspace" \
	llmosctl ms load rand --name x

expect "create a 64M mindspace" llmosctl ms create big --size 64M
expect "write one byte deep inside" llmosctl ms write big --offset 50000000 Z
expect "save it" llmosctl ms save big big.llmosms
expect "saving touched no untouched page" sh -c \
	'llmosctl --json ms info big | grep -q "\"resident\": 4096"'
expect "reading all of it neither" sh -c \
	'[ "$(llmosctl ms read big | wc -c)" -eq 67108864 ] &&
	 llmosctl --json ms info big | grep -q "\"resident\": 4096"'
expect "and it reads the byte in place" sh -c \
	'[ "$(llmosctl ms read big | tail -c +50000001 | head -c 1)" = Z ]'
expect "the file is sparse" sh -c '[ "$(du -k big.llmosms | cut -f1)" -lt 1024 ]'
expect "remove and load it" sh -c 'llmosctl ms rm big && llmosctl ms load big.llmosms'
expect "only the written page is resident after load" sh -c \
	'llmosctl --json ms info big | grep -q "\"resident\": 4096"'
expect "the byte is there" sh -c '[ "$(llmosctl ms read big --offset 50000000 --length 1)" = Z ]'
expect "remove it" llmosctl ms rm big

refuse "bad size is a usage error" 2 "bad --size" llmosctl ms create x --size 12Q
refuse "bad mode is a usage error" 2 "bad --mode" llmosctl ms create x --size 4K --mode 999
# (The module's own refusals of these: mindspace_test.)
refuse "an unaligned size is a usage error" 2 "not a multiple of the page size" \
	llmosctl ms create x --size 1000
refuse "a bad name is a usage error" 2 "bad mindspace name" llmosctl ms create 'a/b' --size 4K
refuse "writing past the end is a usage error" 2 "does not fit" \
	llmosctl ms write conv --offset 1048570 "too long"
refuse "removing what is not there" 1 "no such mindspace" llmosctl ms rm nosuch
expect "quota shows usage" sh -c 'llmosctl ms quota | grep -q "used:  1M"'
expect "root sets a quota" llmosctl ms quota --uid 1000 --set 1M
expect "and lifts it" sh -c 'llmosctl ms quota --uid 1000 --set default | grep -q unlimited'
expect "remove conv" llmosctl ms rm conv
expect "nothing is left" sh -c '[ -z "$(llmosctl --json ms list | grep "\"id\"")" ]'

echo "1..$n"
