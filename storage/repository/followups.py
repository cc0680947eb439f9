"""Handoff follow-ups: what to post to the support group later, kept in the database.

A follow-up belongs to a handoff (its job, and the conversation's ``handoff_at`` then): the ping
held back outside support hours, or a reminder that nobody answered. It is sent by whichever
process claims it first once it is due (``claim_due_followups``: a lease, so a process that dies
while sending leaves it claimable again) and marked sent by that claim only
(``finish_followup``). A follow-up whose conversation was resumed (or handed off anew) since is
dropped, unsent, when it falls due. A reminder is cancelled when someone other than the asker
writes in the conversation (``human_wrote_in_handoff``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update

from bot.records import ClaimedFollowup, ConversationKey, FollowupKind
from storage.repository.base import RepositoryBase
from storage.repository.jobs import job_key
from storage.repository.tables import conversations, handoff_followups, jobs, key_filter, messages
from storage.schema import utcnow


class FollowupStore(RepositoryBase):
    def schedule_followup(
        self, *, job_id: int, kind: FollowupKind, due_at: datetime, asked_at: datetime
    ) -> bool:
        """Post ``kind`` about the handoff of job ``job_id`` (asked for at ``asked_at``) at
        ``due_at``. False (nothing stored) when its conversation is not handed off (resumed
        already)."""
        with self._transaction() as connection:
            row = connection.execute(
                select(jobs.c.conversation_id, conversations.c.handoff_at)
                .join(conversations, conversations.c.id == jobs.c.conversation_id)
                .where(jobs.c.id == job_id)
            ).first()
            if row is None or row.handoff_at is None:
                return False
            connection.execute(
                insert(handoff_followups).values(
                    conversation_id=row.conversation_id,
                    job_id=job_id,
                    kind=kind.value,
                    handoff_at=row.handoff_at,
                    asked_at=asked_at,
                    due_at=due_at,
                )
            )
            return True

    def claim_due_followups(
        self,
        *,
        lease_seconds: float,
        limit: int = 50,
        platforms: Iterable[str] | None = None,
        now: datetime | None = None,
    ) -> list[ClaimedFollowup]:
        """Lease the follow-ups due at ``now`` that nobody sent or holds (of ``platforms`` only,
        when given: those this process can post to); drop, unsent, those whose conversation is
        no longer in the same handoff. A claim not marked sent is claimable again once its lease
        is over (a failed post is retried then)."""
        moment = now or utcnow()
        until = moment + timedelta(seconds=lease_seconds)
        f = handoff_followups
        due = (f.c.sent_at.is_(None), f.c.due_at <= moment)
        free = (f.c.claimed_until.is_(None)) | (f.c.claimed_until < moment)
        query = (
            select(
                f.c.id,
                f.c.kind,
                f.c.job_id,
                f.c.handoff_at,
                f.c.asked_at,
                conversations.c.handoff_at.label("current_handoff"),
                conversations.c.platform,
                conversations.c.workspace,
                conversations.c.channel,
                conversations.c.thread,
                jobs.c.reply_target,
                jobs.c.dedupe_key,
                jobs.c.created_at,
            )
            .join(conversations, conversations.c.id == f.c.conversation_id)
            .join(jobs, jobs.c.id == f.c.job_id)
            .where(*due, free)
            .order_by(f.c.due_at, f.c.id)
            .limit(limit)
        )
        if platforms is not None:
            query = query.where(conversations.c.platform.in_(list(platforms)))
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=f)
        claimed: list[ClaimedFollowup] = []
        with self._transaction() as connection:
            for row in connection.execute(query).all():
                if row.current_handoff != row.handoff_at:  # resumed (or a new handoff) since
                    connection.execute(delete(f).where(f.c.id == row.id))
                    continue
                won = connection.execute(
                    update(f).where(f.c.id == row.id, *due, free).values(claimed_until=until)
                )
                if won.rowcount != 1:
                    continue
                claimed.append(
                    ClaimedFollowup(
                        id=row.id,
                        kind=FollowupKind(row.kind),
                        job_id=row.job_id,
                        conversation=ConversationKey(
                            platform=row.platform,
                            workspace=row.workspace,
                            channel=row.channel,
                            thread=row.thread,
                        ),
                        reply_target=dict(row.reply_target or {}),
                        handoff_at=row.handoff_at,
                        asked_at=row.asked_at,
                        claimed_until=until,
                        job_key=job_key(row.job_id, row.dedupe_key, row.created_at),
                    )
                )
        return claimed

    def finish_followup(self, followup: ClaimedFollowup, *, now: datetime | None = None) -> bool:
        """Mark it sent; False when the claim was lost (its lease ran out and another took it)."""
        f = handoff_followups
        with self._transaction() as connection:
            result = connection.execute(
                update(f)
                .where(
                    f.c.id == followup.id,
                    f.c.sent_at.is_(None),
                    f.c.claimed_until == followup.claimed_until,
                )
                .values(sent_at=now or utcnow(), claimed_until=None)
            )
            return result.rowcount == 1

    def human_wrote_in_handoff(self, key: ConversationKey, *, author_id: str) -> int:
        """Someone wrote in the handed-off conversation ``key``: unless it is the asker, the
        reminders not sent yet are cancelled (a human is on it). Returns how many."""
        f = handoff_followups
        asked_by = (
            select(messages.c.author_id)
            .join(jobs, jobs.c.message_id == messages.c.id)
            .where(jobs.c.id == f.c.job_id)
            .scalar_subquery()
        )
        in_conversation = select(conversations.c.id).where(*key_filter(key)).scalar_subquery()
        with self._transaction() as connection:
            result = connection.execute(
                delete(f).where(
                    f.c.conversation_id == in_conversation,
                    f.c.kind == FollowupKind.REMINDER.value,
                    f.c.sent_at.is_(None),
                    asked_by != author_id,
                )
            )
            return int(result.rowcount)
