"""knock-sink: keep Knock users in sync with Segment-style events on Kafka.

The path of an event is the layout of this package: :mod:`.source` → :mod:`.decode` →
:mod:`.events` → :mod:`.mapping` → :mod:`.plan` → :mod:`.apply` (with :mod:`.knock`) →
:mod:`.deadletter` / :mod:`.tracker` → commit, driven by :mod:`.sink`. :mod:`.emulator` is the
local Knock-compatible API, independent of the rest.

Nothing is imported here, so that ``knock-sink emulator`` and ``--help`` start without loading
Kafka and HTTP clients: import :class:`consumer.sink.Sink` and
:func:`consumer.config.load_settings` from their modules.
"""
