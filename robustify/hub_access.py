"""Whether the Hugging Face Hub can be reached the way huggingface_hub would reach it, and switching a process to
offline mode. Kept apart from ``robustify.models`` so that checking the Hub (``robustify doctor``, the dry run, the
proxy tests) does not import torch and timm.

Must not: import torch, timm or anything that does.
"""

from __future__ import annotations

import os


def hub_reachable(timeout: float = 3.0) -> bool:
    """Would huggingface_hub's own requests reach the Hub endpoint now? Decided with huggingface_hub's HTTP client
    (the session every download uses), so it honours ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` /
    ``NO_PROXY`` exactly as the download would; a short timeout keeps an unreachable Hub at seconds (timm alone
    retries for about 50 s). Any HTTP answer from the Hub counts (even 401 or 404: it is there); no answer, a
    refused or timed-out connection, or a proxy that says it cannot reach the Hub (502, 504) or wants credentials
    (407) does not. A raw TCP connection to the Hub's host, as before, fails behind every proxy."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
    try:
        response = get_session().head(f"{endpoint}/api/models", timeout=timeout, follow_redirects=False)
    except Exception:  # noqa: BLE001 - the client's transport errors (connect, proxy, timeout, TLS) all mean no
        return False
    return response.status_code not in (407, 502, 504)



def go_offline() -> None:
    """Switch huggingface_hub to offline mode for this process, so cached files load and missing ones fail fast."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
