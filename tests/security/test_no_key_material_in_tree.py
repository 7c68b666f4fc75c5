"""Keys and passwords come only from connections or a secrets backend: none is committed to the tree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEY_MARKERS = re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |ENCRYPTED )?PRIVATE KEY-----|-----BEGIN CERTIFICATE-----")
# assignments of literal secrets in config-like files (a FERNET key is 44 url-safe base64 chars)
# (placeholders that say CHANGE-ME are what an example file should hold)
SECRET_ASSIGN = re.compile(
    r"(?i)(fernet_key|jwt_secret|secret_key|password)\s*[:=]\s*['\"]?(?!CHANGE-ME)[A-Za-z0-9_\-+/]{16,}")


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return [ROOT / p for p in out.splitlines() if (ROOT / p).is_file()]


def test_no_private_keys_or_certificates_in_the_tree():
    files = tracked_files()
    assert len(files) > 20
    hits = [str(p.relative_to(ROOT)) for p in files
            if p.suffix not in {".png", ".pdf"} and KEY_MARKERS.search(p.read_text(errors="ignore"))]
    # the only places allowed to *mention* the markers are code that parses or greps for them
    allowed = {"tests/security/test_no_key_material_in_tree.py"}
    assert [h for h in hits if h not in allowed and not _only_in_code(ROOT / h)] == []


def _only_in_code(path: Path) -> bool:
    """A marker inside a Python string used to recognise keys is not key material: no base64 body follows."""
    text = path.read_text(errors="ignore")
    for m in KEY_MARKERS.finditer(text):
        following = text[m.end(): m.end() + 80].strip().splitlines()
        if following and re.fullmatch(r"[A-Za-z0-9+/=]{40,}", following[0].strip()):
            return False
    return True


def test_no_literal_secrets_in_config():
    files = [p for p in tracked_files() if p.suffix in {".yaml", ".yml", ".cfg", ".ini", ".env", ".toml", ".json"}
             or p.name in {".env.example", "Makefile"}]
    hits = [str(p.relative_to(ROOT)) for p in files if SECRET_ASSIGN.search(p.read_text(errors="ignore"))]
    assert hits == []
