"""The cffi builder of ``sealtensors._native`` (API mode; build-only, never shipped in the wheel).

Build-time switches (environment):

- ``SEALTENSORS_IPSECMB=auto|0|1`` (default ``auto``): compile the intel-ipsec-mb provider when its
  header and library are found (``auto``), never (``0``), or fail the build without it (``1``).
- ``SEALTENSORS_IPSECMB_STATIC=auto|0``: link ``libIPSec_MB.a`` when present (default), else the
  shared library.
- ``SEALTENSORS_EXTRA_CFLAGS`` / ``SEALTENSORS_EXTRA_LDFLAGS``: appended (sanitizer builds).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = ["engine.c", "provider_openssl.c", "provider_ipsecmb.c"]
LIB_DIRS = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
            "/usr/local/lib64"]


def _rel(path: str) -> str:
    # setuptools wants source paths relative to the project root (the cwd of a build).
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def package_version() -> str:
    with open(os.path.join(ROOT, "src", "sealtensors", "_version.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', f.read(), re.M)
    if not match:
        raise RuntimeError("cannot find __version__ in src/sealtensors/_version.py")
    return match.group(1)


def _compiler() -> list[str]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def _try_link(code: str, args: list[str]) -> bool:
    """Whether ``code`` compiles and links into a shared object with ``args``."""
    if not shutil.which(_compiler()[0]):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w", encoding="utf-8") as f:
            f.write(code)
        cmd = _compiler() + ["-fPIC", "-shared", src, "-o", os.path.join(tmp, "probe.so")] + args
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


IPSECMB_PROBE = """
#include <intel-ipsec-mb.h>
int probe(void) { IMB_MGR *m = alloc_mb_mgr(0); init_mb_mgr_auto(m, 0); free_mb_mgr(m); return 0; }
"""


def find_ipsecmb() -> tuple[list[str], list[str]] | None:
    """(extra_objects, libraries) for intel-ipsec-mb, or None when it is not usable."""
    mode = os.environ.get("SEALTENSORS_IPSECMB", "auto").strip().lower()
    if mode in ("0", "no", "off", "false"):
        return None
    if os.environ.get("SEALTENSORS_IPSECMB_STATIC", "auto").strip().lower() not in ("0", "no", "off"):
        for directory in LIB_DIRS:
            archive = os.path.join(directory, "libIPSec_MB.a")
            if os.path.exists(archive) and _try_link(IPSECMB_PROBE, [archive]):
                return [archive], []
    if _try_link(IPSECMB_PROBE, ["-lIPSec_MB"]):
        return [], ["IPSec_MB"]
    if mode in ("1", "yes", "on", "true"):
        raise RuntimeError("SEALTENSORS_IPSECMB=1 but intel-ipsec-mb (header + library) was not found")
    return None


def build() -> FFI:
    ffi = FFI()
    with open(os.path.join(HERE, "sealtensors.cdef.h"), encoding="utf-8") as f:
        ffi.cdef(f.read())

    version = package_version()
    macros = [("ST_VERSION", '"%s"' % version)]
    extra_objects: list[str] = []
    libraries = ["crypto", "pthread"]
    ipsecmb = find_ipsecmb()
    if ipsecmb is not None:
        objects, libs = ipsecmb
        macros.append(("ST_HAVE_IPSECMB", "1"))
        extra_objects += objects
        libraries = libs + libraries
    print(f"sealtensors._native: version {version}, ipsec-mb "
          f"{'static' if ipsecmb and ipsecmb[0] else 'shared' if ipsecmb else 'not found'}",
          file=sys.stderr)

    cflags = ["-O3", "-std=c11", "-Wall", "-Wextra", "-fvisibility=hidden"]
    cflags += shlex.split(os.environ.get("SEALTENSORS_EXTRA_CFLAGS", ""))
    ldflags = shlex.split(os.environ.get("SEALTENSORS_EXTRA_LDFLAGS", ""))
    ffi.set_source(
        "sealtensors._native",
        '#include "sealtensors.h"\n',
        sources=[_rel(os.path.join(HERE, name)) for name in SOURCES],
        include_dirs=[_rel(HERE)],
        define_macros=macros,
        libraries=libraries,
        extra_objects=extra_objects,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return ffi


ffibuilder = build()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
