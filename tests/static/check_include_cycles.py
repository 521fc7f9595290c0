#!/usr/bin/python3
"""Fail on an include cycle among the modules of common/, client/ and daemon/.

A module is a stem: foo.c, foo.h and foo_internal.h (what foo's files share)
are one module. Module X depends on
module Y when foo.c or foo.h of X includes Y's header ("y.h", resolved in
the same three folders). Any strongly connected set of more than one module
is a cycle: layers must depend one way (libcoffer: transport <- signer <-
session <- rpc <- public calls, each layer with its own header).

A header shared by several modules does not hide a cycle: including a
header also depends on every module that defines a function it declares
(a definition starts its line with the function's name, the code style);
except the installed API (coffer.h), which only the top layer implements.

Usage: check_include_cycles.py SOURCE_DIR   (exit 1 and the cycles if any)
"""
import os
import re
import sys

DIRS = ("common", "client", "daemon")
PUBLIC = {"coffer.h"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
DEFINITION = re.compile(r"^([A-Za-z_]\w*)\(", re.M)
COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
DECLARED = re.compile(r"\b([A-Za-z_]\w*)\s*\(")


def module(d, name):
    stem = name[:-2]
    if stem.endswith("_internal"):
        stem = stem[: -len("_internal")]
    return f"{d}/{stem}"


def modules(root):
    """{module: set of modules it includes}; a module is 'dir/stem'."""
    headers = {}
    files = []
    for d in DIRS:
        for name in sorted(os.listdir(os.path.join(root, d))):
            if name.endswith((".c", ".h")):
                files.append((d, name))
                if name.endswith(".h"):
                    headers.setdefault(name, module(d, name))
    texts, mods, defined_in = {}, {}, {}
    for d, name in files:
        with open(os.path.join(root, d, name), encoding="utf-8") as f:
            texts[(d, name)] = f.read()
        mods[(d, name)] = module(d, name)
        if name.endswith(".c"):
            for fn in DEFINITION.findall(texts[(d, name)]):
                defined_in.setdefault(fn, set()).add(mods[(d, name)])
    declared = {}
    for (d, name), text in texts.items():
        if name.endswith(".h") and name not in PUBLIC:
            body = "\n".join(line for line in COMMENT.sub("", text).splitlines()
                             if not line.lstrip().startswith("#"))
            declared[name] = set(DECLARED.findall(body))
    deps = {}
    for (d, name), text in texts.items():
        mod = mods[(d, name)]
        out = deps.setdefault(mod, set())
        for inc in INCLUDE.findall(text):
            base = os.path.basename(inc)
            if base not in headers:
                continue
            out.add(headers[base])
            for fn in declared.get(base, ()):
                out |= defined_in.get(fn, set())
        out.discard(mod)
    return deps


def cycles(deps):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(deps.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(deps):
        if v not in index:
            visit(v)
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    deps = modules(root)
    bad = cycles(deps)
    for comp in bad:
        members = set(comp)
        print("include cycle among: " + ", ".join(comp))
        for m in comp:
            for w in sorted(deps[m] & members):
                print(f"  {m} depends on {w}")
    if bad:
        return 1
    print(f"no include cycle among {len(deps)} modules of {', '.join(DIRS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
