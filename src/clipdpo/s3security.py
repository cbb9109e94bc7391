"""The secrets of one loopback S3 server start: S3 credentials, JWT keys and a private TLS authority.

Every start draws new ones, so nothing learnt from an earlier run (or from this source) opens a later
server. The files are written 0600 in the 0700 data directory: only the user running the server can
read them, and without them:
- the S3 port refuses every request not signed (SigV4) with this start's credentials;
- the master, volume, filer and admin gRPC ports refuse a TLS handshake without a client certificate
  issued by this start's authority (SeaweedFS's gRPC mTLS), so `weed shell` cannot list or delete;
- the master, volume, filer and admin HTTP ports are HTTPS that require such a certificate too, and
  the volume and filer ports also want a JWT signed with this start's keys.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

SECURITY_FILE = "security.toml"  # weed reads ./security.toml: it runs in the data directory
TLS_DIR = "tls"
CERT_DAYS = 3650  # a --dir server may run for long; the authority dies with the start anyway
# Every component of `weed mini` that serves or dials gRPC: each presents the one certificate.
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "client")
HTTPS_SERVERS = ("master", "volume", "filer", "admin")
JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def new_credentials() -> Credentials:
    """An S3 key pair for one start (an access key of 20 characters like AWS's; 256 random bits of secret)."""
    return Credentials(access_key="CLIPDPO" + secrets.token_hex(7).upper()[:13], secret_key=secrets.token_hex(32))


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a file its owner alone can read (mkstemp makes it 0600 whatever the
    umask; an earlier file's looser mode goes with it)."""
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{Path(path).name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def lock_down(directory: Path) -> None:
    """`directory` and everything of this user in it: folders 0700, files 0600 (a data folder kept from a
    run made before the server was locked down, or written with a looser umask)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    _chmod_own(directory, 0o700)
    for root, folders, files in os.walk(directory):
        for name in folders:
            _chmod_own(Path(root, name), 0o700)
        for name in files:
            _chmod_own(Path(root, name), 0o600)


def _chmod_own(path: Path, mode: int) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if info.st_uid == os.getuid() and not stat.S_ISLNK(info.st_mode) and stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def write_tls_material(tls_dir: Path) -> dict[str, str]:
    """A fresh certificate authority and one certificate it issued for 127.0.0.1 (server and client use);
    returns the PEM paths. The authority's key is never written: nothing else can be issued later."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(ca_key, ca_key.public_key(), f"clipdpo loopback S3 CA {secrets.token_hex(4)}", None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(ca_key, key.public_key(), "127.0.0.1", ca_cert)
    os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    paths = {"ca": tls_dir / "ca.crt", "cert": tls_dir / "weed.crt", "key": tls_dir / "weed.key"}
    write_private(paths["ca"], ca_cert.public_bytes(serialization.Encoding.PEM))
    write_private(paths["cert"], cert.public_bytes(serialization.Encoding.PEM))
    write_private(
        paths["key"],
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return {name: str(path) for name, path in paths.items()}


def _certificate(signing_key, public_key, common_name: str, issuer):
    """The authority's own certificate when `issuer` is None, else one it issues for 127.0.0.1 that serves
    and dials (host names are not checked by weed; Python's and Go's HTTPS clients check the IP)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
    return builder.sign(signing_key, hashes.SHA256())


def security_toml(tls: dict[str, str], jwt_keys: dict[str, str]) -> str:
    """SeaweedFS's security.toml: JWT keys, gRPC mTLS for every component, HTTPS with client certificates."""
    # A JSON string (non-ASCII kept as is) is a TOML basic string: quotes and backslashes in a path escaped.
    ca, cert, key = (json.dumps(tls[name], ensure_ascii=False) for name in ("ca", "cert", "key"))
    identity = f"cert = {cert}\nkey = {key}\n"
    sections = [f'[{section}]\nkey = "{jwt_keys[section]}"\n' for section in JWT_SECTIONS]
    sections.append(f"[grpc]\nca = {ca}\n")
    sections += [f"[grpc.{component}]\n{identity}" for component in GRPC_COMPONENTS]
    sections.append(f"[https.client]\nenabled = true\n{identity}ca = {ca}\n")
    sections += [f"[https.{server}]\n{identity}ca = {ca}\n" for server in HTTPS_SERVERS]
    return "\n".join(sections)


def write_security(data_dir: Path) -> dict[str, str]:
    """Fresh keys and certificates in `data_dir`, and the security.toml naming them; returns the TLS paths."""
    tls = write_tls_material(data_dir / TLS_DIR)
    jwt_keys = {section: secrets.token_hex(32) for section in JWT_SECTIONS}
    write_private(data_dir / SECURITY_FILE, security_toml(tls, jwt_keys).encode())
    return tls
