"""A small ctypes binding of libnftables' JSON API (libnftables-json(5)).

Why ctypes rather than Debian's ``python3-nftables``: that package is itself a
thin ctypes wrapper around the same ``libnftables.so.1``, but it lives in the
system's dist-packages, which lbd's virtualenv does not see; binding the five
functions lbd needs keeps the daemon installable anywhere the ``nftables``
package (hence ``libnftables1``) is, with nothing else. One call of
``nft_run_cmd_from_buffer`` with a JSON document is one netlink batch, which
the kernel commits atomically (all or nothing): that is lbd's transaction.
Never a subprocess per rule.

A context is not thread-safe; ``Nft`` serialises its calls with a lock, so
the daemon may run transactions in an executor thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(RuntimeError):
    """libnftables refused a command (the kernel or the parser): nothing was applied."""


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise NftError(f"cannot load libnftables ({name}): install the nftables package ({exc})") from None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
    lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.restype = ctypes.c_int
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.restype = ctypes.c_int
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    return lib


class Nft:
    """One libnftables context in JSON mode, in the calling process's network namespace."""

    def __init__(self) -> None:
        self._lib = _load()
        self._ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not self._ctx:
            raise NftError("nft_ctx_new failed")
        flags = self._lib.nft_ctx_output_get_flags(self._ctx)
        self._lib.nft_ctx_output_set_flags(self._ctx, flags | NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE)
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run ``commands`` (libnftables-json objects) as one transaction; the output objects."""
        return self._run(json.dumps({"nftables": commands}))

    def text(self, command: str) -> list[dict[str, Any]]:
        """Run one command in nft syntax (``list counters table inet lbd``); JSON output."""
        return self._run(command)

    def _run(self, buffer: str) -> list[dict[str, Any]]:
        with self._lock:
            if not self._ctx:
                raise NftError("the nftables context is closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, buffer.encode())
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            raise NftError(err.decode(errors="replace").strip() or f"nft failed ({rc})")
        if not out.strip():
            return []
        return list(json.loads(out).get("nftables", []))

    def close(self) -> None:
        with self._lock:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None
