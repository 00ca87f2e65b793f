"""The ``sealtensors`` command: keygen, seal, unseal, inspect, verify, rewrap, info, demo.

``main(argv)`` returns the process exit status instead of raising: every failure becomes one line on
stderr (``sealtensors: error: ...``) and one of the documented exit codes below, never a traceback
(set ``SEALTENSORS_DEBUG=1`` to get the traceback as well). Key material is never printed: keys are
named by their public key id only.
"""

from __future__ import annotations

import argparse
import inspect as _inspect
import json
import os
import sys
import time
from typing import Callable, Sequence

EXIT_OK = 0
EXIT_INTEGRITY = 1
EXIT_USAGE = 2
EXIT_WRONG_KEY = 3
EXIT_FORMAT = 4
EXIT_IO = 5
EXIT_INVALID_KEY = 6
EXIT_BACKEND = 7
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    integrity / authentication failure: the file was modified, truncated or spliced
  2    usage error (bad arguments, output is the same file as the input, ...)
  3    wrong key: none of the given keys is a recipient of the file
  4    malformed file, or a format version / cipher suite this build does not support
  5    I/O error, or the destination exists (pass --force to replace it)
  6    invalid key file (unreadable, or not a sealtensors key)
  7    backend error (SEALTENSORS_BACKEND / SEALTENSORS_AES names an unavailable engine)
  70   internal error (a bug: please report it; SEALTENSORS_DEBUG=1 shows the traceback)
  130  interrupted (Ctrl-C)

environment:
  SEALTENSORS_BACKEND=auto|c|python   SEALTENSORS_AES=auto|ipsecmb|openssl
  SEALTENSORS_THREADS=N               SEALTENSORS_DEBUG=1 (tracebacks on errors)
"""


# --- output helpers -------------------------------------------------------------------------------


def human_size(nbytes: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


class _TinyBar:
    """A dependency-free progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, desc: str) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.start = time.perf_counter()
        self.last_draw = 0.0
        self.done = 0

    def update_to(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if now - self.last_draw >= 0.1 or done >= self.total:
            self.last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        fraction = min(self.done / self.total, 1.0)
        width = 30
        filled = int(fraction * width)
        rate = self.done / max(now - self.start, 1e-9)
        bar = "#" * filled + " " * (width - filled)
        sys.stderr.write(f"\r{self.desc:<10} {fraction:4.0%} [{bar}] {human_size(self.done)} / "
                         f"{human_size(self.total)}  {human_size(rate)}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        self._draw(time.perf_counter())
        sys.stderr.write("\n")
        sys.stderr.flush()


class _Progress:
    """A context manager giving a ``progress(bytes_done)`` callback, or None when stderr is not
    a terminal."""

    def __init__(self, total: int, desc: str) -> None:
        self.total = total
        self.desc = desc
        self.bar = None
        self.kind = None
        self.last = 0

    def __enter__(self) -> Callable[[int], None] | None:
        if not _stderr_is_terminal() or self.total <= 0:
            return None
        try:
            from tqdm import tqdm  # noqa: PLC0415 - optional
        except ImportError:
            self.bar, self.kind = _TinyBar(self.total, self.desc), "tiny"
        else:
            self.bar, self.kind = tqdm(total=self.total, desc=self.desc, unit="B", unit_scale=True,
                                       unit_divisor=1024, file=sys.stderr, leave=False), "tqdm"
        return self._callback

    def _callback(self, done: int) -> None:
        if self.kind == "tqdm":
            self.bar.update(done - self.last)
            self.last = done
        else:
            self.bar.update_to(done)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _safetensors_data_size(path: str) -> int:
    """Bytes of tensor data in a plain .safetensors file (for the progress bar's total)."""
    try:
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
        return max(os.path.getsize(path) - 8 - header_len, 0)
    except OSError:
        return 0


def _key_id_hex(key: bytes) -> str:
    from .keys.keyfile import key_id

    return key_id(key).hex()


# --- subcommands ----------------------------------------------------------------------------------


def cmd_keygen(args) -> int:
    from .keys.keyfile import write_key_file

    path = args.path
    try:
        key = write_key_file(path, overwrite=args.force)
    except FileExistsError:
        from .io.atomic import DestinationExistsError

        raise DestinationExistsError(f"{path!r} exists (pass --force to replace it)") from None
    _out(f"wrote key file {path} (mode 0600)")
    _out(f"key id: {_key_id_hex(key)}")
    return EXIT_OK


def _read_keys(paths: Sequence[str]) -> list[bytes]:
    from .keys.keyfile import read_key_file

    return [read_key_file(path) for path in paths]


def cmd_seal(args) -> int:
    from .api import seal_file

    keys = _read_keys(args.key_file)
    started = time.perf_counter()
    with _Progress(_safetensors_data_size(args.src), "sealing") as progress:
        seal_file(args.src, args.dst, keys, overwrite=args.force, threads=args.threads,
                  progress=progress)
    elapsed = time.perf_counter() - started
    size = os.path.getsize(args.dst)
    ids = ", ".join(_key_id_hex(key) for key in keys)
    _out(f"sealed {args.src} -> {args.dst} ({human_size(size)}, {elapsed:.2f} s) "
         f"for key id(s) {ids}")
    return EXIT_OK


def cmd_unseal(args) -> int:
    from .api import inspect, unseal_file

    keys = _read_keys(args.key_file)
    total = inspect(args.src)["data_size"] if _stderr_is_terminal() else 0
    started = time.perf_counter()
    with _Progress(total, "unsealing") as progress:
        unseal_file(args.src, args.dst, keys, overwrite=args.force, threads=args.threads,
                    progress=progress)
    elapsed = time.perf_counter() - started
    _out(f"unsealed {args.src} -> {args.dst} ({human_size(os.path.getsize(args.dst))}, "
         f"{elapsed:.2f} s, every byte authenticated)")
    return EXIT_OK


def cmd_verify(args) -> int:
    from .api import inspect, verify

    keys = _read_keys(args.key_file)
    started = time.perf_counter()
    kwargs = {"threads": args.threads}
    if "progress" in _inspect.signature(verify).parameters and _stderr_is_terminal():
        with _Progress(inspect(args.src)["data_size"], "verifying") as progress:
            summary = verify(args.src, keys, progress=progress, **kwargs)
    else:
        summary = verify(args.src, keys, **kwargs)
    elapsed = time.perf_counter() - started
    _out(f"OK: {args.src} authenticated ({summary['tensors']} tensors, "
         f"{human_size(summary['data_size'])} of data, {elapsed:.2f} s)")
    return EXIT_OK


def _format_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def cmd_inspect(args) -> int:
    from .api import inspect

    keys = _read_keys(args.key_file) if args.key_file else None
    report = inspect(args.src, keys)
    if args.json:
        _out(json.dumps(report, indent=2))
        return EXIT_OK
    _out(f"file:        {report['path']}")
    _out(f"size:        {report['file_size']} bytes ({human_size(report['file_size'])})")
    _out(f"format:      version {report['format_version']}, suite {report['suite']} "
         "(C2SP chunked AES-256-GCM)")
    _out(f"header:      {report['header_size']} bytes")
    _out(f"index:       {report['index_message_size']} bytes (encrypted)")
    _out(f"data:        {report['data_size']} bytes of plaintext "
         f"({report['data_message_size']} bytes sealed)")
    _out(f"recipients:  {len(report['recipients'])}")
    for rid in report["recipients"]:
        _out(f"  key id {rid}")
    if "tensors" not in report:
        _out("tensor names, dtypes, shapes and metadata are encrypted; "
             "pass --key-file to list them")
        return EXIT_OK
    metadata = report.get("metadata") or {}
    _out(f"metadata:    {len(metadata)} entries")
    for name, value in metadata.items():
        _out(f"  {name}: {value}")
    tensors = report["tensors"]
    _out(f"tensors:     {len(tensors)}")
    if tensors:
        rows = [(t["name"], t["dtype"], _format_shape(t["shape"]),
                 human_size(t["offsets"][1] - t["offsets"][0])) for t in tensors]
        widths = [max(len(row[i]) for row in rows + [("name", "dtype", "shape", "size")])
                  for i in range(4)]
        header = ("name", "dtype", "shape", "size")
        _out("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for row in rows:
            _out("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return EXIT_OK


def cmd_rewrap(args) -> int:
    from .api import rewrap

    keys = _read_keys(args.key_file)
    add = _read_keys(args.add)
    if not add and not args.remove:
        raise _UsageError("nothing to do: pass --add KEYFILE and/or --remove KEYFILE_OR_KEYID")
    ids = rewrap(args.src, keys, add=add, remove=list(args.remove), dst=args.output,
                 overwrite=args.force)
    where = args.output if args.output is not None else args.src
    _out(f"rewrapped {args.src} -> {where}: {len(ids)} recipient(s)")
    for rid in ids:
        _out(f"  key id {rid}")
    return EXIT_OK


def cmd_info(args) -> int:
    import platform

    from . import __version__
    from .api import engine_info

    info = engine_info()
    providers = None
    try:
        from .engine.cengine import available_providers
    except ImportError as exc:
        c_engine = f"unavailable ({exc})"
    else:
        providers = list(available_providers())
        c_engine = "available"
    if args.json:
        _out(json.dumps({"version": __version__, "engine": info, "c_engine": c_engine,
                         "c_providers": providers, "python": platform.python_version()}, indent=2))
        return EXIT_OK
    _out(f"sealtensors {__version__} (Python {platform.python_version()})")
    _out(f"backend:     {info.get('backend')}")
    _out(f"provider:    {info.get('provider')}")
    _out(f"cpu path:    {info.get('cpu_path')}")
    _out(f"threads:     {info.get('threads')}")
    _out(f"C engine:    {c_engine}" + (f", providers: {', '.join(providers) or 'none'}"
                                       if providers is not None else ""))
    return EXIT_OK


def cmd_demo(args) -> int:
    from ._demo import run_demo

    return run_demo(size_mib=args.size_mib, directory=args.dir, out=_out)


# --- argument parsing -----------------------------------------------------------------------------


class _UsageError(Exception):
    """Arguments parse but make no sense together."""


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="sealtensors",
        description="Seal model weights (.safetensors) into encrypted, fully authenticated files "
                    "(C2SP chunked AES-256-GCM, one key slot per recipient).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sealtensors {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    def key_option(p, required=True, help_text="a key file that opens the file (repeatable)"):
        p.add_argument("--key-file", "-k", action="append", required=required, metavar="KEYFILE",
                       help=help_text)

    def threads_option(p):
        p.add_argument("--threads", "-j", type=_non_negative_int, default=0, metavar="N",
                       help="worker threads (0 = SEALTENSORS_THREADS or all CPUs; default 0)")

    p = add("keygen", "write a new random key to a key file (mode 0600); prints its key id",
            cmd_keygen)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--force", "-f", action="store_true", help="replace an existing file")

    p = add("seal", "seal a .safetensors file for one or more recipients", cmd_seal)
    p.add_argument("src", metavar="SRC.safetensors")
    p.add_argument("dst", metavar="DST")
    key_option(p, help_text="a recipient's key file (repeat for several recipients)")
    p.add_argument("--force", "-f", action="store_true", help="replace DST if it exists")
    threads_option(p)

    p = add("unseal", "decrypt and authenticate a sealed file back into a .safetensors file",
            cmd_unseal)
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST.safetensors")
    key_option(p)
    p.add_argument("--force", "-f", action="store_true", help="replace DST if it exists")
    threads_option(p)

    p = add("inspect", "show sizes and recipients (no key needed); with a key, tensors and "
                       "metadata",
            cmd_inspect)
    p.add_argument("src", metavar="FILE")
    key_option(p, required=False, help_text="a key file: also list tensors and metadata")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("verify", "authenticate every byte of a sealed file; writes nothing", cmd_verify)
    p.add_argument("src", metavar="FILE")
    key_option(p)
    threads_option(p)

    p = add("rewrap", "add or remove recipients (rewrites the header only)", cmd_rewrap)
    p.add_argument("src", metavar="FILE")
    key_option(p, help_text="a key file that opens FILE now")
    p.add_argument("--add", action="append", default=[], metavar="KEYFILE",
                   help="add this key file's key as a recipient (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="KEYFILE_OR_KEYID",
                   help="remove a recipient, by key file or 32-hex-digit key id (repeatable)")
    p.add_argument("--output", "-o", metavar="DST",
                   help="write the result to DST instead of replacing FILE in place (atomically)")
    p.add_argument("--force", "-f", action="store_true", help="replace DST if it exists")

    p = add("info", "show the engine in use (backend, AES provider, CPU path, threads) and version",
            cmd_info)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("demo", "build a small transformer-like model, seal it, load it back, verify, and time "
                    "it", cmd_demo)
    p.add_argument("--size-mib", type=_positive_float, default=64.0, metavar="N",
                   help="approximate model size in MiB (default 64)")
    p.add_argument("--dir", metavar="DIR",
                   help="keep the files in DIR (default: a temporary directory, removed "
                        "afterwards)")
    return parser


# --- errors -> exit codes -------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _describe(exc: BaseException) -> str:
    from .io.atomic import DestinationExistsError

    if isinstance(exc, DestinationExistsError):
        return str(exc).replace("pass overwrite=True", "pass --force")
    if isinstance(exc, OSError) and exc.strerror and not str(exc).startswith("'"):
        where = exc.filename if exc.filename is not None else None
        text = exc.strerror if where is None else f"{where}: {exc.strerror}"
        if exc.filename2 is not None:
            text += f" ({exc.filename2})"
        return text
    return str(exc)


def _root_cause(exc: BaseException) -> BaseException:
    """The error to report: a BufferError raised while cleaning up after a sealtensors error
    (closing a memory map whose views the failing call still held) must not hide the real
    failure."""
    from .errors import SealError

    context = exc.__context__
    if isinstance(exc, BufferError) and isinstance(context, SealError):
        return context
    return exc


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, label) for an exception raised by a subcommand."""
    from .io.atomic import DestinationExistsError
    from .errors import (BackendError, FormatError, IntegrityError, InvalidKeyError, SealError,
                         WrongKeyError)

    if isinstance(exc, DestinationExistsError):
        return EXIT_IO, "destination exists"
    if isinstance(exc, IntegrityError):
        return EXIT_INTEGRITY, "integrity check failed"
    if isinstance(exc, WrongKeyError):
        return EXIT_WRONG_KEY, "wrong key"
    if isinstance(exc, FormatError):
        return EXIT_FORMAT, "malformed or unsupported file"
    if isinstance(exc, InvalidKeyError):
        return EXIT_INVALID_KEY, "invalid key file"
    if isinstance(exc, BackendError):
        return EXIT_BACKEND, "backend error"
    if isinstance(exc, SealError):
        return EXIT_INTEGRITY, "sealtensors error"
    if isinstance(exc, OSError):
        return EXIT_IO, "I/O error"
    if isinstance(exc, (_UsageError, ValueError)):
        return EXIT_USAGE, "usage error"
    return EXIT_INTERNAL, f"internal error ({type(exc).__name__}; please report it)"


def _error(label: str, message: str) -> None:
    sys.stderr.write(f"sealtensors: error: {label}: {_one_line(message)}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write("\nsealtensors: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout went away (e.g. piped into `head`): nothing useful left to say.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - avoid a second error at exit
        except OSError:
            pass
        return EXIT_IO
    except Exception as exc:  # noqa: BLE001 - the whole point: no tracebacks, documented codes
        # Reported from another function so that no local of this frame (which is in the
        # traceback) keeps the exception alive: the traceback is freed by reference counting here,
        # not left in a reference cycle for the garbage collector.
        return _report(exc)


def _report(exc: BaseException) -> int:
    cause = _root_cause(exc)
    code, label = classify(cause)
    _error(label, _describe(cause))
    if os.environ.get("SEALTENSORS_DEBUG", "").strip() == "1":
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
