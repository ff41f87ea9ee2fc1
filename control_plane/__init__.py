"""The origin service: experiments, event ingestion, learner and publishers.

Imports ``core`` only; built out by the control plane issue.
"""
