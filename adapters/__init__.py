"""Platform adapters: each turns platform events into ``Incoming`` and posts replies back.

Adapters translate; the core decides. The whole contract is in ``bot.delivery``; an adapter imports
from the core only ``bot.delivery`` (the contract, ``IntakePort``), ``bot.records`` (records),
``bot.errors``, ``bot.texts``, and helpers it chooses (``bot.commands``, ``bot.splitting``,
``bot.hygiene``, ``bot.http_listener``, ``adapters.streaming``); never ``bot.intake``, the worker,
an engine or the settings.

What a new platform must provide
================================

1. **An options object and a constructor.** ``<Name>Options``: a frozen, keyword-only dataclass
   holding every setting the adapter needs, credentials included as ``field(repr=False)`` so
   neither the options nor the adapter ever show them. The adapter is built from it alone:
   ``<Name>Adapter(options)``. The service builds the options from the settings
   (``bot.service.platform_adapters``; each new ``SOLARBOT_<NAME>_*`` setting is read once in
   ``bot.settings``). ``options.ingress=False`` (``solarbot worker``): deliver only, listen to
   nothing. A missing or bad credential is a ``ConfigError`` naming the setting.

2. **``bot.delivery.ChatAdapter``** (required):

   - ``platform``: a short lowercase name, stored with every conversation (``discord``);
   - ``start(intake)``: connect, start listening and return once running. Each message addressed
     to the bot becomes one ``Incoming`` passed to ``intake.submit``: ids as strings, a
     ``dedupe_key`` that is the same when the platform delivers the same event again (retries,
     replays) and different for every other message, ``reply_target`` with what egress needs to
     answer, and the user's text exactly as sent (render only the platform's own markup, such as
     mentions, and document it). ``submit`` returns None (channel switched off) or a result
     (``created``, ``refused``, ``handoff``); the adapter answers nothing itself: the worker will.
     An ingress that dies for good calls ``intake.ingress_failed(platform, reason)``;
   - ``stop()``: disconnect; pending work is the worker's;
   - ``open_reply(target)`` returning a ``ReplyStream`` (``update`` with the text so far,
     ``finish`` with the whole reply, ``message_ids``): with only REST calls and the credentials,
     so a worker process without ingress delivers. Continue ``target.existing_message_ids``
     (an earlier attempt's messages) instead of posting again, and make any retried post
     idempotent where the platform allows (nonces, idempotency keys unique per job and part).
     ``adapters.streaming.StreamedReply`` does the throttling, splitting, continuation and
     cleaning over two primitives, ``post`` and ``edit``;
   - ``post_notice(target, text)``: a short standalone message (apologies, refusals).

   Every platform failure that a later attempt may fix is raised as ``bot.errors.DeliveryError``
   (``retry_after`` when the platform said how long to wait; ``kind`` to label the metric).
   Everything that goes out passes ``bot.hygiene.clean_outgoing``.

3. **Optional capabilities** (``bot.delivery``, recognised by ``isinstance``):

   - ``ReportsConnection``: a ``connected`` property, shown by ``/readyz``;
   - ``HandoffNotifier``: ``post_handoff(target)`` pings the platform's support people when
     someone asks for a human. Without it the platform never hands conversations over.

4. **Chat sub-commands** (optional): ``bot.commands.Commands`` over ``intake.repository``
   parses and answers ``status``, ``prompt``, ``on``/``off``... the same on every platform.

5. **Tests** against a local stand-in of the platform over loopback (``tests/support/discord_fake.py``,
   ``tests/support/slack_fake.py``, ``tests/support/webhook_platform.py``), driving the real client library, the
   real intake, queue and worker: a question gets one reply, a replayed event none, a failed
   post is retried without a duplicate.

Shipped: ``discord`` (gateway + REST), ``slack`` (Events API or Socket Mode + Web API),
``webhook`` (HTTP both ways), ``console`` (the terminal) and ``fake`` (in memory, for tests).
"""
