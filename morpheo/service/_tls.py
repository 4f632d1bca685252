# -*- test-case-name: tests.integration.test_tls -*-
"""
TLS for the service itself (C{--cert}/C{--key}): PEM files read once at
start-up into a pyOpenSSL context factory that speaks TLS 1.2 or newer.

Every problem with the files is reported as one L{TLSConfigError} sentence
naming the file, so that start-up stops with a message a person can act on
rather than an OpenSSL traceback.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.ssl import CertificateOptions, TLSVersion

#: The oldest protocol version served; TLS 1.0 and 1.1 are refused.
MINIMUM_TLS_VERSION = TLSVersion.TLSv1_2


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
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
            certificate=crypto.X509.from_cryptography(leaf),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
            raiseMinimumTo=MINIMUM_TLS_VERSION,
        )
        # Build the context now: any remaining OpenSSL complaint (a key type
        # it refuses, say) stops start-up instead of failing each handshake.
        options.getContext()
    except (SSL.Error, ValueError, TypeError) as e:
        raise TLSConfigError(f"cannot use {certPath} with {keyPath}: {e}") from None
    return options


__all__ = ["MINIMUM_TLS_VERSION", "TLSConfigError", "loadCertificateOptions"]
