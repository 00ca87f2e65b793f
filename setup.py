import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """The C engine is an accelerator: where it cannot be compiled (no compiler, no OpenSSL
    headers) the package installs with the pure-Python engine and says so, unless
    SEALTENSORS_REQUIRE_C=1 asks for a hard failure (CI sets it)."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure
            self._give_up(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any build failure
            self._give_up(exc)

    @staticmethod
    def _give_up(exc):
        if os.environ.get("SEALTENSORS_REQUIRE_C") == "1":
            raise exc
        sys.stderr.write(
            "WARNING: the sealtensors C engine could not be built "
            f"({type(exc).__name__}: {exc}); installing with the pure-Python engine only.\n")


setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"], cmdclass={"build_ext": OptionalBuildExt})
