"""The origin service: experiments, event ingestion, learner and publishers.

Imports ``core`` only. Inside, floors from the top: ``main`` (composition root), ``http``
(API, dashboard), ``learning`` and ``events``, ``storage``, and the ground floor (this
package's own modules and ``distribution``); each imports only the floors below it
(tests/test_layering.py).
"""
