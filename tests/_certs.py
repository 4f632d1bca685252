"""
A throwaway certificate authority for the TLS tests: a root CA, an
intermediate, and a server certificate for 127.0.0.1 and localhost, as PEM
files.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@frozen
class TestPKI:
    ca: Path  # the root certificate (what clients trust)
    cert: Path  # server certificate, then the intermediate: a chain
    key: Path  # the server's key
    otherKey: Path  # a key that matches nothing
    leaf: Path  # the server certificate alone
    intermediate: Path  # the intermediate alone


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: str, key, issuerName: x509.Name, issuerKey, ca: bool, sans=()
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuerName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(issuerKey, hashes.SHA256())


def makePKI(directory: Path) -> TestPKI:
    rootKey = ec.generate_private_key(ec.SECP256R1())
    root = _issue("Morpheo Test Root", rootKey, _name("Morpheo Test Root"), rootKey, ca=True)
    midKey = ec.generate_private_key(ec.SECP256R1())
    mid = _issue("Morpheo Test Intermediate", midKey, root.subject, rootKey, ca=True)
    serverKey = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "127.0.0.1",
        serverKey,
        mid.subject,
        midKey,
        ca=False,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    directory.mkdir(parents=True, exist_ok=True)
    pki = TestPKI(
        directory / "ca.pem",
        directory / "chain.pem",
        directory / "key.pem",
        directory / "other-key.pem",
        directory / "leaf.pem",
        directory / "intermediate.pem",
    )
    pki.leaf.write_bytes(_pem(server))
    pki.intermediate.write_bytes(_pem(mid))
    pki.ca.write_bytes(_pem(root))
    pki.cert.write_bytes(_pem(server) + _pem(mid))
    pki.key.write_bytes(_keyPEM(serverKey))
    pki.otherKey.write_bytes(_keyPEM(ec.generate_private_key(ec.SECP256R1())))
    return pki
