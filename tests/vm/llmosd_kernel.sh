#!/bin/sh
# SPDX-License-Identifier: MIT
#
# llmosd on the kernel backend, in the VM: the daemon serves the
# conformance model, its requests go through the module's scheduler and
# mindspaces, and it drains on SIGTERM. Prints TAP.
set -u
out=/tmp/llmosd_kernel.out
. "$(dirname "$0")/tap.sh"

echo "TAP version 13"
model=/data/llama-tiny-f32.gguf
if [ ! -x /bin/llmosd ] || [ ! -f "$model" ]; then
	skip "llmosd on the kernel backend" "llmosd or the model is not in this VM (--bin, --data)"
	echo "1..$n"
	exit 0
fi
ip link set lo up 2>/dev/null || ifconfig lo up
completed() {
	llmosctl --json sched status | tr -d ' \n' | grep -o '"completed":[0-9]*' | head -n 1 | cut -d: -f2
}
before=$(completed)

start() { # ctx log: start llmosd, set pid, port and url
	rm -f /tmp/llmosd.port
	llmosd --backend kernel --model "tiny=$model" --listen 127.0.0.1:0 \
		--port-file /tmp/llmosd.port --workers 1 --slots 4 --ctx "$1" 2>"$2" &
	pid=$!
	i=0
	while [ ! -s /tmp/llmosd.port ] && [ $i -lt 300 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	port=$(cat /tmp/llmosd.port 2>/dev/null)
	url=http://127.0.0.1:$port
}
start 256 /tmp/llmosd.log
expect "llmosd starts on the kernel backend" sh -c \
	'[ -n "$1" ] && grep -q "(kernel backend, cpu (" /tmp/llmosd.log' sh "$port"
expect "health answers" sh -c "wget -q -O - $url/health | grep -q '\"ok\"'"
# Workers register a moment after llmosd listens: up to 30 s.
expect "the scheduler sees its worker" sh -c \
	'for i in $(seq 300); do
		llmosctl --json sched status | tr -d " \n" | grep -q "\"workers\":1" && exit 0
		sleep 0.1
	done
	exit 1'
expect "a completion gives the conformance model's greedy continuation" sh -c \
	"$(cat <<'EOF'
post() { wget -q -O - --header 'Content-Type: application/json' --post-data "$1" "$2"; }
post '{"model": "tiny", "prompt": "Hello world", "max_tokens": 16, "temperature": 0}' \
	"$0/v1/completions" | grep -q '" pu.*fo vxszg pq bguhergw.* wcf<woU vww bdjykfzkas pmtn t"'
EOF
)" "$url"
expect "a streamed chat completion ends with [DONE]" sh -c \
	"$(cat <<'EOF'
post() { wget -q -O - --header 'Content-Type: application/json' --post-data "$1" "$2"; }
post '{"model": "tiny", "stream": true, "max_tokens": 4,
       "messages": [{"role": "user", "content": "Hi"}]}' "$0/v1/chat/completions" |
	tail -n 2 | grep -q "data: \[DONE\]"
EOF
)" "$url"
expect "a session lives in a persistent mindspace of the module" sh -c \
	"$(cat <<'EOF'
post() { wget -q -O - --header 'Content-Type: application/json' --post-data "$1" "$2"; }
post '{"model": "tiny", "session": "vm", "max_tokens": 4,
       "messages": [{"role": "user", "content": "Hi"}]}' "$0/v1/chat/completions" >/dev/null &&
llmosctl ms info llmosd.s.vm | grep -q "persistent: yes"
EOF
)" "$url"
after=$(completed)
expect "the module counted the requests ($before -> $after)" sh -c '[ $(($2 - $1)) -ge 3 ]' sh \
	"$before" "$after"
kill "$pid"
wait "$pid"
rc=$?
expect "SIGTERM drains and stops it (exit $rc)" sh -c \
	'[ "$1" = 0 ] && grep -q "draining" /tmp/llmosd.log && grep -q "stopped" /tmp/llmosd.log' \
	sh "$rc"

# The session was kept for --ctx 256. Under --ctx 65536 it needs a larger
# mindspace: with a quota that leaves no room for one, the turn fails and
# the session stays as it was; without, it moves, with its conversation.
length() {
	llmosctl --json ms info llmosd.s.vm | tr -d ' \n' | grep -o '"length":[0-9]*' | cut -d: -f2
}
used() { llmosctl --json ms quota | tr -d ' \n' | grep -o '"used":[0-9]*' | cut -d: -f2; }
text() { llmosctl ms read llmosd.s.vm --offset 4096 --length 4096; }
text >/tmp/vm.text
len=$(length)
start 65536 /tmp/llmosd2.log
again='{"model": "tiny", "session": "vm", "max_tokens": 4, "messages": [{"role": "user", "content": "Again"}]}'
llmosctl ms quota --set $(($(used) + 1048576)) >/dev/null
wget -q -O /dev/null --header 'Content-Type: application/json' --post-data "$again" \
	"$url/v1/chat/completions" 2>"$out.reply"
llmosctl ms quota --set default >/dev/null
expect "a session that needs a larger store than the quota allows is refused, and says so" \
	sh -c 'cat "$0" /tmp/llmosd2.log; grep -q "500 Internal Server Error" "$0" &&
		grep -q "session .vm.: a larger store could not be made (Disk quota exceeded); it keeps" \
			/tmp/llmosd2.log' "$out.reply"
now=$(length)
text >/tmp/vm.text.now
expect "and stays as it was: its length ($len, now $now) and conversation" sh -c \
	'[ "$0" = "$1" ] && grep -q "\"Hi\"" /tmp/vm.text && cmp /tmp/vm.text /tmp/vm.text.now' \
	"$len" "$now"
wget -q -O "$out.reply" --header 'Content-Type: application/json' --post-data "$again" \
	"$url/v1/chat/completions"
rc=$?
now=$(length)
text | tr -d '\0' >/tmp/vm.text.now
expect "with room, it moves to a larger mindspace ($len -> $now) with its conversation" sh -c \
	'cat "$3" /tmp/vm.text.now; [ "$0" = 0 ] && [ "$2" -gt "$1" ] &&
	grep -q "\"Hi\"" /tmp/vm.text.now && grep -q "\"Again\"" /tmp/vm.text.now' \
	"$rc" "$len" "$now" "$out.reply"
kill "$pid"
wait "$pid"
llmosctl ms rm llmosd.s.vm >/dev/null 2>&1

# As a user the module lets submit as its own tenant alone (uid 1000):
# llmosd says so at start, requests of other tenants get 403
# tenant_not_granted, and once root grants it more, those are served.
mkdir -p /etc /tmp/alice && chown 1000:1000 /tmp/alice
grep -q '^alice:' /etc/passwd 2>/dev/null || echo 'alice:x:1000:1000::/tmp/alice:/bin/sh' >>/etc/passwd
devmode=$(stat -c %a /dev/llmos)
chmod 0666 /dev/llmos
# Its workers need the right to register: without it, llmosd stops and says so.
expect "llmosd of a user not granted workers stops at start and says why" sh -c \
	'su -s /bin/sh alice -c "exec llmosd --backend kernel --model tiny=$0 --listen 127.0.0.1:0 \
		--workers 1 --ctx 256" >/tmp/alice/log0 2>&1; [ $? -ne 0 ] &&
	 grep -q "the llmos module lets this user register no workers" /tmp/alice/log0 &&
	 grep -q "llmosctl sched grant USER --worker" /tmp/alice/log0' "$model"
llmosctl sched grant alice --worker >/dev/null
su -s /bin/sh alice -c "exec llmosd --backend kernel --model tiny=$model --listen 127.0.0.1:0 \
	--port-file /tmp/alice/port --workers 1 --slots 2 --ctx 256 2>/tmp/alice/log" &
pid=$!
i=0
while [ ! -s /tmp/alice/port ] && [ $i -lt 300 ]; do
	sleep 0.1
	i=$((i + 1))
done
url=http://127.0.0.1:$(cat /tmp/alice/port 2>/dev/null)
ask() { # TENANT: the reply's body, wget's messages in $out.reply
	wget -q -O - --header 'Content-Type: application/json' --post-data \
		"{\"model\": \"tiny\", \"prompt\": \"Hi\", \"max_tokens\": 2, \"tenant\": $1}" \
		"$url/v1/completions" 2>"$out.reply"
}
served() { ask "$1" | grep -q '"choices"'; }
# The 403's body: busybox wget shows none, so the request goes through nc.
refused() {
	body="{\"model\": \"tiny\", \"prompt\": \"Hi\", \"max_tokens\": 2, \"tenant\": $1}"
	# (busybox nc stops reading once its input ends: that waits for the
	# answer's body, 30 s at most, and a moment for its end)
	: >"$out.reply"
	{
		printf 'POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
			"${#body}" "$body"
		i=0
		while [ $i -lt 300 ] && ! grep -q -e '"error"' -e '"choices"' "$out.reply"; do
			sleep 0.1
			i=$((i + 1))
		done
		sleep 0.3
	} | nc 127.0.0.1 "${url##*:}" >>"$out.reply" 2>&1
	head -n 1 "$out.reply" | grep -q " 403 " && grep -q '"tenant_not_granted"' "$out.reply"
}
expect "llmosd of a user granted workers alone says which tenants it will be refused" \
	grep -q "lets this user submit as tenant 1000 only: requests naming others get 403 tenant_not_granted, those naming none are 1000's" \
	/tmp/alice/log
expect "its own tenant's request is served" served 1000
expect "another tenant's request gets 403 tenant_not_granted" refused 0
expect "a request naming no tenant is its own tenant's" sh -c \
	'wget -q -O - --header "Content-Type: application/json" --post-data \
		"{\"model\": \"tiny\", \"prompt\": \"Hi\", \"max_tokens\": 2}" \
		"$0/v1/completions" | grep -q "\"choices\""' "$url"
llmosctl sched grant 1000 0-9 >/dev/null
expect "once root grants it tenants 0-9, tenant 0 is served" served 0
expect "and tenant 1000 is not" refused 1000
llmosctl sched grant 1000 --reset >/dev/null
kill "$pid"
wait "$pid"
chmod "$devmode" /dev/llmos
echo "1..$n"
