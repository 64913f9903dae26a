"""The request side shared by every bulk route: Knock's per-entity limit, and the URL the
answer's ``progress_path`` points at."""

from __future__ import annotations

from starlette.requests import Request

from .state import Emulator


def entity_limit(
    em: Emulator, ids: list[str], header: str, *, namespace: str = ""
) -> tuple[set[str], dict[str, str]]:
    """Knock's per-entity limit: ids updated by a bulk call < 1 s ago are skipped and named
    in an ``x-ratelimited-<param>`` header, while the answer stays 2xx.

    ``namespace`` keeps entities of different kinds apart in the one limiter (a tenant
    ``a`` is not the user ``a``); ids cannot contain ``/``, so ``ns/`` cannot clash.
    """
    if not em.limits_on:
        return set(), {}
    keyed = [namespace + i for i in ids] if namespace else ids
    limited_keys = em.entities.admit(keyed)
    if not limited_keys:
        return set(), {}
    limited = {i for i, k in zip(ids, keyed, strict=True) if k in limited_keys}
    named = list(dict.fromkeys(i for i in ids if i in limited))
    return limited, {header: ",".join(named)}


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")
