"""A throwaway certificate authority for the TLS tests: a CA, server certificates for loopback, client certificates.

Everything is written as PEM files under one directory (keys mode 0600), so the tests can hand paths to
libpq, PostgreSQL, botocore and a TLS-terminating proxy exactly as a user would:

    ca = TestCA(tmp_path / "ca")
    server = ca.server("s3")                 # CN and subjectAltName localhost, 127.0.0.1
    client = ca.client("backup_user")        # CN backup_user: PostgreSQL's cert auth maps it to the role
    other = TestCA(tmp_path / "other-ca")    # a CA nobody trusts, for the "wrong CA" tests
"""

import datetime
import ipaddress
import os
from collections import namedtuple
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost", "127.0.0.1")

# A certificate and its key as files: .cert and .key are paths to PEM files.
Issued = namedtuple("Issued", "cert key")


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path, data, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(str(path), mode)
    return path


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class TestCA:
    """A CA whose certificate is ``self.cert`` (PEM path); it issues server and client certificates under ``directory``."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory, name="quankey test CA"):
        self.directory = Path(directory)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = _write(self.directory / "ca.crt", self._cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def _issue(self, stem, common_name, usage, names=()):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            alt = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(_write(self.directory / ("%s.crt" % stem), cert.public_bytes(serialization.Encoding.PEM), 0o644),
                      _write(self.directory / ("%s.key" % stem), _key_pem(key), 0o600))

    def server(self, stem, names=LOOPBACK_NAMES):
        """A server certificate for ``names`` (default: localhost and 127.0.0.1); CN is the first name."""
        return self._issue(stem, names[0], ExtendedKeyUsageOID.SERVER_AUTH, names)

    def client(self, common_name, stem=None):
        """A client certificate whose CN is ``common_name`` (PostgreSQL's cert auth maps the CN to a role)."""
        return self._issue(stem or "client-%s" % common_name, common_name, ExtendedKeyUsageOID.CLIENT_AUTH)
