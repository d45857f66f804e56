#!/bin/sh
# SPDX-License-Identifier: MIT
# What `make demo` shows inside the VM, once the module is loaded.
set -e
echo
echo "\$ ls -l /dev/llmos"
ls -l /dev/llmos
echo
echo "\$ llmosctl status"
llmosctl status
echo
echo "\$ llmosctl --json status"
llmosctl --json status
echo
