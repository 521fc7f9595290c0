#!/usr/bin/python3
"""The systemd unit's hardening, scored (issue 18): `systemd-analyze security
--offline=true` on deploy/cofferd.service (and on the unit the cofferd package
installs, when the build has written it) prints an exposure of at most 2.0, and
reports no directive it does not know (a misspelt hardening option is ignored by
systemd, silently weakening the sandbox). The unit is Type=notify with
NotifyAccess=main and a watchdog (daemon/notify.c). The score is printed.
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

SRC = os.environ.get("COFFER_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
BUILD = os.environ.get("COFFER_BUILD_DIR") or os.path.join(SRC, "build")
UNIT = os.path.join(SRC, "deploy", "cofferd.service")
PACKAGED_UNIT = os.path.join(BUILD, "deploy", "cofferd.service")
LIMIT = 2.0


def exposure(path):
    """(score, stderr) of systemd-analyze security --offline=true on path."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        raise AssertionError("systemd-analyze not found: apt-get install systemd "
                             "(deploy/install-deps.sh)")
    r = subprocess.run([exe, "security", "--offline=true", "--no-pager", path],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for (\S+): (\d+\.\d+) (\S+)", r.stdout)
    if r.returncode != 0 or m is None:
        raise AssertionError("systemd-analyze security %s: exit %d\n%s%s"
                             % (path, r.returncode, r.stdout[-2000:], r.stderr))
    return float(m.group(2)), m.group(0), r.stderr.strip()


def settings(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and line[0] not in "#;[" and "=" in line:
                k, v = line.split("=", 1)
                out.setdefault(k.strip(), []).append(v.strip())
    return out


class UnitExposure(unittest.TestCase):
    def check_unit(self, path):
        score, line, err = exposure(path)
        print("%s: %s" % (path, line), flush=True)
        self.assertEqual(err, "", "systemd-analyze complained about %s" % path)
        self.assertLessEqual(score, LIMIT, "%s: exposure %.1f > %.1f" % (path, score, LIMIT))
        s = settings(path)
        self.assertEqual(s.get("Type"), ["notify"])
        self.assertEqual(s.get("NotifyAccess"), ["main"])
        self.assertEqual(s.get("WatchdogSec"), ["30s"])
        # What cofferd needs still there: its sockets' directory, the state
        # and token directories, locked memory for secrets.
        self.assertEqual(s.get("RuntimeDirectory"), ["coffer"])
        self.assertEqual(s.get("StateDirectory"), ["coffer"])
        self.assertIn("-/var/lib/coffer/tokens", s.get("ReadWritePaths", []))
        self.assertEqual(s.get("LimitMEMLOCK"), ["64M"])
        self.assertEqual(s.get("RestrictAddressFamilies"), ["AF_UNIX"])
        return s

    def test_source_unit(self):
        s = self.check_unit(UNIT)
        self.assertEqual(s["ExecStart"], ["/usr/local/sbin/cofferd -c /etc/coffer/cofferd.conf"])

    def test_packaged_unit(self):
        if not os.path.exists(PACKAGED_UNIT):
            self.skipTest("%s not written (configure the build)" % PACKAGED_UNIT)
        s = self.check_unit(PACKAGED_UNIT)
        self.assertEqual(s["ExecStart"], ["/usr/sbin/cofferd -c /etc/coffer/cofferd.conf"])

    def test_the_check_can_fail(self):
        """A misspelt directive and a unit without the sandbox are caught."""
        with tempfile.TemporaryDirectory() as tmp:
            with open(UNIT) as f:
                text = f.read()
            bad = os.path.join(tmp, "cofferd.service")
            with open(bad, "w") as f:
                f.write(text.replace("ProtectSystem=strict", "ProtectSytem=strict"))
            _, _, err = exposure(bad)
            self.assertIn("Unknown key 'ProtectSytem' in section [Service], ignoring", err)
            with open(bad, "w") as f:
                f.write(text.split("# Sandboxing")[0] + "\n[Install]\nWantedBy=multi-user.target\n")
            score, _, _ = exposure(bad)
            self.assertGreater(score, LIMIT)


if __name__ == "__main__":
    unittest.main(verbosity=2)
