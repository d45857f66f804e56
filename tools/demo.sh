#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The host half of `make demo`: llmosd serving a generated model on this
# machine (the local backend: this kernel cannot load the module; the VM
# half shows the module and a BPF policy), a streamed completion, two
# sessions at different priorities, a session resumed after a restart, and
# the metrics. It finishes by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/default}
work=$(mktemp -d /tmp/llmos-demo-XXXXXX)
pid=
cleanup() {
	local rc=$?
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	if [ "$rc" != 0 ] && [ -s "$work/llmosd.log" ]; then
		echo "demo: failed; llmosd said:" >&2
		cat "$work/llmosd.log" >&2
	fi
	rm -rf "$work"
}
trap cleanup EXIT
export LLMOS_LOCAL_DIR=$work/ms

say() { printf '\n# %s\n' "$*"; }
show() {
	printf '$ %s\n' "$*"
	"$@"
}

start() {
	rm -f "$work/port"
	"$build/tools/llmosd/llmosd" --backend local --model "demo=$work/demo.gguf" \
		--listen 127.0.0.1:0 --port-file "$work/port" --workers 1 --slots 4 \
		2>>"$work/llmosd.log" &
	pid=$!
	for _ in $(seq 200); do
		[ -s "$work/port" ] && break
		kill -0 "$pid" 2>/dev/null || { echo "demo: llmosd did not start" >&2; exit 1; }
		sleep 0.05
	done
	[ -s "$work/port" ] || { echo "demo: llmosd did not listen within 10 s" >&2; exit 1; }
	port=$(cat "$work/port")
	url=http://127.0.0.1:$port
}

say "A test model: llama architecture, Q8_0 weights, a SentencePiece vocabulary."
show "$build/tools/mkmodel/llmos-mkmodel" --preset tiny --n-embd 256 --n-ff 512 \
	--type q8_0 -o "$work/demo.gguf"

say "llmosd serves it (OpenAI-compatible API on loopback, local backend)."
start
show curl -sS --fail-with-body "$url/v1/models"
echo

say "llmosctl talks to it: the models, then a prompt streamed to the terminal."
show "$build/tools/llmosctl" --server "$url" model list
show "$build/tools/llmosctl" --server "$url" run "Tell me about mindspaces." -n 16 -t 0 --verbose

say "The same over HTTP: a streamed chat completion (server-sent events):"
show curl -sS --fail-with-body -N "$url/v1/chat/completions" -d '{"model": "demo", "max_tokens": 12,
  "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
  "messages": [{"role": "user", "content": "Tell me about mindspaces."}]}'

say "Priorities: six long requests at priority 1 fill the worker's four slots and"
say "queue; then session 'alice' (priority 1) and session 'bob' (priority 200) arrive."
say "bob is handed the next free slot, ahead of everything still queued."
: >"$work/order"
req() { # name priority max_tokens [session]
	local body="{\"model\": \"demo\", \"priority\": $2, \"max_tokens\": $3, \"temperature\": 0,"
	[ -n "${4:-}" ] && body+=" \"session\": \"$4\","
	body+=" \"messages\": [{\"role\": \"user\", \"content\": \"Hello from $1\"}]}"
	curl -sS --fail-with-body "$url/v1/chat/completions" -o "$work/$1.json" -d "$body" ||
		{ echo "demo: $1 was refused: $(cat "$work/$1.json")" >&2; return 1; }
	echo "$1" >>"$work/order"
}
jobs=()
for i in 1 2 3 4 5 6; do
	req "filler-$i" 1 400 &
	jobs+=($!)
done
sleep 0.2
req alice 1 40 alice &
jobs+=($!)
sleep 0.05
req bob 200 40 bob &
jobs+=($!)
# Each one's status (a refused request ends the demo, saying so).
for j in "${jobs[@]}"; do
	wait "$j"
done
printf 'finished, in order: %s\n' "$(tr '\n' ' ' <"$work/order")"
for name in alice bob; do
	printf '%s replied: %s\n' "$name" "$(sed 's/.*"content":"\([^"]*\)".*/\1/' "$work/$name.json" | head -c 60)"
done

say "Restart llmosd (SIGTERM drains it): the sessions live in persistent mindspaces."
kill "$pid"
wait "$pid" || true
pid=
start
show "$build/tools/llmosctl" --backend local ms list
echo
say "The next turn of bob's session sends only the new message; the server has the rest."
show curl -sS --fail-with-body "$url/v1/chat/completions" -d '{"model": "demo", "session": "bob",
  "max_tokens": 8, "temperature": 0,
  "messages": [{"role": "user", "content": "And then?"}]}'
echo

say "Prometheus metrics:"
curl -sS --fail-with-body "$url/metrics" | grep -E '^llmosd_(requests_total|generated_tokens_total|in_flight|queue_depth|mindspace_bytes|time_to_first_token_seconds_count) '

kill "$pid"
wait "$pid" || true
pid=
say "llmosd log:"
sed 's/^/  /' "$work/llmosd.log"
say "Done: llmosd answered, streamed, kept two sessions across a restart, and drained on SIGTERM."
