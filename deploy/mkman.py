#!/usr/bin/python3
"""Write cofferctl(1) from deploy/cofferctl.1.in and cofferctl's own --help
texts, or with --daemon cofferd(8) from deploy/cofferd.8.in and cofferd --help,
so that the manual pages never disagree with the programs.

usage: mkman.py [--daemon] PROGRAM TEMPLATE VERSION OUT
"""
import os
import re
import subprocess
import sys
import time


def esc(line):
    """Text for roff: backslashes, and a leading dot or quote."""
    line = line.replace("\\", "\\e").replace("-", "\\-")
    if line[:1] in (".", "'"):
        line = "\\&" + line
    return line


def helptext(ctl, *args):
    r = subprocess.run([ctl, *args, "--help"], capture_output=True, text=True, check=True)
    return r.stdout


def finish(template, version, out, fields):
    """The template with @VERSION@, @DATE@ and fields filled in, written to out."""
    page = open(template).read()
    page = page.replace("@VERSION@", version)
    # The build's date, or SOURCE_DATE_EPOCH for a reproducible page.
    when = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    page = page.replace("@DATE@", time.strftime("%Y-%m-%d", time.gmtime(when)))
    for name, text in fields.items():
        page = page.replace("@%s@" % name, text)
    if re.search("@[A-Z]+@", page):
        sys.exit("mkman: a placeholder is left in " + template)
    with open(out, "w") as f:
        f.write(page)


def nofill(lines):
    return ".nf\n" + "\n".join(esc(l) for l in lines) + "\n.fi"


def daemon(prog, template, version, out):
    """cofferd --help: its option list (without the usage line)."""
    text = helptext(prog).split("\n", 1)[1].rstrip("\n")
    finish(template, version, out, {"USAGE": nofill(text.splitlines())})


def main():
    if sys.argv[1] == "--daemon":
        return daemon(*sys.argv[2:6])
    ctl, template, version, out = sys.argv[1:5]
    top = helptext(ctl)
    cmds = []
    for line in top.split("Commands:\n", 1)[1].split("\n\n", 1)[0].splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            words = line.split()
            two = words[0] in ("key", "principal", "audit", "request", "token")
            cmds.append(words[:2] if two else words[:1])
    parts = []
    for words in cmds:
        text = helptext(ctl, *words).split("Common options:")[0].rstrip("\n")
        usage, _, body = text.partition("\n\n")
        parts.append(".TP\n.B " + esc(usage.replace("usage: cofferctl ", "").split("\n")[0]))
        rest = usage.split("\n")[1:]
        lines = [l.strip() for l in rest] + body.splitlines()
        parts.append(".nf\n" + "\n".join(esc(l) for l in lines) + "\n.fi")
    opts = top.split("Options (also accepted after the command):\n", 1)[1]
    opts, _, exits = opts.partition("\nExit status:\n")
    exits = exits.split("Errors are printed")[0]
    finish(template, version, out, {
        "COMMANDS": "\n".join(parts),
        "OPTIONS": nofill(opts.rstrip("\n").splitlines()),
        "EXIT": nofill(exits.rstrip("\n").splitlines())
        + "\nErrors are printed on stderr as \"cofferctl: <reason>\"."})


if __name__ == "__main__":
    main()
