#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The documentation: the Sphinx tree in Documentation/, the manual pages in
# man/, and a check that every interface is documented.
#
#   tools/docs.sh html       build/htmldocs (Sphinx with the kernel's
#                            kernel-doc extension; any warning fails)
#   tools/docs.sh man        every man/*.[1-8] renders with `man --warnings`
#                            without a word on stderr (text in build/man)
#   tools/docs.sh coverage   every ioctl, uring_cmd opcode, kfunc, ops
#                            callback, module parameter, llmosd endpoint,
#                            request field, metric and option, llmosctl
#                            command and option, and libllmos class and
#                            function is in the built docs or the man pages
#                            (needs html and man first)
#   tools/docs.sh check      all three: make check's "docs" step
#
# The coverage check reads the sources (not the binaries), so it needs no
# build: what it finds and where it looks for each kind is in coverage()
# below. Exit status non-zero on any warning or anything undocumented, each
# named on its own line.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${LLMOS_DOCS_BUILD:-build}
HTML=$BUILD/htmldocs
MANOUT=$BUILD/man

die() { printf 'docs: %s\n' "$*" >&2; exit 1; }

html() {
	command -v sphinx-build >/dev/null ||
		die "sphinx-build is missing (python3-sphinx; make deps)"
	local err rc=0
	err=$(mktemp)
	# -E: read every document again, so no warning hides in a cache.
	rm -rf "$BUILD/docs-doctrees"
	sphinx-build -q -E -W --keep-going -b html -d "$BUILD/docs-doctrees" \
		Documentation "$HTML" 2>"$err" || rc=$?
	# The kernel-doc extension prints kernel-doc's own warnings on stderr
	# without telling Sphinx: any output at all is a failure.
	if [ $rc -ne 0 ] || [ -s "$err" ]; then
		cat "$err" >&2
		rm -f "$err"
		die "Sphinx: warnings or errors above (status $rc)"
	fi
	rm -f "$err"
	echo "docs: html in $HTML"
}

man_pages() {
	command -v man >/dev/null || die "man is missing (man-db; make deps)"
	local page err bad=0 n=0
	rm -rf "$MANOUT"
	mkdir -p "$MANOUT"
	err=$(mktemp)
	for page in man/*.[1-8]; do
		# No hyphenation (HY=0), so that the text can be searched.
		if ! MANROFFOPT=-rHY=0 MANWIDTH=80 LC_ALL=C.UTF-8 \
			man --warnings -l "$page" >"$MANOUT/$(basename "$page").txt" 2>"$err" ||
			[ -s "$err" ]; then
			sed "s|^|$page: |" "$err" >&2
			echo "$page: does not render cleanly" >&2
			bad=1
		fi
		n=$((n + 1))
	done
	rm -f "$err"
	[ $bad -eq 0 ] || die "manual pages with warnings (above)"
	[ $n -gt 0 ] || die "no manual pages in man/"
	echo "docs: $n manual pages render without warnings"
}

coverage() {
	if [ ! -d "$HTML" ] || [ ! -d "$MANOUT" ]; then
		die "coverage needs html and man first"
	fi
	python3 - "$HTML" "$MANOUT" <<'PY'
import html as htmlmod
import os
import re
import sys

html_dir, man_dir = sys.argv[1], sys.argv[2]
missing = []


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def norm(s):
    return re.sub(r"\s+", " ", s)


def page_text(name):
    """Text of a built HTML page, tags removed."""
    raw = read(os.path.join(html_dir, name + ".html"))
    raw = re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", raw)
    return norm(htmlmod.unescape(re.sub(r"<[^>]+>", " ", raw)))


def page_literals(name):
    """Inline literals (``x``) and literal blocks of a built HTML page."""
    raw = read(os.path.join(html_dir, name + ".html"))
    parts = re.findall(r"(?s)<code\b[^>]*>(.*?)</code>", raw)
    parts += re.findall(r"(?s)<pre\b[^>]*>(.*?)</pre>", raw)
    return norm(htmlmod.unescape(re.sub(r"<[^>]+>", "", " \n ".join(parts))))


pages = sorted(f[:-5] for f in os.listdir(html_dir)
               if f.endswith(".html") and f not in ("genindex.html", "search.html"))
all_html = " ".join(page_text(p) for p in pages)


def man(name):
    path = os.path.join(man_dir, name + ".txt")
    return norm(read(path)) if os.path.exists(path) else None


man_pages = {f[:-4]: man(f[:-4]) for f in os.listdir(man_dir) if f.endswith(".txt")}


def man_section(name, title):
    """The text of one section (a heading at the left margin) of a page."""
    path = os.path.join(man_dir, name + ".txt")
    out, on = [], False
    for line in read(path).splitlines():
        if re.match(r"^[A-Z][A-Z0-9_ ]+$", line):
            on = line.strip() == title
            continue
        if on:
            out.append(line)
    return norm(" ".join(out))


def has_word(text, word):
    return text is not None and re.search(
        r"(?<![\w-])" + re.escape(word) + r"(?![\w])", text) is not None


def need(kind, name, where, ok):
    if not ok:
        missing.append(f"{kind} {name}: not documented in {where}")


# --- /dev/llmos: ioctls, uring_cmd opcodes, module parameters ------------
uapi = read("include/uapi/linux/llmos.h")
ioctls = re.findall(r"^#define\s+(LLMOS_(?:MSFD_)?IOC_\w+)\s", uapi, re.M)
if not ioctls:
    missing.append("no LLMOS_IOC_* found in include/uapi/linux/llmos.h")
for c in ioctls:
    need("ioctl", c, "the HTML docs", has_word(all_html, c))
    need("ioctl", c, "llmos(4)", has_word(man_pages.get("llmos.4"), c))

uring = read("kmod/uring.c")
ops = sorted(set(re.findall(r"case\s+(LLMOS_IOC_\w+)\s*:", uring)))
if not ops:
    missing.append("no uring_cmd opcodes found in kmod/uring.c")
api_uring = ""
raw = read(os.path.join(html_dir, "userspace-api.html"))
m = re.search(r'(?s)id="io-uring-commands".*?(?=<section id=|$)', raw)
if m:
    api_uring = norm(htmlmod.unescape(re.sub(r"<[^>]+>", " ", m.group(0))))
man_uring = man_section("llmos.4", "IO_URING COMMANDS")
for c in ops:
    need("uring_cmd", c, "userspace-api.rst, io_uring commands", has_word(api_uring, c))
    need("uring_cmd", c, "llmos(4), IO_URING COMMANDS", has_word(man_uring, c))

params = set()
for root, _, files in os.walk("kmod"):
    for f in files:
        if f.endswith(".c") and not f.endswith(".mod.c"):
            params |= set(re.findall(r"module_param\(\s*(\w+)", read(os.path.join(root, f))))
for p in sorted(params):
    need("module parameter", p, "admin-guide.rst", has_word(page_text("admin-guide"), p))
    need("module parameter", p, "llmos(4)", has_word(man_pages.get("llmos.4"), p))

# --- BPF policies: kfuncs and struct llmos_sched_ops ---------------------
kfuncs = re.findall(r"BTF_ID_FLAGS\(\s*func\s*,\s*(\w+)", read("kmod/kfuncs.c"))
declared = re.findall(r"(\w+)\s*\([^;]*\)\s*__ksym\s*;", read("bpf/llmos.bpf.h"))
for k in sorted(set(kfuncs) - set(declared)):
    missing.append(f"kfunc {k}: registered in kmod/kfuncs.c, not declared in bpf/llmos.bpf.h")
for k in sorted(set(declared) - set(kfuncs)):
    missing.append(f"kfunc {k}: declared in bpf/llmos.bpf.h, not registered in kmod/kfuncs.c")
bpf_lit = page_literals("bpf-scheduler")
for k in sorted(set(kfuncs) | set(declared)):
    need("kfunc", k, "bpf-scheduler.rst", has_word(bpf_lit, k))

m = re.search(r"(?s)struct llmos_sched_ops \{(.*?)\n\};", read("kmod/llmos_bpf.h"))
members = []
if m:
    for decl in m.group(1).split(";"):
        f = re.search(r"\(\s*\*\s*(\w+)\s*\)", decl) or \
            re.search(r"(\w+)\s*(?:\[[^\]]*\])?\s*$", decl.strip())
        if f:
            members.append(f.group(1))
if not members:
    missing.append("no members of struct llmos_sched_ops found in kmod/llmos_bpf.h")
for c in members:
    need("ops callback", c, "bpf-scheduler.rst", has_word(bpf_lit, c))

# --- llmosd: endpoints, request fields, metrics, options -----------------
httpc = read("tools/llmosd/http.cc")
api_text = page_text("http-api")
api_lit = page_literals("http-api")
routes = re.findall(r'_svr\.(Get|Post|Put|Patch|Delete)\(\s*(?:R"\((.*?)\)"|"(.*?)")', httpc)
if not routes:
    missing.append("no routes found in tools/llmosd/http.cc")
for method, raw_path, plain in routes:
    path = raw_path or plain
    shown = re.sub(r"\(\[\^/\]\+\)", "{model}", path)
    pat = re.escape(method.upper()) + r"\s+"
    for i, piece in enumerate(re.split(r"\(\[\^/\]\+\)", path)):
        if i:
            pat += r"[{<]?\w+[}>]?"
        pat += re.escape(piece)
    pat += r"(?![\w/{<])"
    need("endpoint", f"{method.upper()} {shown}", "http-api.rst",
         re.search(pat, api_text) is not None)
    need("endpoint", f"{method.upper()} {shown}", "llmosd(8)",
         re.search(pat, man_pages.get("llmosd.8") or "") is not None)

fields = set(re.findall(r'\b(?:string|integer|number|boolean|field)\(\s*[*\w]+\s*,\s*"(\w+)"',
                        read("tools/llmosd/openai.cc")))
fields |= set(re.findall(r'\.value\("(\w+)"', httpc))
for f in sorted(fields):
    need("request field", f, "http-api.rst", has_word(api_lit, f))

metrics = set(re.findall(r'"(llmosd_\w+)"', read("tools/llmosd/daemon.cc")))
for name in sorted(metrics):
    need("metric", name, "http-api.rst", has_word(api_lit, name))


def long_options(text, receiver):
    """--names of add_option/add_flag calls on `receiver` (app, a variable)."""
    out = []
    for spec in re.findall(re.escape(receiver) + r'(?:\.|->)add_(?:option|flag)\(\s*"([^"]+)"', text):
        out += [s for s in spec.split(",") if s.startswith("--")]
    return out


for o in long_options(read("tools/llmosd/main.cc"), "app"):
    need("llmosd option", o, "llmosd(8)", has_word(man_pages.get("llmosd.8"), o))

# --- llmosctl: commands, subcommands, options ----------------------------
ctl = {f: read(os.path.join("tools/llmosctl", f))
       for f in sorted(os.listdir("tools/llmosctl")) if f.endswith(".cc")}
top = []
for f, text in ctl.items():
    top += re.findall(r'\bapp\.add_subcommand\(\s*"([\w-]+)"', text)
if not top:
    missing.append("no llmosctl commands found in tools/llmosctl/*.cc")
for c in top:
    page = man_pages.get(f"llmosctl-{c}.8")
    need("llmosctl command", c, f"man/llmosctl-{c}.8", page is not None)
    need("llmosctl command", c, "llmosctl(8)", has_word(man_pages.get("llmosctl.8"), c))
    need("llmosctl command", c, "the HTML docs", f"llmosctl {c}" in all_html)

for f, text in ctl.items():
    # Which command each variable is (per file: names repeat across files).
    owner = {"app": None}
    for var, parent, name in re.findall(
            r'auto\*\s*(\w+)\s*=\s*(\w+)(?:\.|->)add_subcommand\(\s*"([\w-]+)"', text):
        owner[var] = name if parent == "app" else owner.get(parent)
    for parent, name in re.findall(r'\b(\w+)->add_subcommand\(\s*"([\w-]+)"', text):
        cmd = owner.get(parent)
        if cmd:
            page = man_pages.get(f"llmosctl-{cmd}.8")
            need("llmosctl command", f"{cmd} {name}", f"man/llmosctl-{cmd}.8",
                 page is not None and f"{cmd} {name}" in page)
    every_ctl_page = " ".join(t for p, t in man_pages.items() if p.startswith("llmosctl"))
    for var in set(re.findall(r"\b(\w+)(?:\.|->)add_(?:option|flag)\(", text)):
        for o in long_options(text, var):
            if var == "app":
                where, page = "llmosctl(8)", man_pages.get("llmosctl.8")
            elif owner.get(var):
                where = f"llmosctl-{owner[var]}(8)"
                page = man_pages.get(f"llmosctl-{owner[var]}.8")
            else:  # a helper's parameter: any llmosctl page will do
                where, page = "the llmosctl pages", every_ctl_page
            need("llmosctl option", o, where, has_word(page, o))

# --- libllmos: classes and free functions of the public headers ----------
man3 = " ".join(t for p, t in man_pages.items() if p.endswith(".3"))
hdr_dir = "userspace/include/llmos"
for f in sorted(os.listdir(hdr_dir)):
    text = read(os.path.join(hdr_dir, f))
    for cls in re.findall(r"^(?:template\s*<[^>]*>\s*)?class\s+(?:\[\[\w+\]\]\s+)?(\w+)\b[^;]*?\{",
                          text, re.M):
        need("libllmos class", f"llmos::{cls}", "a section 3 page", has_word(man3, cls))
    # Static factories of the entry-point classes.
    for cls, body in re.findall(r"(?ms)^class\s+(\w+)\b[^;]*?\{(.*?)^\};", text):
        for fn in re.findall(r"^\s+static\s+result<[^;]*?>\s+(\w+)\(", body, re.M):
            need("libllmos function", f"{cls}::{fn}", "a section 3 page",
                 f"{cls}::{fn}" in man3)
core = ["device.hh", "mindspace.hh", "sched.hh", "event_loop.hh", "channel.hh",
        "worker_pool.hh"]
nfree = 0
for f in core:
    text = re.sub(r"(?s)namespace detail \{.*?\} // namespace detail", "",
                  read(os.path.join(hdr_dir, f)))
    for fn in re.findall(r"^(?!(?:class|struct|enum|template|namespace|using|static|"
                         r"constexpr|inline|return)\b)[A-Za-z][\w:<>,* &]*?[\s*&](\w+)\(",
                         text, re.M):
        need("libllmos function", fn, "a section 3 page", has_word(man3, fn))
        nfree += 1

if missing:
    for line in missing:
        print("undocumented: " + line)
    print(f"docs: {len(missing)} undocumented (add them to Documentation/ or man/)")
    sys.exit(1)
print(f"docs: coverage complete: {len(ioctls)} ioctls, {len(ops)} uring_cmds, "
      f"{len(params)} module parameters, {len(set(kfuncs) | set(declared))} kfuncs, "
      f"{len(members)} ops members, {len(routes)} endpoints, {len(fields)} request fields, "
      f"{len(metrics)} metrics, {len(top)} llmosctl commands, {nfree} libllmos functions")
PY
}

case "${1:-check}" in
html) html ;;
man) man_pages ;;
coverage) coverage ;;
check)
	html
	man_pages
	coverage
	;;
*) die "usage: tools/docs.sh [html|man|coverage|check]" ;;
esac
