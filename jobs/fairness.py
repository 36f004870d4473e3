"""Fair share: queued jobs are taken round-robin across clients, so one client's batch of 8
no longer delays everyone else by 8 images. A client's single image waits behind at most
one image of each other client; within one client the order stays first-come.

A pure rule on the waiting line, used by both backends when a job is queued: a job's round
is how many jobs its client already has ahead of it (waiting, or running now); it goes
after every waiting job of its round or an earlier one, before the first of a later round.
FAIR_SHARE=off keeps plain first-come, first-served.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence


def fair_index(waiting_clients: Sequence[str], client: str,
               running_clients: Iterable[str] = ()) -> int:
    """Where a new job of `client` goes in a waiting line already in fair order (the
    clients of its jobs, first to run first)."""
    seen = Counter(running_clients)
    mine = seen[client] + sum(1 for other in waiting_clients if other == client)
    for index, other in enumerate(waiting_clients):
        if seen[other] > mine:  # `other`'s round is later than the new job's
            return index
        seen[other] += 1
    return len(waiting_clients)
