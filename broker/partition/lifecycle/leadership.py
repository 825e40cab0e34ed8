"""Leader epochs (DESIGN.md, "Leadership"): which node's own proposals the partition applies.

    AnnounceLeader(3) ... Proposal(3, 1) Proposal(3, 2) Proposal(2, 9) Proposal(3, 2)
                          applied        applied        dropped: old   dropped: seen

An announcement applies only with an epoch above the current one. A proposal applies only
under the current epoch, and only with a sequence above the last one applied: a leader that
lost its lead (a zombie whose records still reach the log) and a produce retried into a
duplicate are both dropped, by every replica alike, since the decision depends on the log
alone. Commands that are not proposals (ingress requests, Kafka records) carry their own
deduplication and are not fenced.
"""

from __future__ import annotations

from .._context import Ctx
from .._records import AnnounceLeader, Leadership, Proposal

KEY = b"leadership"


def current(ctx: Ctx) -> Leadership:
    raw = ctx.tx.get("meta", KEY)
    return Leadership.decode(raw) if raw is not None else Leadership()


def announce(ctx: Ctx, cmd: AnnounceLeader) -> None:
    if cmd.epoch <= current(ctx).epoch:
        return  # an old or repeated announcement
    lead = Leadership(epoch=cmd.epoch, seq=0, node=cmd.node, address=cmd.address)
    ctx.tx.put("meta", KEY, lead.encode())


def admit(ctx: Ctx, cmd: Proposal) -> bool:
    """Whether the proposal applies; if it does, it is now the last one seen."""
    lead = current(ctx)
    if cmd.epoch != lead.epoch or cmd.seq <= lead.seq:
        return False
    lead.seq = cmd.seq
    ctx.tx.put("meta", KEY, lead.encode())
    return True
