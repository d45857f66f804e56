#!/bin/sh
# SPDX-License-Identifier: MIT
#
# llmosctl sched, top and bench against the module, in the VM. Prints TAP.
set -u
out=/tmp/llmosctl_sched.out
. "$(dirname "$0")/tap.sh"

echo "TAP version 13"
expect "sched status answers" sh -c 'llmosctl sched status | grep -q "policy:    built-in"'
expect "a tenant weight is set" llmosctl sched weight 12 300
expect "and shows in the status" sh -c \
	'llmosctl --json sched status | tr -d " \n" | grep -q "\"tenant\":12,\"weight\":300"'
expect "a bad weight is a usage error" sh -c 'llmosctl sched weight 12 0 2>/dev/null; [ $? -eq 2 ]'
expect "bench with synthetic workers completes every request" sh -c \
	'llmosctl --json bench --workers 2 --service exp:1 --arrival poisson:300 --requests 100 |
	 grep -q "\"requests\": 100"'
expect "the scheduler is idle afterwards" sh -c \
	'llmosctl --json sched status | tr -d " \n" | grep -q "\"workers\":0"'
expect "top prints rates" sh -c \
	'llmosctl --json top --interval 0.2 --iterations 1 | grep -q "completed_per_s"'
expect "root has its own tenant, and as an administrator any" sh -c \
	'llmosctl sched grant |
	 grep -qx "this user: tenant 0 (its own); as an administrator, any tenant and workers"'
expect "a uid is granted a range of tenants" sh -c \
	'llmosctl sched grant 1000 100-199 | grep -qx "user 1000: tenants 100-199 (granted)"'
expect "which the JSON reports" sh -c \
	'llmosctl --json sched grant 1000 | tr -d " \n" |
	 grep -qx "{\"first\":100,\"granted\":true,\"last\":199,\"uid\":1000,\"worker\":false}"'
expect "the module lists it" grep -qx "1000	100	199	0" /sys/kernel/debug/llmos/tenant_grants
expect "--worker alone keeps the range and adds the right to register workers" sh -c \
	'llmosctl sched grant 1000 --worker |
	 grep -qx "user 1000: tenants 100-199 (granted), registers workers" &&
	 grep -qx "1000	100	199	1" /sys/kernel/debug/llmos/tenant_grants'
expect "a new range keeps the right" sh -c \
	'llmosctl sched grant 1000 100-150 |
	 grep -qx "user 1000: tenants 100-150 (granted), registers workers"'
expect "--no-worker takes it away and keeps the range" sh -c \
	'llmosctl sched grant 1000 --no-worker | grep -qx "user 1000: tenants 100-150 (granted)"'
expect "--worker with --no-worker or --reset is a usage error" sh -c \
	'llmosctl sched grant 1000 --worker --no-worker 2>/dev/null; [ $? -eq 2 ] &&
	 { llmosctl sched grant 1000 --reset --worker 2>/dev/null; [ $? -eq 2 ]; }'
expect "all is every tenant" sh -c \
	'llmosctl sched grant 1000 all | grep -qx "user 1000: tenants 0-4294967295 (granted)"'
expect "reset gives the uid its own tenant back" sh -c \
	'llmosctl sched grant 1000 --reset | grep -qx "user 1000: tenant 1000 (its own)"'
expect "and the module forgets the grant" sh -c \
	'! grep -q "^1000	" /sys/kernel/debug/llmos/tenant_grants'
expect "a backwards range is a usage error" sh -c \
	'llmosctl sched grant 1000 9-3 2>/dev/null; [ $? -eq 2 ]'
expect "an unknown user is a usage error" sh -c \
	'llmosctl sched grant no-such-user 1-2 >/tmp/unknown.out 2>&1; [ $? -eq 2 ] &&
	 grep -q "no such user" /tmp/unknown.out'
# As uid 1000: bench submits as its own tenant, and says so when --tenants
# asks for more than it may name; it registers workers, which needs a grant.
mkdir -p /etc
grep -q '^alice:' /etc/passwd 2>/dev/null || echo 'alice:x:1000:1000::/tmp:/bin/sh' >>/etc/passwd
devmode=$(stat -c %a /dev/llmos)
chmod 0666 /dev/llmos
expect "bench as a user says why when it may not name --tenants 2" sh -c \
	'su -s /bin/sh alice -c "llmosctl bench --tenants 2 --requests 5" 2>&1 |
	 grep -q "lets this user submit as tenant 1000 (its own) only"'
expect "and that it may not register workers without a grant" sh -c \
	'su -s /bin/sh alice -c "llmosctl bench --requests 5" 2>&1 |
	 grep -q "bench registers workers, which the module lets this user do only when granted"'
llmosctl sched grant alice --worker >/dev/null
expect "granted workers, bench as a user submits as its own tenant" sh -c \
	'su -s /bin/sh alice -c "llmosctl --json bench --workers 1 --service exp:1 \
		--arrival poisson:300 --requests 20" | tr -d " \n" | grep -q "\"requests\":20" &&
	 llmosctl --json sched status | tr -d " \n" | grep -q "\"tenant\":1000,"'
llmosctl sched grant alice --reset >/dev/null
chmod "$devmode" /dev/llmos
echo "1..$n"
