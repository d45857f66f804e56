#!/bin/sh
# SPDX-License-Identifier: MIT
#
# llmosd on the GPU engine with its mindspaces in the module, in the VM:
# GPU machines cannot load the module, so the daemon here is llmosd_emu,
# built over the emulated device (tests/support/cuda_emu). Its completions
# are the conformance model's; a session's second turn finds its K/V rows
# in GPU memory while the session's bookkeeping lives in a persistent
# module mindspace; after a restart the mindspace is there but the rows
# are not, and the turn starts over to the same text as the whole
# conversation in one request. With --publish-gpu-kv a session's rows are
# a module mindspace over their dma-buf while the daemon holds them: the
# same bytes for the same conversation, remade after each turn, gone with
# the daemon. Prints TAP.
set -u
out=/tmp/llmosd_gpu_emu.out
. "$(dirname "$0")/tap.sh"

echo "TAP version 13"
model=/data/llama-tiny-f32.gguf
if [ ! -x /bin/llmosd_emu ] || [ ! -f "$model" ]; then
	skip "llmosd on the emulated GPU and the kernel backend" \
		"llmosd_emu or the model is not in this VM (--bin, --data)"
	echo "1..$n"
	exit 0
fi
ip link set lo up 2>/dev/null || ifconfig lo up

pid=
url=
start() { # log: start the daemon, set pid and url
	rm -f /tmp/llmosd_emu.port
	llmosd_emu --backend kernel --engine cuda --publish-gpu-kv --model "tiny=$model" \
		--listen 127.0.0.1:0 \
		--port-file /tmp/llmosd_emu.port --workers 1 --slots 2 --ctx 256 2>"$1" &
	pid=$!
	i=0
	while [ ! -s /tmp/llmosd_emu.port ] && [ $i -lt 600 ] && kill -0 "$pid" 2>/dev/null; do
		sleep 0.1
		i=$((i + 1))
	done
	url=http://127.0.0.1:$(cat /tmp/llmosd_emu.port 2>/dev/null)
}
stop() { # log: SIGTERM, wait, say whether it drained and exited 0
	kill "$pid"
	wait "$pid"
	rc=$?
	expect "SIGTERM drains and stops it (exit $rc)" sh -c \
		'[ "$1" = 0 ] && grep -q "draining" "$2" && grep -q "stopped" "$2"' sh "$rc" "$1"
}
# complete JSON: the completion's text, as JSON escapes it
complete() {
	wget -q -O - --header 'Content-Type: application/json' --post-data "$1" "$url/v1/completions" |
		sed -n 's/.*"text":"\(.*\)"}\],"created".*/\1/p'
}
metric() { wget -q -O - "$url/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
turn() { # prompt [session]
	if [ -n "${2:-}" ]; then
		complete "{\"model\": \"tiny\", \"prompt\": \"$1\", \"max_tokens\": 8, \"temperature\": 0, \"session\": \"$2\"}"
	else
		complete "{\"model\": \"tiny\", \"prompt\": \"$1\", \"max_tokens\": 8, \"temperature\": 0}"
	fi
}

llmosctl ms rm llmosd.s.emu >/dev/null 2>&1
llmosctl ms rm llmosd.s.emu2 >/dev/null 2>&1
start /tmp/llmosd_emu.log
# (its log is shown when it does not)
expect "llmosd_emu starts on the kernel backend and the emulated GPU" sh -c \
	'grep -q "(kernel backend, cuda:0 (llmos CUDA emulator" "$1" || { cat "$1"; exit 1; }' sh \
	/tmp/llmosd_emu.log
expect "a completion gives the conformance model's greedy continuation" sh -c \
	"$(cat <<'EOF'
wget -q -O - --header 'Content-Type: application/json' \
	--post-data '{"model": "tiny", "prompt": "Hello world", "max_tokens": 16, "temperature": 0}' \
	"$0/v1/completions" | grep -q '" pu.*fo vxszg pq bguhergw.* wcf<woU vww bdjykfzkas pmtn t"'
EOF
)" "$url"

said=$(turn "Hello world" emu)
expect "a session's K/V rows are a dma-buf mindspace of the module" sh -c \
	'llmosctl ms info llmosd.k.emu >/tmp/k.info &&
	 grep -q "backing: *dma-buf" /tmp/k.info && grep -q "persistent: no" /tmp/k.info'
expect "the daemon counts it" sh -c '[ "$1" = 1 ]' sh "$(metric llmosd_gpu_kv_published)"
llmosctl ms read llmosd.k.emu >/tmp/rows.emu 2>"$out"
expect "its bytes hold the rows" sh -c \
	'[ "$(wc -c </tmp/rows.emu)" -ge 2097152 ] && [ "$(tr -d "\\000" </tmp/rows.emu | wc -c)" -gt 0 ]'
said2=$(turn "Hello world" emu2)
expect "the same conversation in another session has the same rows" sh -c \
	'[ "$1" = "$2" ] && llmosctl ms read llmosd.k.emu2 | cmp - /tmp/rows.emu' sh "$said" "$said2"
turn2=$(turn " and more" emu)
expect "after the next turn they are published again, with its rows" sh -c \
	'llmosctl ms info llmosd.k.emu | grep -q "backing: *dma-buf" &&
	 ! llmosctl ms read llmosd.k.emu | cmp -s - /tmp/rows.emu'
expect "the session's second turn finds its rows in GPU memory" sh -c \
	'[ -n "$1" ] && [ "${2:-0}" -ge 1 ]' sh "$turn2" "$(metric llmosd_gpu_kv_resumed_total)"
expect "its bookkeeping is a persistent mindspace of the module" sh -c \
	'llmosctl ms info llmosd.s.emu | grep -q "persistent: yes"'
whole=$(turn "Hello world$said and more")
expect "the second turn is what the whole conversation gives" sh -c '[ "$1" = "$2" ]' sh \
	"$turn2" "$whole"
stop /tmp/llmosd_emu.log
expect "the rows' mindspaces go with the daemon, the sessions' stay" sh -c \
	'! llmosctl ms info llmosd.k.emu >/dev/null 2>&1 &&
	 ! llmosctl ms info llmosd.k.emu2 >/dev/null 2>&1 && llmosctl ms info llmosd.s.emu2 >/dev/null'

start /tmp/llmosd_emu2.log
turn3=$(turn " again" emu)
expect "after a restart the mindspace is there but the rows are not" sh -c \
	'[ -n "$1" ] && [ "$2" = 0 ]' sh "$turn3" "$(metric llmosd_gpu_kv_resumed_total)"
whole=$(turn "Hello world$said and more$turn2 again")
expect "the turn starts over to the same text as the whole conversation" sh -c \
	'[ "$1" = "$2" ]' sh "$turn3" "$whole"
stop /tmp/llmosd_emu2.log
expect "the sessions' mindspaces are removed" sh -c \
	'llmosctl ms rm llmosd.s.emu && llmosctl ms rm llmosd.s.emu2'
echo "1..$n"
