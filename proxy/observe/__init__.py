"""Observability: the request's :class:`~.note.Note` -> one log line and the metrics; ``/stats``
and the dashboard.

Stages record what they decided on ``call.note``; :mod:`.middleware` turns it into the request's
log line (:mod:`.requestlog`) and metrics at the end of the request. This package module
imports nothing: ``proxy.call`` imports :mod:`.note`, below everything else here.
"""
