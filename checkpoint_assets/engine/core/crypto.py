"""Decrypt and re-encrypt values written by LangGraph's EncryptedSerializer."""

from __future__ import annotations

import hashlib
import hmac

from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

from checkpoint_assets.engine.core.errors import MigrationError


class Cipher:
    """The application's AES key, used through LangGraph's own cipher implementation."""

    def __init__(self, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise MigrationError("The AES key must be 16, 24 or 32 bytes long.",
                                 "Pass the same key the application gives EncryptedSerializer.")
        self._key = key
        self.serializer = EncryptedSerializer.from_pycryptodome_aes(key=key)
        self._cipher = self.serializer.cipher

    def __reduce__(self) -> tuple:
        # Batch loader processes rebuild the cipher from the key (the AES objects do not
        # pickle); the key travels only through the pool's local pipe.
        return (Cipher, (self._key,))

    def decrypt(self, cipher_name: str, data: bytes, where: object = None) -> bytes:
        """Decrypt ``data``; raise MigrationError if the key does not fit."""
        try:
            return self._cipher.decrypt(cipher_name, data)
        except (ValueError, AssertionError) as exc:
            raise MigrationError(
                f"Cannot decrypt {where or 'a value'} with the given key ({exc}).",
                "Check that LANGGRAPH_AES_KEY is the key the application encrypts with.",
            ) from None

    def fingerprint(self) -> str:
        """A name for this key that reveals nothing of it (an HMAC of a constant under the
        key): equal for the same key, different for another."""
        return hmac.new(self._key, b"checkpoint-assets key fingerprint",
                        hashlib.sha256).hexdigest()[:32]

    def encrypt(self, cipher_name: str, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` with the named cipher (only ``aes`` exists)."""
        name, ciphertext = self._cipher.encrypt(plaintext)
        if name != cipher_name:
            raise MigrationError(f"Values encrypted with {cipher_name!r} cannot be re-encrypted.",
                                 "Only LangGraph's AES cipher is supported.")
        return ciphertext
