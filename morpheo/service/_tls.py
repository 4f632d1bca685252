# -*- test-case-name: tests.integration.test_tls -*-
"""
TLS for the service itself (C{--cert}/C{--key}, and C{--listen ssl:...}):
PEM files read once at start-up into a pyOpenSSL context factory that
speaks TLS 1.3, or TLS 1.2 with forward secrecy and authenticated
encryption only.

Every problem with the files is reported as one L{TLSConfigError} sentence
naming the file, so that start-up stops with a message a person can act on
rather than an OpenSSL traceback.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion

#: The oldest protocol version served; TLS 1.0 and 1.1 are refused.
MINIMUM_TLS_VERSION = TLSVersion.TLSv1_2

#: TLS 1.2's cipher suites: Mozilla's "intermediate" list without its DHE
#: suites (ECDHE is as widely supported, and faster).  Key exchange with
#: forward secrecy, authenticated encryption: no static RSA key exchange,
#: no CBC with SHA-1.  TLS 1.3 has only such suites; OpenSSL's defaults
#: serve them.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

_ACCEPTABLE_CIPHERS = AcceptableCiphers.fromOpenSSLCipherString(":".join(TLS12_CIPHERS))


class TLSConfigError(ValueError):
    """The certificate or key cannot be used; the message says why."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read the TLS {what} {path}: {e.strerror}") from e


def _publicBytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def serverOptions(
    privateKey: crypto.PKey,
    certificate: crypto.X509,
    extraCertChain: list[crypto.X509] | None = None,
) -> CertificateOptions:
    """
    The context factory of every TLS listener: this certificate (then the
    intermediates of C{extraCertChain}) and key, TLS 1.2 or newer, the
    suites of L{TLS12_CIPHERS}.  The context is built at once, so that a
    key that does not match its certificate, or that OpenSSL refuses,
    raises here (L{SSL.Error}) rather than at each handshake.
    """
    options = CertificateOptions(
        privateKey=privateKey,
        certificate=certificate,
        extraCertChain=extraCertChain,
        raiseMinimumTo=MINIMUM_TLS_VERSION,
        acceptableCiphers=_ACCEPTABLE_CIPHERS,
    )
    options.getContext()
    return options


def loadCertificateOptions(certPath: str, keyPath: str) -> CertificateOptions:
    """
    A context factory for the certificate chain in C{certPath} (the
    server's certificate first, then any intermediates) and the private key
    in C{keyPath}, both PEM.

    @raise TLSConfigError: a file is missing, holds no certificate or key,
        the key is encrypted, or the key does not match the certificate.
    """
    chainPEM = _read(certPath, "certificate")
    keyPEM = _read(keyPath, "key")
    try:
        chain = x509.load_pem_x509_certificates(chainPEM)
    except ValueError:
        raise TLSConfigError(
            f"{certPath} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None
    try:
        key = serialization.load_pem_private_key(keyPEM, password=None)
    except TypeError:
        # cryptography's way of saying the key needs a password.
        raise TLSConfigError(
            f"the key in {keyPath} is encrypted: give an unencrypted PEM key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"{keyPath} holds no usable PEM private key") from None
    leaf = chain[0]
    if _publicBytes(leaf.public_key()) != _publicBytes(key.public_key()):
        raise TLSConfigError(
            f"the key in {keyPath} does not match the certificate in {certPath}"
            " (the first certificate of the file must be the server's)"
        )
    try:
        return serverOptions(
            crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
            crypto.X509.from_cryptography(leaf),
            [crypto.X509.from_cryptography(c) for c in chain[1:]],
        )
    except (SSL.Error, ValueError, TypeError) as e:
        # Any remaining OpenSSL complaint (a key type it refuses, say).
        raise TLSConfigError(f"cannot use {certPath} with {keyPath}: {e}") from None


__all__ = [
    "MINIMUM_TLS_VERSION",
    "TLS12_CIPHERS",
    "TLSConfigError",
    "loadCertificateOptions",
    "serverOptions",
]
