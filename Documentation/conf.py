# SPDX-License-Identifier: MIT
#
# Sphinx configuration of the llmos documentation (make htmldocs).
#
# kernel-doc comments are pulled in with the kernel's own Sphinx extension
# (Documentation/sphinx/kerneldoc.py) and scripts/kernel-doc, both used
# where tools/deps.sh unpacked linux-source-6.12 ($LLMOS_KSRC, recorded in
# $LLMOS_CACHE/kernel.env); nothing of the kernel is copied here.
import os
import sys


def _kernel_source():
    ksrc = os.environ.get("LLMOS_KSRC")
    if ksrc:
        return ksrc
    env = os.path.join(os.environ.get("LLMOS_CACHE", "/var/cache/llmos"), "kernel.env")
    try:
        with open(env, encoding="utf-8") as f:
            for line in f:
                if line.startswith("LLMOS_KSRC="):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    sys.exit("conf.py: no kernel source: run make deps (or set LLMOS_KSRC)")


_ksrc = _kernel_source()
sys.path.insert(0, os.path.join(_ksrc, "Documentation", "sphinx"))

project = "llmos"
copyright = "the llmos authors"
author = "the llmos authors"

extensions = ["kerneldoc"]
kerneldoc_bin = os.path.join(_ksrc, "scripts", "kernel-doc")
kerneldoc_srctree = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
kerneldoc_verbosity = 1

# Attributes in kernel prototypes that the C domain must skip.
c_id_attributes = ["__bpf_kfunc", "__ksym"]

root_doc = "index"
highlight_language = "none"
primary_domain = "c"
html_theme = "alabaster"
html_show_sourcelink = False
html_copy_source = False
