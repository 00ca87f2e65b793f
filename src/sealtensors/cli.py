"""The ``sealtensors`` command: keygen, seal, unseal, inspect, verify, rewrap, info, demo, help.

``main(argv)`` returns the process exit status instead of raising: every failure becomes one line
on stderr (``sealtensors: error: <kind>: <message>``) and one of the documented exit codes below,
never a traceback (set ``SEALTENSORS_DEBUG=1`` to get the traceback as well). With ``--json`` every
command prints exactly one JSON document on stdout instead: its result, or ``{"error": {...}}`` with
the same exit code. Key material is never printed: keys are named by their public key id only.
Everything printed for people passes through :func:`printable`, so a file name, tensor name or
metadata value cannot carry terminal escape sequences to the screen.

Adding a subcommand: write ``cmd_<name>(args) -> Result`` and an ``_args_<name>(parser)`` that adds
its arguments (the ``add_*_option`` helpers hold the shared ones), and list both in ``COMMANDS``.
Key options are read in one place, :func:`read_keys`.
"""

from __future__ import annotations

import argparse
import errno
import inspect as _inspect
import json
import os
import re
import sys
import time
import warnings
from typing import Callable, NamedTuple, Sequence

EXIT_OK = 0
EXIT_INTEGRITY = 1
EXIT_USAGE = 2
EXIT_WRONG_KEY = 3
EXIT_FORMAT = 4
EXIT_IO = 5
EXIT_INVALID_KEY = 6
EXIT_BACKEND = 7
EXIT_SIGNATURE = 8
EXIT_PROVIDER = 9
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

# When one run has several failures (``verify A B C``), the exit status is the most severe one, in
# this order: a bug first, then evidence of tampering, then a bad file, then everything else.
EXIT_SEVERITY = (EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_INTEGRITY, EXIT_SIGNATURE, EXIT_FORMAT,
                 EXIT_WRONG_KEY, EXIT_INVALID_KEY, EXIT_PROVIDER, EXIT_BACKEND, EXIT_IO, EXIT_USAGE,
                 EXIT_OK)

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
  8    signature check failed: unsigned, signed by a key not accepted, content not what the
       publisher signed, or older than the pinned generation (--signer, --trust-file, --pin)
  9    key provider failure (KMS, HSM, TPM: denied, disabled, absent, policy mismatch)
  70   internal error (a bug: please report it; SEALTENSORS_DEBUG=1 shows the traceback)
  130  interrupted (Ctrl-C)
  `verify A B ...` exits with the most severe status of its files, in the order
  70, 1, 8, 4, 3, 6, 9, 7, 5 (an integrity failure outranks a missing file).
"""

ENVIRONMENT_HELP = """\
environment:
  SEALTENSORS_BACKEND=auto|c|python   SEALTENSORS_AES=auto|ipsecmb|openssl
  SEALTENSORS_THREADS=N               SEALTENSORS_DEBUG=1 (tracebacks on errors)
  SEALTENSORS_AUDIT_LOG=FILE          (key provider audit trail, JSON lines)
  SEALTENSORS_IDENTITY=FILE[:FILE]    keys for sealed checkpoints loaded by transformers/vLLM
  SEALTENSORS_SIGNER=st-sign:...[,..] (sealtensors.integrations; see the README)
"""

KEYS_HELP = """\
keys and recipients:
  sealtensors keygen --type x25519 -o me.key    an identity (secret, mode 0600); prints its
                                                public recipient string st-x25519:...
  --type xwing                                  a post-quantum (ML-KEM-768 + X25519) identity
  --type symmetric                              a 32-byte secret key (both sides hold it)
  --type signing                                a publisher signing key; prints st-sign:...
  sealtensors key public me.key                 the recipient string of an identity
  sealtensors key id FILE                       the public name of a key or identity
sealing (who can open):   -r/--recipient STR (repeatable), -R/--recipients-file F,
                          -k/--key-file F (symmetric), --passphrase, --passphrase-env NAME
opening (what opens):     -i/--identity F, -k/--key-file F, --passphrase, --passphrase-env NAME,
                          --key-env NAME (a variable holding the identity text); F may be '-'
                          (standard input)
publisher signatures:     seal --sign-with SIGNING.key [--generation N];
                          readers --signer st-sign:... / --trust-file F / --pin F
                          [--min-generation N] [--expect-file-id HEX]
"""

JSON_HELP = """\
--json (every command):
  stdout carries exactly one JSON document and nothing else: the command's result, or on failure
  {"error": {"type": "<exception class>", "kind": "<kind of failure>", "message": "...",
             "exit_code": N}}
  (plus "chunk_index" for integrity failures inside a chunk). The exit code is the same as
  without --json. stderr carries only warnings and, on a terminal, progress bars.
  `verify --json A B` prints {"ok": ..., "exit_code": N, "files": [{"path": ..., "ok": ...}, ...]}
  with an "error" object in each failed file's entry.
"""

HELP_TOPICS = {"exit-codes": EXIT_CODES_HELP, "environment": ENVIRONMENT_HELP, "json": JSON_HELP,
               "keys": KEYS_HELP}

SUBCOMMAND_EPILOG = ("exit codes: `sealtensors help exit-codes`; JSON output: "
                     "`sealtensors help json`")


# --- terminal safety ------------------------------------------------------------------------------

# C0 and C1 controls, DEL, the bidirectional overrides/isolates/marks (they reorder what a reader
# sees), the line and paragraph separators, and lone surrogates (undecodable bytes of a file name,
# which would also make a UTF-8 stdout raise).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069\ud800-\udfff]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def printable(text: object) -> str:
    """``text`` safe to show on a terminal: control characters, bidi overrides and undecodable
    bytes become visible escapes (``\\x1b``, ``\\u202e``). Printable text is left as it is."""
    return _UNSAFE.sub(_escape, str(text))


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
    """One line for people on stdout (escaped here too, whatever the caller did)."""
    print(printable(text), file=sys.stdout)


def _out_json(document) -> None:
    print(json.dumps(document, indent=2), file=sys.stdout)


def _stderr_line(text: str) -> None:
    sys.stderr.write(printable(text) + "\n")
    sys.stderr.flush()


class Result(NamedTuple):
    """What a subcommand produced: ``data`` for ``--json``, ``lines`` for people (stdout),
    ``errors`` (stderr lines, without the ``sealtensors: error:`` prefix) and the exit status."""

    data: dict
    lines: Sequence[str]
    code: int = EXIT_OK
    errors: Sequence[str] = ()


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


# --- checks made before any work ------------------------------------------------------------------


def _peek(path: str, count: int = 9) -> tuple[bytes, int]:
    """The first ``count`` bytes of ``path`` and its size; errors name ``path``."""
    from .io import remote

    location = remote.resolve(path)
    if location is not None:  # s3://, gs://, https://...: one metadata request and one range GET
        obj = location.open()
        try:
            return obj.read(0, count), obj.size
        finally:
            obj.close()
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    with open(path, "rb") as handle:
        return handle.read(count), os.fstat(handle.fileno()).st_size


def _is_checkpoint_dir(path: str) -> bool:
    """A local directory, or a URL naming a checkpoint directory: it ends in '/', or a sealed
    manifest is under it (one metadata request; object stores and HTTP have no directories)."""
    from .io import remote

    if remote.is_url(path):
        from .checkpoint import is_sealed_checkpoint

        return path.endswith("/") or is_sealed_checkpoint(path)
    return os.path.isdir(path)


def check_plain_source(path: str) -> None:
    """Refuse, naming ``path``, a source that is no .safetensors file (sealed, JSON, random)."""
    from .format.safetensors_io import check_prefix

    prefix, size = _peek(path)
    check_prefix(prefix, size, path)


def check_sealed_source(path: str) -> None:
    """Refuse, naming ``path``, a plain .safetensors file given where a sealed file is expected.
    Anything else that is not a sealed file is left to the sealed format's own parser."""
    from .errors import FormatError
    from .format.safetensors_io import SEALED_MAGIC, check_prefix

    prefix, size = _peek(path)
    if prefix.startswith(SEALED_MAGIC):
        return
    try:
        check_prefix(prefix, size, path)
    except FormatError:
        return
    raise FormatError(f"{path} is a plain safetensors file, not a sealed file (seal it first)")


def check_destination(path: str, force: bool) -> None:
    """Fail before the work, naming ``path``, when the output could not be written (it exists and
    --force was not given, it is a directory, its directory is missing or not writable). The write
    itself still refuses a destination that appears meanwhile."""
    from .io.atomic import check_destination as check

    check(path, overwrite=force)


# --- keys -----------------------------------------------------------------------------------------


def _key_id_hex(key: bytes) -> str:
    from .keys.keyfile import key_id

    return key_id(key).hex()


_stdin_used = False


def _read_source(path: str, what: str) -> bytes:
    """The bytes of a key-ish file; ``-`` is standard input (once per command)."""
    global _stdin_used
    if path != "-":
        return b""
    if _stdin_used:
        raise UsageError(f"standard input ('-') can be used for only one {what}")
    _stdin_used = True
    return sys.stdin.buffer.read(65537)


def _identity_from(path: str):
    from .keys.keyfile import _parse_identity, load_identity

    if path == "-":
        return _parse_identity(_read_source(path, "key"), "<stdin>")
    return load_identity(path)


def _prompt_passphrase(confirm: bool) -> str:
    import getpass

    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise UsageError("--passphrase: no passphrase on standard input")
        return line.rstrip("\r\n")
    first = getpass.getpass("passphrase: ")
    if confirm and getpass.getpass("passphrase (again): ") != first:
        raise UsageError("the two passphrases differ")
    return first


def _passphrases(args, confirm: bool) -> list:
    from .keys import Passphrase

    phrases = []
    if getattr(args, "passphrase", False):
        phrases.append(Passphrase(_prompt_passphrase(confirm)))
    for name in getattr(args, "passphrase_env", None) or []:
        value = os.environ.get(name)
        if not value:
            raise UsageError(f"--passphrase-env: environment variable {name} is not set or empty")
        phrases.append(Passphrase(value))
    return phrases


def read_identities(args, required: bool = True) -> list:
    """Everything the command line gives to open a file, in order: --identity, --key-file,
    --key-env, --passphrase(-env)."""
    from .keys.keyfile import _parse_identity

    identities = [_identity_from(path) for path in getattr(args, "identity", None) or []]
    identities += [_identity_from(path) for path in getattr(args, "key_file", None) or []]
    for name in getattr(args, "key_env", None) or []:
        value = os.environ.get(name)
        if not value:
            raise UsageError(f"--key-env: environment variable {name} is not set or empty")
        identities.append(_parse_identity(value.encode("utf-8"), f"${name}"))
    identities += _passphrases(args, confirm=False)
    if required and not identities:
        raise UsageError("no key given: pass --identity FILE, --key-file FILE, --key-env NAME or "
                         "--passphrase (`sealtensors help keys`)")
    return identities


def read_keys(paths: Sequence[str]) -> list:
    """Symmetric keys or identities named by paths (``-`` = standard input), in order."""
    return [_identity_from(path) for path in paths]


def read_recipients(args) -> list:
    """Who a seal is for: --recipient, --recipients-file, --key-file, --identity (its public
    half), --passphrase(-env)."""
    from .keys.keyfile import as_recipients, parse_recipient, read_recipients_file

    recipients = [parse_recipient(text) for text in getattr(args, "recipient", None) or []]
    for path in getattr(args, "recipients_file", None) or []:
        recipients += read_recipients_file(path if path != "-" else "/dev/stdin")
    recipients += as_recipients(read_keys(getattr(args, "key_file", None) or [])) \
        if getattr(args, "key_file", None) else []
    recipients += as_recipients(read_keys(getattr(args, "identity", None) or [])) \
        if getattr(args, "identity", None) else []
    recipients += _passphrases(args, confirm=True)
    if not recipients:
        raise UsageError("no recipient given: pass --recipient STR, --recipients-file FILE, "
                         "--key-file FILE or --passphrase (`sealtensors help keys`)")
    return recipients


def verification(args) -> dict:
    """signer=/pin=/min_generation=/expect_file_id= from --signer, --trust-file, --pin, ..."""
    from .keys.signing import as_verifying_keys

    signers = []
    for text in getattr(args, "signer", None) or []:
        signers += as_verifying_keys(text if text.startswith("st-sign:") else text)
    for path in getattr(args, "trust_file", None) or []:
        signers += as_verifying_keys(path)
    options: dict = {}
    if signers:
        options["signer"] = signers
    if getattr(args, "pin", None):
        options["pin"] = args.pin
    if getattr(args, "min_generation", None) is not None:
        options["min_generation"] = args.min_generation
    if getattr(args, "expect_file_id", None):
        options["expect_file_id"] = args.expect_file_id
    return options


def _signing_key(args):
    from .keys.signing import SigningKey

    path = getattr(args, "sign_with", None)
    if not path:
        if getattr(args, "generation", None) is not None:
            raise UsageError("--generation is part of a signature: pass --sign-with too")
        return None
    if path == "-":
        from .keys import textcodec
        from .keys.keyfile import _secret_line

        text = _secret_line(_read_source(path, "signing key"), "<stdin>")
        return SigningKey(textcodec.decode(text, ("ST-SIGN-SECRET",))[1])
    return SigningKey.load(path)


def _describe_recipients(recipients) -> list[str]:
    return [r.describe() for r in recipients]


# --- subcommands ----------------------------------------------------------------------------------


def cmd_keygen(args) -> Result:
    from .keys import SigningKey, generate_identity, identity_text
    from .keys.keyfile import write_secret_file

    path = args.output or args.path
    if path is None:
        raise UsageError("keygen needs an output file: -o FILE")
    if args.path and args.output and args.path != args.output:
        raise UsageError("give the output file once (PATH or -o FILE)")
    check_destination(path, args.force)
    if args.type == "signing":
        key = SigningKey.generate()
        public = key.verifying_key.text()
        text = f"# sealtensors signing key; verifying key: {public}\n{key.text()}\n"
    else:
        identity = generate_identity(args.type)
        text = identity_text(identity)
        public = identity.name().hex() if args.type == "symmetric" else identity.recipient().text()
    try:
        write_secret_file(path, text, overwrite=args.force)
    except FileExistsError:
        from .io.atomic import DestinationExistsError

        raise DestinationExistsError(f"{path!r} exists (pass --force to replace it)") from None
    data = {"path": path, "type": args.type, "mode": "0600"}
    if args.type == "symmetric":
        data["key_id"] = public
        lines = [f"wrote key file {path} (mode 0600)", f"key id: {public}"]
    else:
        data["public"] = public
        label = "verifying key" if args.type == "signing" else "recipient"
        lines = [f"wrote {args.type} {'signing key' if args.type == 'signing' else 'identity'} "
                 f"{path} (mode 0600)", f"{label}: {public}"]
    return Result(data, lines)


def _public_of(path: str) -> tuple[str, str]:
    """(type, public text) of an identity, signing key or public string/file."""
    from .keys import textcodec
    from .keys.hpke import PublicKeyIdentity
    from .keys.signing import SigningKey
    from .keys.symmetric import SymmetricKey

    raw = _read_source(path, "key") if path == "-" else None
    if raw is None and not os.path.exists(path) and textcodec.tag_of(path.strip()):
        text = path.strip()
    else:
        from .keys.keyfile import _read_small, _secret_line

        data = raw if raw is not None else _read_small(path, "key file")
        if len(data) == 32:
            return "symmetric", SymmetricKey(data).name().hex()
        text = _secret_line(data, "<stdin>" if path == "-" else path)
    tag = textcodec.tag_of(text)
    if tag == "ST-SIGN-SECRET":
        return "signing", SigningKey(textcodec.decode(text, (tag,))[1]).verifying_key.text()
    if tag in textcodec.PUBLIC_TAGS:
        textcodec.decode(text, (tag,))
        return tag[3:], text
    from .keys.keyfile import _parse_identity

    identity = _identity_from(path) if raw is None else _parse_identity(raw, "<stdin>")
    if isinstance(identity, SymmetricKey):
        return "symmetric", identity.name().hex()
    if isinstance(identity, PublicKeyIdentity):
        return identity.describe().split(" ")[0], identity.recipient().text()
    raise UsageError(f"{path}: not a key, identity or recipient")


def cmd_key(args) -> Result:
    import hashlib

    kind, public = _public_of(args.file)
    if args.action == "public":
        if kind == "symmetric":
            raise UsageError("a symmetric key has no public half (its holders share the secret); "
                             "`sealtensors key id` prints its public name")
        return Result({"type": kind, "public": public}, [public])
    name = public if kind == "symmetric" else hashlib.sha256(public.encode()).hexdigest()[:32]
    return Result({"type": kind, "id": name}, [f"{kind} {name}"])


def _tree_data_size(directory: str) -> int:
    """Tensor bytes of every plain .safetensors file under ``directory`` (progress total)."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        total += sum(_safetensors_data_size(os.path.join(root, name)) for name in files
                     if name.endswith(".safetensors"))
    return total


def _many_targets(sources: Sequence[str], dst: str, force: bool) -> list[tuple[str, str]]:
    """(source, DST/basename) pairs for a command given several files and a directory."""
    if not os.path.isdir(dst):
        raise UsageError(f"with several inputs the last argument must be an existing directory: "
                         f"{dst}")
    pairs, seen = [], set()
    for source in sources:
        name = os.path.basename(os.path.normpath(source))
        if name in seen:
            raise UsageError(f"two inputs are named {name}: their outputs would collide")
        seen.add(name)
        target = os.path.join(dst, name)
        check_destination(target, force)
        pairs.append((source, target))
    return pairs


def _run_files(jobs: dict, total: int, desc: str) -> dict:
    """Run ``jobs`` ({name: callable(progress)}) in parallel under one progress bar."""
    from .checkpoint import _ProgressSum, _default_workers, _run_parallel

    with _Progress(total, desc) as progress:
        counter = _ProgressSum(total, None if progress is None
                               else (lambda done, _total: progress(done)))
        return _run_parallel({name: (lambda name=name, job=job: job(counter.for_file(name)))
                              for name, job in jobs.items()}, _default_workers(len(jobs)))


def _seal_many(args, recipients, signer) -> Result:
    from .api import seal_file

    for source in args.src:
        check_plain_source(source)
    pairs = _many_targets(args.src, args.dst, args.force)
    started = time.perf_counter()
    ids = _run_files({source: (lambda progress, source=source, target=target: seal_file(
        source, target, recipients=recipients, overwrite=args.force, threads=args.threads,
        progress=progress, signer=signer, generation=args.generation)) for source, target in pairs},
        sum(_safetensors_data_size(source) for source in args.src), "sealing")
    files = [{"src": source, "dst": target, "file_id": ids[source],
              "size": os.path.getsize(target)} for source, target in pairs]
    return Result({"files": files, "recipients": _describe_recipients(recipients),
                   "signed": signer is not None,
                   "seconds": round(time.perf_counter() - started, 6)},
                  [f"sealed {printable(f['src'])} -> {printable(f['dst'])} "
                   f"({human_size(f['size'])})" for f in files])


def _seal_directory(args, recipients, signer) -> Result:
    from .checkpoint import MANIFEST_NAME, seal_checkpoint

    started = time.perf_counter()
    with _Progress(_tree_data_size(args.src), "sealing") as progress:
        report = seal_checkpoint(args.src, args.dst, recipients, signer=signer,
                                 generation=args.generation, overwrite=args.force,
                                 threads=args.threads,
                                 progress=None if progress is None else
                                 (lambda done, _total: progress(done)))
    report["seconds"] = round(time.perf_counter() - started, 6)
    report["recipients"] = _describe_recipients(recipients)
    return Result(report, [
        f"sealed checkpoint {printable(args.src)} -> {printable(args.dst)} "
        f"({len(report['shards'])} shard(s), {report['seconds']:.2f} s) for "
        f"{len(recipients)} recipient(s)",
        *(f"  {printable(s['name'])}  file id {s['file_id']}" for s in report["shards"]),
        f"  {MANIFEST_NAME}  file id {report['manifest_file_id']}",
        *(f"  {printable(name)}: index stub (tensor names only in the manifest)"
          for name in report["indexes"]),
        *(f"  {printable(name)}: copied" for name in report["copied"])])


def cmd_seal(args) -> Result:
    from .api import seal_file

    if len(args.src) > 1:
        return _seal_many(args, read_recipients(args), _signing_key(args))
    args.src = args.src[0]
    if os.path.isdir(args.src):
        return _seal_directory(args, read_recipients(args), _signing_key(args))
    check_plain_source(args.src)
    check_destination(args.dst, args.force)
    recipients = read_recipients(args)
    signer = _signing_key(args)
    started = time.perf_counter()
    with _Progress(_safetensors_data_size(args.src), "sealing") as progress:
        file_id = seal_file(args.src, args.dst, recipients=recipients, overwrite=args.force,
                            threads=args.threads, progress=progress, signer=signer,
                            generation=args.generation)
    elapsed = time.perf_counter() - started
    size = os.path.getsize(args.dst)
    described = _describe_recipients(recipients)
    data = {"src": args.src, "dst": args.dst, "size": size, "seconds": round(elapsed, 6),
            "file_id": file_id, "recipients": described, "signed": signer is not None}
    lines = [f"sealed {printable(args.src)} -> {printable(args.dst)} ({human_size(size)}, "
             f"{elapsed:.2f} s) for {len(recipients)} recipient(s)",
             *(f"  {printable(text[:72])}" for text in described)]
    if signer is not None:
        data["signer"] = signer.verifying_key.text()
        lines.append(f"  signed by {signer.verifying_key.text()[:40]}...")
    return Result(data, lines)


def _unseal_many(args, keys) -> Result:
    from .api import inspect, unseal_file

    for source in args.src:
        check_sealed_source(source)
    pairs = _many_targets(args.src, args.dst, args.force)
    total = sum(inspect(source)["data_size"] for source in args.src) \
        if _stderr_is_terminal() else 0
    options = verification(args)
    _run_files({source: (lambda progress, source=source, target=target: unseal_file(
        source, target, keys, overwrite=args.force, threads=args.threads, progress=progress,
        **options)) for source, target in pairs}, total, "unsealing")
    files = [{"src": source, "dst": target, "size": os.path.getsize(target)}
             for source, target in pairs]
    return Result({"files": files, "authenticated": True},
                  [f"unsealed {printable(f['src'])} -> {printable(f['dst'])} "
                   f"({human_size(f['size'])}, every byte authenticated)" for f in files])


def _unseal_directory(args, keys) -> Result:
    from .checkpoint import unseal_checkpoint

    started = time.perf_counter()
    report = unseal_checkpoint(args.src, args.dst, keys, overwrite=args.force,
                               threads=args.threads, **verification(args))
    report["seconds"] = round(time.perf_counter() - started, 6)
    report["authenticated"] = True
    return Result(report, [f"unsealed checkpoint {printable(args.src)} -> {printable(args.dst)} "
                           f"({len(report['shards'])} shard(s), every byte authenticated, the "
                           "manifest checked)"])


def cmd_unseal(args) -> Result:
    from .api import inspect, unseal_file

    if len(args.src) > 1:
        return _unseal_many(args, read_identities(args))
    args.src = args.src[0]
    if _is_checkpoint_dir(args.src):
        return _unseal_directory(args, read_identities(args))
    check_sealed_source(args.src)
    check_destination(args.dst, args.force)
    keys = read_identities(args)
    total = inspect(args.src)["data_size"] if _stderr_is_terminal() else 0
    started = time.perf_counter()
    with _Progress(total, "unsealing") as progress:
        unseal_file(args.src, args.dst, keys, overwrite=args.force, threads=args.threads,
                    progress=progress, **verification(args))
    elapsed = time.perf_counter() - started
    size = os.path.getsize(args.dst)
    return Result({"src": args.src, "dst": args.dst, "size": size, "seconds": round(elapsed, 6),
                   "authenticated": True},
                  [f"unsealed {args.src} -> {args.dst} ({human_size(size)}, {elapsed:.2f} s, "
                   "every byte authenticated)"])


def _verify_one(path: str, keys: list, threads: int, options: dict) -> dict:
    from .api import inspect, verify

    if _is_checkpoint_dir(path):
        from .checkpoint import verify_checkpoint

        started = time.perf_counter()
        summary = verify_checkpoint(path, keys, threads=threads, **options)
        return {"path": path, "ok": True, "checkpoint": True, "tensors": summary["tensors"],
                "data_size": summary["data_size"], "file_id": summary["manifest_file_id"],
                "shards": summary["shards"], "signed": summary["signed"],
                "not_checked": summary["not_checked"],
                "seconds": round(time.perf_counter() - started, 6)}
    check_sealed_source(path)
    started = time.perf_counter()
    if "progress" in _inspect.signature(verify).parameters and _stderr_is_terminal():
        with _Progress(inspect(path)["data_size"], "verifying") as progress:
            summary = verify(path, keys, threads=threads, progress=progress, **options)
    else:
        summary = verify(path, keys, threads=threads, **options)
    entry = {"path": path, "ok": True, "tensors": summary["tensors"],
             "data_size": summary["data_size"], "file_id": summary["file_id"],
             "signed": summary["signed"], "seconds": round(time.perf_counter() - started, 6)}
    if "signer" in summary:
        entry["signer"] = summary["signer"]
        entry["generation"] = summary["generation"]
    return entry


def cmd_verify(args) -> Result:
    keys = read_identities(args)
    options = verification(args)
    files, lines, errors = [], [], []
    for path in args.src:
        try:
            entry = _verify_one(path, keys, args.threads, options)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one file's failure must not hide the others'
            failure = _failure(exc, subject=path)
            files.append({"path": path, "ok": False, "error": failure.as_json()})
            errors.append(failure.line())
            continue
        files.append(entry)
        signed = (f", signed by an accepted publisher, generation {entry['generation']}"
                  if "signer" in entry else "")
        lines.append(f"OK: {printable(path)} authenticated ({entry['tensors']} tensors, "
                     f"{human_size(entry['data_size'])} of data{signed}, "
                     f"{entry['seconds']:.2f} s)")
        lines += [f"  not checked: {printable(item)}" for item in entry.get("not_checked", ())]
    code = _most_severe(entry["error"]["exit_code"] for entry in files if not entry["ok"])
    return Result({"ok": code == EXIT_OK, "exit_code": code, "files": files}, lines, code, errors)


def _format_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    rows = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in [header, *rows]]


def _inspect_directory(args) -> Result:
    from .checkpoint import inspect_checkpoint

    keys = read_identities(args, required=False) or None
    report = inspect_checkpoint(args.src, keys, **(verification(args) if keys else {}))
    lines = ["authenticated: yes (manifest and shards checked with your key)"
             if report["authenticated"] else
             "authenticated: NO (no key given: what follows is what the files claim)",
             f"checkpoint:  {printable(report['path'])}"
             + ("" if report["checkpoint"] else " (no manifest: not a sealed checkpoint)")]
    if report.get("listing", "complete") != "complete":
        lines.append(f"  files shown: {printable(report['listing'])}")
    lines += [f"  sealed  {printable(f['name'])}: {human_size(f['file_size'])}, "
              f"{len(f['slots'])} slot(s), file id {f['file_id']}" for f in report["sealed_files"]]
    lines += [f"  plain   {printable(f['name'])}: {human_size(f['size'])}"
              for f in report["plain_files"]]
    for shard, tensors in (report.get("tensors") or {}).items():
        lines.append(f"{printable(shard)}: {len(tensors)} tensor(s)")
        lines += _table([(t["name"], t["dtype"], _format_shape(t["shape"])) for t in tensors],
                        ("name", "dtype", "shape")) if tensors else []
    if not report["authenticated"]:
        lines.append("tensor names, shapes and the index's tensor map are encrypted; "
                     "pass --identity/--key-file to list them")
    return Result(report, lines)


def cmd_inspect(args) -> Result:
    if len(args.src) > 1:
        results = [_inspect_path(argparse.Namespace(**{**vars(args), "src": path}))
                   for path in args.src]
        return Result({"files": [r.data for r in results]},
                      [line for r in results
                       for line in (f"== {printable(r.data['path'])}", *r.lines)])
    args.src = args.src[0]
    return _inspect_path(args)


def _inspect_path(args) -> Result:
    from .api import inspect

    if _is_checkpoint_dir(args.src):
        return _inspect_directory(args)
    check_sealed_source(args.src)
    keys = read_identities(args, required=False) or None
    report = inspect(args.src, keys, **(verification(args) if keys else {}))
    authenticated = report.get("authenticated", False)
    lines = [
        "authenticated: yes (header, slots and index checked with your key)" if authenticated
        else "authenticated: NO (no key given: what follows is what the file claims)",
        f"file:        {printable(report['path'])}",
        f"size:        {report['file_size']} bytes ({human_size(report['file_size'])})",
        f"format:      version {report['format_version']}, suite {report['suite']} "
        "(C2SP chunked AES-256-GCM)",
        f"header:      {report['header_size']} bytes",
        f"index:       {report['index_message_size']} bytes (encrypted)",
        f"data:        {report['data_size']} bytes of plaintext "
        f"({report['data_message_size']} bytes sealed)",
        f"file id:     {report['file_id']} (header sequence {report['header_sequence']})",
        f"recipients:  {len(report['slots'])} slot(s)",
    ]
    mine = report.get("your_slot")
    lines += [f"  {slot['type']:<10} slot {slot['slot_id']}" + ("  <- yours" if slot["slot_id"] == mine
                                                                 else "")
              for slot in report["slots"]]
    if report.get("signed"):
        signature = report.get("signature") or {}
        state = "verified" if report.get("signature_verified") else "not verified (pass --signer)"
        lines.append(f"signed:      yes, {state}: generation {signature.get('generation')}, "
                     f"by {str(signature.get('signer', '?'))[:40]}...")
    else:
        lines.append("signed:      no")
    if "tensors" not in report:
        lines.append("tensor names, dtypes, shapes and metadata are encrypted; "
                     "pass --identity/--key-file to list them")
        return Result(report, lines)
    metadata = report.get("metadata") or {}
    lines.append(f"metadata:    {len(metadata)} entries")
    lines += [f"  {printable(name)}: {printable(value)}" for name, value in metadata.items()]
    tensors = report["tensors"]
    lines.append(f"tensors:     {len(tensors)}")
    if tensors:
        rows = [(t["name"], t["dtype"], _format_shape(t["shape"]),
                 human_size(t["offsets"][1] - t["offsets"][0])) for t in tensors]
        lines += _table(rows, ("name", "dtype", "shape", "size"))
    return Result(report, lines)


def cmd_rewrap(args) -> Result:
    from .api import rewrap
    from .keys import Passphrase
    from .keys.keyfile import as_recipients, parse_recipient

    add = [parse_recipient(text) for text in args.add_recipient]
    add += as_recipients(read_keys(args.add)) if args.add else []
    if args.add_passphrase:
        add.append(Passphrase(_prompt_passphrase(confirm=True)))
    if not add and not args.remove:
        raise UsageError("nothing to do: pass --add-recipient STR, --add KEYFILE, --add-passphrase "
                         "and/or --remove SLOT_ID_OR_RECIPIENT")
    keys = read_identities(args)
    # A slot id or a public string is passed through as text (parsed strictly by rewrap); anything
    # else names a key or identity file, read here so that '-' (stdin) works too.
    removals = [item if re.fullmatch(r"[0-9a-f]{32}", item) or item.startswith("st-")
                else read_keys([item])[0] for item in args.remove]
    if len(args.src) > 1 or _is_checkpoint_dir(args.src[0]):
        if args.output is not None:
            raise UsageError("--output takes one file; directories and several files are "
                             "rewrapped in place")
        return _rewrap_many(args, keys, add, removals)
    args.src = args.src[0]
    check_sealed_source(args.src)
    if args.output is not None:
        check_destination(args.output, args.force)
    result = rewrap(args.src, keys, add=add, remove=removals, dst=args.output,
                    overwrite=args.force, verify_data=args.verify, threads=args.threads)
    where = args.output if args.output is not None else args.src
    how = ("header rewritten in place" if result["in_place"] and not result["rewrote_data"]
           else "whole file rewritten")
    return Result({"src": args.src, "dst": where, **result},
                  [f"rewrapped {printable(args.src)} -> {printable(where)} ({how}): "
                   f"{len(result['slots'])} recipient slot(s)",
                   *(f"  {slot['type']:<10} slot {slot['slot_id']}" for slot in result["slots"]),
                   "note: a removed recipient who kept the data key can still read this content; "
                   "`sealtensors reseal` revokes for real" if args.remove else ""])


def _rewrap_many(args, keys, add, removals) -> Result:
    from .api import rewrap
    from .checkpoint import rewrap_checkpoint

    files, lines = [], []
    for path in args.src:
        if _is_checkpoint_dir(path):
            report = rewrap_checkpoint(path, keys, add=add, remove=removals,
                                       verify_data=args.verify, threads=args.threads)
            for entry in report["files"]:
                files.append({"path": os.path.join(path, entry["name"]), **entry})
            done = sum(entry["action"] == "rewrapped" for entry in report["files"])
            lines.append(f"rewrapped checkpoint {printable(path)}: {done} file(s) rewrapped, "
                         f"{len(report['files']) - done} already done")
            continue
        check_sealed_source(path)
        result = rewrap(path, keys, add=add, remove=removals, verify_data=args.verify,
                        threads=args.threads)
        files.append({"path": path, "action": "rewrapped", **result})
        lines.append(f"rewrapped {printable(path)}: {len(result['slots'])} recipient slot(s)")
    if args.remove:
        lines.append("note: a removed recipient who kept the data key can still read this "
                     "content; `sealtensors reseal` revokes for real")
    return Result({"files": files}, lines)


def cmd_reseal(args) -> Result:
    from .api import reseal

    check_sealed_source(args.src)
    if args.output is not None:
        check_destination(args.output, args.force)
    keys = read_identities(args, required=False)
    if not keys:
        raise UsageError("reseal needs what opens the file now: --identity/--key-file/--key-env")
    has_new = any(getattr(args, name, None) for name in ("recipient", "recipients_file",
                                                          "new_key_file", "passphrase_new"))
    recipients = None
    if has_new:
        recipients = read_recipients(argparse.Namespace(
            recipient=args.recipient, recipients_file=args.recipients_file,
            key_file=args.new_key_file, identity=None, passphrase=args.passphrase_new,
            passphrase_env=None))
    signer = _signing_key(args)
    started = time.perf_counter()
    file_id = reseal(args.src, keys, dst=args.output, recipients=recipients, signer=signer,
                     generation=args.generation, allow_unsigned=args.unsigned,
                     overwrite=args.force, threads=args.threads, **verification(args))
    where = args.output or args.src
    return Result({"src": args.src, "dst": where, "file_id": file_id, "signed": signer is not None,
                   "seconds": round(time.perf_counter() - started, 6)},
                  [f"resealed {printable(args.src)} -> {printable(where)}: new data key, file id "
                   f"{file_id}" + (", signed" if signer is not None else "")])


def cmd_audit(args) -> Result:
    from .keys import audit

    result = audit.verify(args.log)
    data = {"log": args.log, "ok": result.ok, "records": result.records,
            "first_bad_line": result.line, "reason": result.reason}
    if result.ok:
        return Result(data, [f"OK: {printable(args.log)}: {result.records} record(s), chain intact"])
    return Result(data, [], EXIT_INTEGRITY,
                  [f"integrity check failed: {printable(args.log)} line {result.line}: "
                   f"{printable(result.reason)}"])


def cmd_info(args) -> Result:
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
    data = {"version": __version__, "engine": info, "c_engine": c_engine,
            "c_providers": providers, "python": platform.python_version()}
    return Result(data, [
        f"sealtensors {__version__} (Python {platform.python_version()})",
        f"backend:     {info.get('backend')}",
        f"provider:    {info.get('provider')}",
        f"cpu path:    {info.get('cpu_path')}",
        f"digests:     {info.get('digest')} (SHA-256 of each chunk of signed files)",
        f"threads:     {info.get('threads')}",
        f"C engine:    {c_engine}" + (f", providers: {', '.join(providers) or 'none'}"
                                      if providers is not None else ""),
    ])


def cmd_demo(args) -> Result:
    from ._demo import run_demo

    collected: list[str] = []
    # For people the demo's lines appear as they happen; for --json they are collected.
    code = run_demo(size_mib=args.size_mib, directory=args.dir,
                    out=collected.append if args.json else _out, overwrite=args.force)
    return Result({"ok": code == EXIT_OK, "dir": args.dir, "output": collected}, [], code)


def cmd_help(args) -> Result:
    parser = build_parser()
    topic = args.topic
    if topic is None:
        text = parser.format_help()
    elif topic in HELP_TOPICS:
        text = HELP_TOPICS[topic]
    elif topic in parser.commands:
        text = parser.commands[topic].format_help()
    else:
        choices = ", ".join([*HELP_TOPICS, *parser.commands])
        raise UsageError(f"no help topic {topic!r} (topics and commands: {choices})")
    return Result({"topic": topic, "text": text}, text.rstrip("\n").split("\n"))


# --- argument parsing -----------------------------------------------------------------------------


class UsageError(Exception):
    """Arguments do not parse, or parse but make no sense together."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error raises (reported as one line with exit status 2) instead of
    printing the usage block and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


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


def add_key_option(p, help_text="a key file that opens the file (repeatable)"):
    """What opens a file; read_identities(args, required=...) decides whether one is needed."""
    p.add_argument("--key-file", "-k", action="append", metavar="KEYFILE", help=help_text)
    p.add_argument("--identity", "-i", action="append", metavar="FILE",
                   help="an identity file (x25519, xwing, symmetric; '-' = stdin; repeatable)")
    p.add_argument("--key-env", action="append", metavar="NAME",
                   help="an environment variable holding an identity's text")
    add_passphrase_options(p)


def add_passphrase_options(p) -> None:
    p.add_argument("--passphrase", action="store_true",
                   help="ask for a passphrase (read one line from stdin when it is not a terminal)")
    p.add_argument("--passphrase-env", action="append", metavar="NAME",
                   help="take a passphrase from this environment variable")


def add_recipient_options(p) -> None:
    p.add_argument("--recipient", "-r", action="append", default=[], metavar="STR",
                   help="a recipient string (st-x25519:..., st-xwing:...; repeatable)")
    p.add_argument("--recipients-file", "-R", action="append", default=[], metavar="FILE",
                   help="a file of recipient strings, one per line")
    p.add_argument("--key-file", "-k", action="append", metavar="KEYFILE",
                   help="a symmetric key file (repeatable)")
    p.add_argument("--identity", "-i", action="append", metavar="FILE",
                   help="seal for this identity file's public half")
    add_passphrase_options(p)
    add_signing_options(p)


def add_signing_options(p) -> None:
    p.add_argument("--sign-with", metavar="SIGNING_KEY",
                   help="sign as publisher with this signing key file (`keygen --type signing`)")
    p.add_argument("--generation", type=_non_negative_int, metavar="N",
                   help="the signed generation number (default: the current Unix time)")


def add_signer_options(p) -> None:
    p.add_argument("--signer", action="append", metavar="STR",
                   help="require a signature by this publisher (st-sign:...; repeatable)")
    p.add_argument("--trust-file", action="append", metavar="FILE",
                   help="require a signature by one of the publishers listed in FILE")
    p.add_argument("--pin", metavar="FILE",
                   help="a JSON pin file: accepted signers, minimum generation, file id")
    p.add_argument("--min-generation", type=_non_negative_int, metavar="N",
                   help="refuse a signed generation below N (rollback protection)")
    p.add_argument("--expect-file-id", metavar="HEX", help="refuse any other signed file id")


def add_threads_option(p) -> None:
    p.add_argument("--threads", "-j", type=_non_negative_int, default=0, metavar="N",
                   help="worker threads (0 = SEALTENSORS_THREADS or all CPUs; default 0)")


def add_force_option(p, help_text="replace DST if it exists") -> None:
    p.add_argument("--force", "-f", action="store_true", help=help_text)


def add_json_option(p) -> None:
    p.add_argument("--json", action="store_true",
                   help="print one JSON document on stdout (`sealtensors help json`)")


def _args_keygen(p) -> None:
    p.add_argument("path", metavar="PATH", nargs="?", help="the file to write (or -o FILE)")
    p.add_argument("--output", "-o", metavar="FILE", help="the file to write")
    p.add_argument("--type", "-t", choices=("symmetric", "x25519", "xwing", "signing"),
                   default="symmetric", help="what to generate (default symmetric)")
    add_force_option(p, "replace an existing file")


def _args_key(p) -> None:
    p.add_argument("action", choices=("public", "id"),
                   help="public: print the recipient / verifying string; id: a public name")
    p.add_argument("file", metavar="FILE", help="an identity or key file ('-' = stdin), or a "
                                                "public string")


def _args_seal(p) -> None:
    p.add_argument("src", metavar="SRC", nargs="+",
                   help="a .safetensors file, a Hugging Face checkpoint directory (sealed into "
                        "the directory DST, with a manifest), or several files (DST: a directory)")
    p.add_argument("dst", metavar="DST")
    add_recipient_options(p)
    add_force_option(p)
    add_threads_option(p)


def _args_unseal(p) -> None:
    p.add_argument("src", metavar="SRC", nargs="+",
                   help="a sealed file, a sealed checkpoint directory, or several sealed files "
                        "(DST: a directory)")
    p.add_argument("dst", metavar="DST")
    add_key_option(p)
    add_signer_options(p)
    add_force_option(p)
    add_threads_option(p)


def _args_inspect(p) -> None:
    p.add_argument("src", metavar="PATH", nargs="+", help="sealed files or checkpoint directories")
    add_key_option(p, help_text="a key file: also list tensors and metadata")
    add_signer_options(p)


def _args_verify(p) -> None:
    p.add_argument("src", metavar="PATH", nargs="+",
                   help="one or more sealed files or sealed checkpoint directories")
    add_key_option(p)
    add_signer_options(p)
    add_threads_option(p)


def _args_rewrap(p) -> None:
    p.add_argument("src", metavar="PATH", nargs="+",
                   help="sealed files or checkpoint directories (a directory is one operation: "
                        "every shard and the manifest; rerun it to finish an interrupted one)")
    add_key_option(p, help_text="a key file that opens FILE now")
    p.add_argument("--add-recipient", action="append", default=[], metavar="STR",
                   help="add a recipient by its public string (repeatable)")
    p.add_argument("--add", action="append", default=[], metavar="KEYFILE",
                   help="add a symmetric key file's key (or an identity's public half)")
    p.add_argument("--add-passphrase", action="store_true", help="add a passphrase (asked for)")
    p.add_argument("--remove", action="append", default=[], metavar="SLOT_ID_OR_RECIPIENT",
                   help="remove a recipient: its 32-hex-digit slot id in this file (`inspect`), "
                        "its public string, or its key file. Removal does NOT revoke anyone who "
                        "kept the data key: use `reseal` for that")
    p.add_argument("--output", "-o", metavar="DST",
                   help="write the result to DST instead of rewriting FILE's header in place")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip authenticating the data first (default: verify, so a damaged file "
                        "is refused)")
    add_force_option(p)
    add_threads_option(p)


def _args_reseal(p) -> None:
    p.add_argument("src", metavar="FILE")
    p.add_argument("--output", "-o", metavar="DST", help="write DST instead of replacing FILE")
    add_key_option(p, help_text="a key file that opens FILE now")
    p.add_argument("--recipient", "-r", action="append", default=[], metavar="STR",
                   help="the new file's recipients (default: the key that opened FILE)")
    p.add_argument("--recipients-file", "-R", action="append", default=[], metavar="FILE")
    p.add_argument("--new-key-file", action="append", metavar="KEYFILE",
                   help="a symmetric key file as a new recipient")
    p.add_argument("--passphrase-new", action="store_true",
                   help="a new passphrase recipient (asked for)")
    add_signing_options(p)
    p.add_argument("--unsigned", action="store_true",
                   help="allow dropping the signature of a signed FILE")
    add_signer_options(p)
    add_force_option(p)
    add_threads_option(p)


def _args_audit(p) -> None:
    p.add_argument("action", choices=("verify",), help="verify: check the log's hash chain")
    p.add_argument("log", metavar="LOG", help="an audit log (SEALTENSORS_AUDIT_LOG)")


def _args_info(p) -> None:
    pass


def _args_demo(p) -> None:
    p.add_argument("--size-mib", type=_positive_float, default=64.0, metavar="N",
                   help="approximate model size in MiB (default 64)")
    p.add_argument("--dir", metavar="DIR",
                   help="keep the files in DIR (default: a temporary directory, removed "
                        "afterwards)")
    add_force_option(p, "replace the demo's files already in DIR")


def _args_help(p) -> None:
    p.add_argument("topic", metavar="TOPIC", nargs="?",
                   help=f"{', '.join(HELP_TOPICS)}, or a command name")


class Command(NamedTuple):
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Result]


COMMANDS: list[Command] = [
    Command("keygen", "write a new key or identity (mode 0600); prints its public recipient "
                      "string (or key id)", _args_keygen, cmd_keygen),
    Command("key", "print the public recipient string (`key public`) or public name (`key id`) "
                   "of a key or identity", _args_key, cmd_key),
    Command("seal", "seal a .safetensors file for one or more recipients", _args_seal, cmd_seal),
    Command("unseal", "decrypt and authenticate a sealed file back into a .safetensors file",
            _args_unseal, cmd_unseal),
    Command("inspect", "show sizes and recipients (no key needed); with a key, tensors and "
                       "metadata", _args_inspect, cmd_inspect),
    Command("verify", "authenticate every byte of one or more sealed files; writes nothing",
            _args_verify, cmd_verify),
    Command("rewrap", "add or remove recipients (rewrites the header only, in place)",
            _args_rewrap, cmd_rewrap),
    Command("reseal", "re-encrypt under a new data key and file id: revokes removed recipients",
            _args_reseal, cmd_reseal),
    Command("audit", "check an audit log's hash chain (`audit verify LOG`)", _args_audit,
            cmd_audit),
    Command("info", "show the engine in use (backend, AES provider, CPU path, threads) and "
                    "version", _args_info, cmd_info),
    Command("demo", "build a small transformer-like model, seal it, load it back, verify, and "
                    "time it", _args_demo, cmd_demo),
    Command("help", "show help on a topic (keys, exit-codes, json, environment) or a command",
            _args_help, cmd_help),
]


def build_parser() -> argparse.ArgumentParser:
    """The parser; ``parser.commands`` maps each command name to its subparser."""
    from . import __version__

    parser = _Parser(
        prog="sealtensors",
        description="Seal model weights (.safetensors) into encrypted, fully authenticated files "
                    "(C2SP chunked AES-256-GCM, one key slot per recipient).",
        epilog=EXIT_CODES_HELP + "\n" + ENVIRONMENT_HELP
        + "\nmore: `sealtensors help json`, `sealtensors help COMMAND`",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sealtensors {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parser.commands = {}
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help,
                           epilog=SUBCOMMAND_EPILOG)
        command.add_arguments(p)
        add_json_option(p)
        p.set_defaults(func=command.run)
        parser.commands[command.name] = p
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
        text = exc.strerror if where is None else f"{os.fsdecode(where)}: {exc.strerror}"
        if exc.filename2 is not None:
            text += f" ({os.fsdecode(exc.filename2)})"
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
    from .errors import (BackendError, FormatError, IntegrityError, InvalidKeyError,
                         KeyProviderError, PolicyError, RecipientError, SealError,
                         SignatureError,
                         WrongKeyError)

    if isinstance(exc, DestinationExistsError):
        return EXIT_IO, "destination exists"
    if isinstance(exc, SignatureError):
        return EXIT_SIGNATURE, "signature check failed"
    if isinstance(exc, KeyProviderError):
        return EXIT_PROVIDER, "key provider failure"
    if isinstance(exc, PolicyError):
        return EXIT_WRONG_KEY, "refused by policy"
    if isinstance(exc, RecipientError):
        return EXIT_USAGE, "recipient error"
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
    if isinstance(exc, (UsageError, ValueError)):
        return EXIT_USAGE, "usage error"
    return EXIT_INTERNAL, f"internal error ({type(exc).__name__}; please report it)"


def _most_severe(codes) -> int:
    codes = set(codes)
    return next((code for code in EXIT_SEVERITY if code in codes), EXIT_OK)


class _Failure(NamedTuple):
    """An exception turned into what the user sees."""

    code: int
    label: str
    type_name: str
    message: str
    chunk_index: int | None

    def line(self) -> str:
        return f"{self.label}: {_one_line(self.message)}"

    def as_json(self) -> dict:
        error = {"type": self.type_name, "kind": self.label, "message": self.message,
                 "exit_code": self.code}
        if self.chunk_index is not None:
            error["chunk_index"] = self.chunk_index
        return error


def _failure(exc: BaseException, subject: str | None = None,
             context: Sequence[str] = ()) -> _Failure:
    """``exc`` as shown to the user. ``subject``: the input file the command works on, named in
    messages about its content that do not name it; ``context``: the paths the command was given,
    named after an OS error that names no file."""
    from .errors import FormatError, IntegrityError, WrongKeyError

    cause = _root_cause(exc)
    code, label = classify(cause)
    message = _describe(cause)
    chunk = getattr(cause, "chunk_index", None) if isinstance(cause, IntegrityError) else None
    if chunk is not None and f"chunk {chunk}" not in message:
        message += f" (chunk {chunk})"
    if (subject is not None and isinstance(cause, (FormatError, IntegrityError, WrongKeyError))
            and subject not in message):
        message = f"{subject}: {message}"
    if (isinstance(cause, OSError) and cause.filename is None and context
            and not any(path in message for path in context)):
        message += f" ({' -> '.join(context)})"
    return _Failure(code, label, type(cause).__name__, message, chunk)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _stderr_line(f"sealtensors: warning: {_one_line(str(message))}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        # One line on stderr per warning, not the file:line form meant for programmers.
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: list[str]) -> int:
    as_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except UsageError as exc:
        return _report(exc, as_json)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write("\nsealtensors: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _stdout_gone()
    except Exception as exc:  # noqa: BLE001 - the whole point: no tracebacks, documented codes
        # Reported from another function so that no local of this frame (which is in the
        # traceback) keeps the exception alive: the traceback is freed by reference counting here,
        # not left in a reference cycle for the garbage collector.
        return _report(exc, as_json, args)
    try:
        if args.json:
            _out_json(result.data)
        else:
            for line in result.lines:
                _out(line)
            for error in result.errors:
                _stderr_line(f"sealtensors: error: {error}")
        sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_gone()
    return result.code


def _stdout_gone() -> int:
    # stdout went away (e.g. piped into `head`): nothing useful left to say.
    try:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - avoid a second error at exit
    except OSError:
        pass
    return EXIT_IO


def _report(exc: BaseException, as_json: bool, args: argparse.Namespace | None = None) -> int:
    src = getattr(args, "src", None)
    subject = src if isinstance(src, str) else None
    context = [path for path in (subject, getattr(args, "dst", None), getattr(args, "output", None))
               if isinstance(path, str)]
    failure = _failure(exc, subject, context)
    if as_json:
        _out_json({"error": failure.as_json()})
    else:
        _stderr_line(f"sealtensors: error: {failure.line()}")
    if os.environ.get("SEALTENSORS_DEBUG", "").strip() == "1":
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    return failure.code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
