#!/usr/bin/python3
"""The Debian packages (issue 18; deploy/packaging.cmake), end to end.

* `cpack` in the build tree writes cofferd, cofferctl, libcofferX.Y and
  libcoffer-dev (and python3-coffer when client/python/coffer is in the tree)
  into a scratch directory; their control fields (Depends, shlibs) are right.
* lintian reports no error on any of them (its warnings are printed).
* Unpacked into a scratch root (dpkg-deb -x): a small C program compiled
  against libcoffer-dev with pkg-config (PKG_CONFIG_LIBDIR and
  PKG_CONFIG_SYSROOT_DIR into the root) and another with the CMake package
  (find_package(coffer)), both linked with the packaged libcoffer.
* deploy/quickstart.sh with COFFER_PREFIX=<root>/usr: token, daemon, principal,
  sign and verify with openssl, sealed wrap/unwrap, API key: all with the
  packaged cofferd, cofferctl and init-token.sh; then the C programs sign,
  verify, wrap and unwrap against that daemon with the quick start's identity
  and API key, and a tampered signature is refused.
* The package's postinst, run in a private mount namespace over a copy of /etc,
  makes the system user coffer and /etc/coffer (root:coffer, 0750).
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

SRC = os.environ.get("COFFER_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
BUILD = os.environ.get("COFFER_BUILD_DIR") or os.path.join(SRC, "build")
VERSION = None          # from the build's CPackConfig.cmake
LIBPKG = None

C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <coffer.h>

static int
fail(const char *what, int r)
{
	fprintf(stderr, "%s: %s: %s\n", what, coffer_strerror(r), coffer_error_message());
	return 1;
}

/* prog SOCKET IDENTITY.pem API_KEY_FILE: sign and verify with demo-signing,
 * wrap and unwrap with demo-wrapping, a tampered signature refused. */
int
main(int argc, char **argv)
{
	static const uint8_t msg[] = "packaged libcoffer";
	struct coffer_kv ctx = { "app", "pkgtest" };
	struct coffer_bytes sig = { 0 }, ct = { 0 }, pt = { 0 };
	coffer_client *c;
	uint32_t ver = 0;
	int r, valid = -1;

	if (argc != 4)
		return 2;
	if ((r = coffer_connect(argv[1], 0, &c)) != COFFER_OK)
		return fail("connect", r);
	if ((r = coffer_pin_identity_file(c, argv[2])) != COFFER_OK)
		return fail("pin", r);
	if ((r = coffer_set_api_key_file(c, argv[3])) != COFFER_OK)
		return fail("api key", r);
	if ((r = coffer_sign(c, "demo-signing", 0, msg, sizeof(msg), NULL, &sig, &ver)) != COFFER_OK)
		return fail("sign", r);
	if ((r = coffer_verify(c, "demo-signing", ver, msg, sizeof(msg), NULL, sig.data, sig.len,
			       &valid)) != COFFER_OK || valid != 1)
		return fail("verify", r);
	sig.data[sig.len - 1] ^= 1;
	if ((r = coffer_verify(c, "demo-signing", ver, msg, sizeof(msg), NULL, sig.data, sig.len,
			       &valid)) != COFFER_OK || valid != 0)
		return fail("verify tampered", r);
	if ((r = coffer_wrap(c, "demo-wrapping", msg, sizeof(msg), &ctx, 1, &ct, NULL)) != COFFER_OK)
		return fail("wrap", r);
	if ((r = coffer_unwrap(c, "demo-wrapping", ct.data, ct.len, &ctx, 1, &pt, NULL)) != COFFER_OK)
		return fail("unwrap", r);
	if (pt.len != sizeof(msg) || memcmp(pt.data, msg, sizeof(msg)) != 0)
		return fail("unwrap: other plaintext", 0);
	printf("signed (version %u), verified, tampered refused, wrapped and unwrapped\n", ver);
	coffer_bytes_free(&sig);
	coffer_bytes_free(&ct);
	coffer_bytes_free(&pt);
	coffer_close(c);
	return 0;
}
"""

CMAKE_PROJECT = """cmake_minimum_required(VERSION 3.18)
project(pkgtest C)
find_package(coffer %s REQUIRED)
add_executable(prog prog.c)
target_link_libraries(prog PRIVATE coffer::coffer)
"""


def run(cmd, timeout=300, ok=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if ok and r.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(cmd), r.returncode, r.stdout[-4000:],
                                                    r.stderr[-4000:]))
    return r


def cpack_version():
    with open(os.path.join(BUILD, "CPackConfig.cmake")) as f:
        m = re.search(r'set\(CPACK_PACKAGE_VERSION "([^"]+)"\)', f.read())
    return m.group(1)


class Packages(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        global VERSION, LIBPKG
        VERSION = cpack_version()
        LIBPKG = "libcoffer" + ".".join(VERSION.split(".")[:2])
        keep = os.environ.get("COFFER_KEEP_TMP", "") not in ("", "0")
        cls.tmp = tempfile.mkdtemp(prefix="coffer-pkg-")
        if not keep:
            cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.out = os.path.join(cls.tmp, "cpack")
        t0 = time.monotonic()
        run(["cpack", "-B", cls.out, "-D",
             "CPACK_OUTPUT_FILE_PREFIX=" + os.path.join(cls.out, "packages")],
            cwd=BUILD, timeout=600)
        print("cpack: %.0f s" % (time.monotonic() - t0), flush=True)
        cls.debs = {os.path.basename(p).split("_")[0]: p
                    for p in glob.glob(os.path.join(cls.out, "packages", "*.deb"))}
        cls.root = os.path.join(cls.tmp, "root")
        for p in cls.debs.values():
            run(["dpkg-deb", "-x", p, cls.root])
        arch = run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"]).stdout.strip()
        cls.libdir = os.path.join(cls.root, "usr", "lib", arch)

    def field(self, pkg, name):
        return run(["dpkg-deb", "-f", self.debs[pkg], name]).stdout.strip()

    def test_1_the_packages(self):
        want = {"cofferd", "cofferctl", LIBPKG, "libcoffer-dev"}
        python = os.path.exists(os.path.join(SRC, "client", "python", "coffer", "__init__.py"))
        if python:
            want.add("python3-coffer")
        self.assertEqual(set(self.debs), want)
        for p in want:
            self.assertEqual(self.field(p, "Version"), VERSION)
            self.assertTrue(os.path.exists(os.path.join(self.root, "usr/share/doc", p,
                                                        "copyright")), p)
        # The library package is named after the soname, which it carries.
        soname = run(["objdump", "-p", os.path.join(self.libdir, "libcoffer.so." + VERSION)]
                     ).stdout
        self.assertIn("SONAME               libcoffer.so.%s" % LIBPKG[len("libcoffer"):], soname)
        shlibs = run(["dpkg-deb", "-I", self.debs[LIBPKG], "shlibs"]).stdout
        self.assertEqual(shlibs.strip(), "libcoffer %s %s (= %s)"
                         % (LIBPKG[len("libcoffer"):], LIBPKG, VERSION))
        libdep = "%s (= %s)" % (LIBPKG, VERSION)
        for p in ("cofferctl", "libcoffer-dev"):
            self.assertIn(libdep, self.field(p, "Depends").split(", "))
        d = self.field("cofferd", "Depends").split(", ")
        self.assertIn("adduser", d)
        self.assertTrue(any(x.startswith("libsystemd0") for x in d), d)
        self.assertTrue(any(x.startswith("libgrpc") for x in d), d)
        self.assertTrue(any(x.startswith("libgrpc") for x in self.field(LIBPKG, "Depends")
                            .split(", ")))
        self.assertIn("daemon", self.field("cofferd", "Description"))
        # What each package carries.
        for rel in ("usr/sbin/cofferd", "usr/lib/systemd/system/cofferd.service",
                    "usr/share/doc/cofferd/examples/cofferd.conf",
                    "usr/share/cofferd/init-token.sh", "usr/bin/cofferctl",
                    "usr/share/man/man1/cofferctl.1.gz", "usr/share/man/man8/cofferd.8.gz",
                    "usr/share/bash-completion/completions/cofferctl", "usr/include/coffer.h",
                    "usr/lib/x86_64-linux-gnu/pkgconfig/coffer.pc",
                    "usr/lib/x86_64-linux-gnu/cmake/coffer/cofferConfig.cmake"):
            self.assertTrue(os.path.exists(os.path.join(self.root, rel)), rel)
        with open(os.path.join(self.root, "usr/lib/systemd/system/cofferd.service")) as f:
            unit = f.read()
        self.assertIn("\nExecStart=/usr/sbin/cofferd -c /etc/coffer/cofferd.conf\n", unit)
        self.assertIn("\nType=notify\n", unit)
        if python:
            self.assertEqual(self.field("python3-coffer", "Architecture"), "all")
            site = os.path.join(self.root, "usr/lib/python3/dist-packages")
            r = run(["/usr/bin/python3", "-I", "-c", "import sys; sys.path.insert(0, %r); "
                     "import coffer; print(coffer.__file__)" % site])
            self.assertEqual(r.stdout.strip(), os.path.join(site, "coffer", "__init__.py"))

    def test_2_lintian(self):
        exe = shutil.which("lintian")
        if exe is None:
            raise AssertionError("lintian not found: apt-get install lintian "
                                 "(deploy/install-deps.sh)")
        self.assertGreaterEqual(len(self.debs), 4, self.debs)
        r = run([exe, "--allow-root"] + sorted(self.debs.values()), ok=False, timeout=600)
        tags = [ln for ln in r.stdout.splitlines() if re.match(r"^[EWIXPON]: ", ln)]
        print("lintian:\n  " + "\n  ".join(tags or ["(nothing)"]), flush=True)
        errors = [ln for ln in tags if ln.startswith("E: ")]
        self.assertEqual(errors, [], r.stdout + r.stderr)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def build_programs(self):
        """prog-pc (pkg-config) and prog-cmake (find_package), in the scratch dir."""
        work = os.path.join(self.tmp, "prog")
        os.makedirs(work, exist_ok=True)
        with open(os.path.join(work, "prog.c"), "w") as f:
            f.write(C_PROGRAM)
        env = dict(os.environ, PKG_CONFIG_LIBDIR=os.path.join(self.libdir, "pkgconfig"),
                   PKG_CONFIG_SYSROOT_DIR=self.root)
        env.pop("PKG_CONFIG_PATH", None)
        flags = run(["pkg-config", "--cflags", "--libs", "coffer"], env=env).stdout.split()
        self.assertIn("-I%s/usr/include" % self.root, flags)
        self.assertIn("-L%s" % self.libdir, flags)
        self.assertEqual(run(["pkg-config", "--modversion", "coffer"], env=env).stdout.strip(),
                         VERSION)
        run(["cc", "-Wall", "-Werror", "-o", os.path.join(work, "prog-pc"),
             os.path.join(work, "prog.c")] + flags)
        cm = os.path.join(work, "cmake")
        os.makedirs(cm, exist_ok=True)
        shutil.copy(os.path.join(work, "prog.c"), cm)
        with open(os.path.join(cm, "CMakeLists.txt"), "w") as f:
            f.write(CMAKE_PROJECT % ".".join(VERSION.split(".")[:2]))
        run(["cmake", "-S", cm, "-B", os.path.join(cm, "b"),
             "-DCMAKE_PREFIX_PATH=%s/usr" % self.root, "-DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF"])
        run(["cmake", "--build", os.path.join(cm, "b")])
        shutil.copy(os.path.join(cm, "b", "prog"), os.path.join(work, "prog-cmake"))
        return [os.path.join(work, "prog-pc"), os.path.join(work, "prog-cmake")]

    def test_3_quickstart_and_c_program(self):
        progs = self.build_programs()
        env = dict(os.environ, LD_LIBRARY_PATH=self.libdir)
        for k in ("COFFER_SOCKET", "COFFER_ADMIN_SOCKET", "COFFER_IDENTITY",
                  "COFFER_API_KEY_FILE", "SOFTHSM2_CONF"):
            env.pop(k, None)
        # Each program runs with the packaged libcoffer, not another one.
        for p in progs + [os.path.join(self.root, "usr/bin/cofferctl")]:
            ldd = run(["ldd", p], env=env).stdout
            m = re.search(r"libcoffer\.so\.\S+ => (\S+)", ldd)
            self.assertTrue(m and m.group(1).startswith(self.libdir), ldd)
        demo = os.path.join(self.tmp, "demo")
        env.update(COFFER_PREFIX=os.path.join(self.root, "usr"), COFFER_DEMO_DIR=demo)
        pidfile = os.path.join(demo, "cofferd.pid")
        self.addCleanup(self.stop_daemon, pidfile)
        # A stale pid file naming another program's process (after a reboot):
        # left alone, not sent SIGTERM and waited for forever.
        os.makedirs(demo, exist_ok=True)
        other = subprocess.Popen(["sleep", "300"], preexec_fn=lambda: signal.signal(
            signal.SIGTERM, signal.SIG_IGN))
        self.addCleanup(other.wait)
        self.addCleanup(other.kill)
        with open(pidfile, "w") as f:
            f.write("%d\n" % other.pid)
        r = run(["bash", os.path.join(SRC, "deploy", "quickstart.sh")], env=env, timeout=300)
        print(r.stdout, flush=True)
        self.assertIn("note: %s names pid %d, which is not a cofferd: left alone"
                      % (pidfile, other.pid), r.stderr)
        self.assertIsNone(other.poll())
        self.assertIn("== 1. packaged binaries in %s/usr" % self.root, r.stdout)
        self.assertIn("Verified OK", r.stdout)
        self.assertIn("unwrapped through a sealed session: identical", r.stdout)
        self.assertIn("signed call with %s/demo.key: OK" % demo, r.stdout)
        with open(os.path.join(demo, "cofferd.pid")) as f:
            pid = int(f.read())
        self.assertEqual(os.readlink("/proc/%d/exe" % pid),
                         os.path.join(self.root, "usr/sbin/cofferd"))
        sock = os.path.join(demo, "service.sock")
        for p in progs:
            r = run([p, sock, os.path.join(demo, "identity.pem"),
                     os.path.join(demo, "demo.key")], env=env, timeout=120)
            self.assertEqual(r.stdout.strip(), "signed (version 1), verified, tampered refused, "
                             "wrapped and unwrapped", p)
        # Without the API key the principal's calls are refused, with the reason.
        r = run([progs[0], sock, os.path.join(demo, "identity.pem"), "/nonexistent/key"],
                env=env, ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("api key: ", r.stderr)
        self.assertIn("/nonexistent/key", r.stderr)

    @staticmethod
    def stop_daemon(pidfile):
        try:
            with open(pidfile) as f:
                pid = int(f.read())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        for _ in range(300):
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.1)

    def test_4_postinst(self):
        """The maintainer script against a copy of /etc, in a private mount
        namespace: the system user and /etc/coffer; run twice (idempotent);
        a group "coffer" made beforehand is taken as the user's."""
        postinst = os.path.join(self.tmp, "postinst")
        ctrl = os.path.join(self.tmp, "ctrl-cofferd")
        run(["dpkg-deb", "-e", self.debs["cofferd"], ctrl])
        shutil.copy(os.path.join(ctrl, "postinst"), postinst)
        etc = os.path.join(self.tmp, "etc")
        run(["cp", "-a", "/etc", etc])
        for f in ("passwd", "group", "shadow", "gshadow"):
            p = os.path.join(etc, f)
            if os.path.exists(p):
                with open(p) as fh:
                    lines = [ln for ln in fh if not ln.startswith("coffer:")]
                with open(p, "w") as fh:
                    fh.writelines(lines)
        shutil.rmtree(os.path.join(etc, "coffer"), ignore_errors=True)
        script = ("set -e; mount --bind %s /etc; sh %s configure; sh %s configure; "
                  "getent passwd coffer; getent group coffer; stat -c '%%U:%%G %%a' /etc/coffer"
                  % (etc, postinst, postinst))
        r = run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], ok=False)
        if r.returncode != 0 and "unshare failed" in r.stderr:
            self.skipTest("no mount namespace here: %s" % r.stderr.strip())
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        pw, gr, st = r.stdout.strip().split("\n")
        name, _, uid, gid, gecos, home, shell = pw.split(":")
        self.assertLess(int(uid), 1000, "not a system user: " + pw)
        self.assertEqual((name, home, shell), ("coffer", "/var/lib/coffer", "/usr/sbin/nologin"))
        self.assertEqual(gr.split(":")[2], gid)
        self.assertEqual(st, "root:coffer 750")
        # A group "coffer" made before the package (for the sockets' callers)
        # becomes the user's group (adduser --group refused it: the package
        # stayed unconfigured).
        with open(os.path.join(etc, "passwd")) as fh:
            lines = [ln for ln in fh if not ln.startswith("coffer:")]
        with open(os.path.join(etc, "passwd"), "w") as fh:
            fh.writelines(lines)
        for f, line in (("group", "coffer:x:1500:\n"), ("gshadow", "coffer:!::\n")):
            p = os.path.join(etc, f)
            if os.path.exists(p):
                with open(p) as fh:
                    lines = [ln for ln in fh if not ln.startswith("coffer:")]
                with open(p, "w") as fh:
                    fh.writelines(lines + [line])
        script = ("set -e; mount --bind %s /etc; sh %s configure; getent passwd coffer"
                  % (etc, postinst))
        r = run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], ok=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.strip().split(":")[3], "1500", r.stdout)
        # prerm stops the daemon on removal, not on upgrade.
        with open(os.path.join(ctrl, "prerm")) as fh:
            prerm = fh.read()
        self.assertIn('if [ "$1" = "remove" ]', prerm)
        self.assertIn("systemctl --system stop cofferd.service", prerm)
        self.assertEqual(run(["sh", "-n", os.path.join(ctrl, "prerm")]).returncode, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
