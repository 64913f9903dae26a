"""Chaos tests: the delivery guarantee under faults, on the real broker and the local Knock API.

Shortened by default (part of ``make test``); full size with ``KNOCK_SINK_CHAOS_FULL=1``
(``make chaos``). Figures go to ``bench/results/chaos-<case>.json``; ``python -m
tests.chaos.report`` prints them as a markdown table.
"""
